// Fused element-wise work of one HyperLSTM step (main or hyper cell), forward and backward.
//
// Built on first use by hypermodels/fast_hyperlstm.py (torch.utils.cpp_extension.load); the Python
// path there computes exactly the same thing with ATen ops and is the fallback. One call replaces
// ~15 (forward) or ~35 (backward) small ATen kernels: every row of the batch is handled by one thread,
// from the gate pre-activations through both layer norms to h, with the row in cache.
//
// Layouts (all contiguous; n = units of the cell, B = batch; gates i, g, f, o):
//   pre (B, 4n); c, h, mask (B, n); gain, shift (4n) (forget bias folded into shift); cell_gain/shift (n);
//   main cell only: u = W_h h_{t-1} (B, 4n), wx = W_x x_t (B, 4n), d (parts, 4, B, n) = d_h, d_x[, dyn. bias],
//   b0 (4n).
// Compiled with -ffast-math (compile only, not link: no FTZ side effects) so that gcc vectorises exp and
// tanh through glibc's libmvec; results agree with the ATen path to a few ulps.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <optional>
#include <vector>

namespace {

template <typename T>
inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

// Mean and 1/sqrt(var + eps) of v[0..n), two-pass as layer norm.
template <typename T>
inline void moments(const T* v, int64_t n, double eps, T& mean, T& rstd) {
  T s = 0;
  for (int64_t j = 0; j < n; ++j) s += v[j];
  mean = s / T(n);
  T q = 0;
  for (int64_t j = 0; j < n; ++j) { T e = v[j] - mean; q += e * e; }
  rstd = T(1) / std::sqrt(q / T(n) + T(eps));
}

template <typename T>
const T* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
}

// Layer norm is on when its gains are given; then all four LN tensors must be.
void check_ln(const std::optional<at::Tensor>& gain, const std::optional<at::Tensor>& shift,
              const std::optional<at::Tensor>& cgain, const std::optional<at::Tensor>& cshift) {
  const bool ln = gain.has_value();
  TORCH_CHECK(shift.has_value() == ln && cgain.has_value() == ln && cshift.has_value() == ln,
              "layer-norm gain, shift, cell gain and cell shift must be given together");
}

// Per-row scratch: act (4n) and sig (4n), tanh(g) (n), normalised values (4n + n).
template <typename T>
struct Rows {
  std::vector<T> act, sig, tg, norm, cnorm, tco, dact;
  explicit Rows(int64_t n) : act(4 * n), sig(4 * n), tg(n), norm(4 * n), cnorm(n), tco(n), dact(4 * n) {}
};

// Gate activations of one row from its pre-activation P (4n): LN per gate (optional), sigmoid, tanh(g).
template <typename T>
inline void activate(const T* P, int64_t n, bool ln, double eps, const T* gain, const T* shift, Rows<T>& r,
                     T* rstd_out) {
  T* A = r.act.data();
  for (int g = 0; g < 4; ++g) {
    const T* p = P + g * n;
    T* a = A + g * n;
    if (ln) {
      T mean, rstd;
      moments(p, n, eps, mean, rstd);
      rstd_out[g] = rstd;
      T* nm = r.norm.data() + g * n;
      const T* w = gain + g * n;
      const T* b = shift + g * n;
      for (int64_t j = 0; j < n; ++j) { nm[j] = (p[j] - mean) * rstd; a[j] = nm[j] * w[j] + b[j]; }
    } else {
      for (int64_t j = 0; j < n; ++j) a[j] = p[j];
    }
  }
  T* S = r.sig.data();
  for (int64_t j = 0; j < 4 * n; ++j) S[j] = sigmoid(A[j]);  // sigmoid(g) unused: one simple loop
  T* tg = r.tg.data();
  for (int64_t j = 0; j < n; ++j) tg[j] = std::tanh(A[n + j]);
}

template <typename T>
void forward_impl(at::Tensor pre, const std::optional<at::Tensor>& u_, const std::optional<at::Tensor>& d_,
                  const std::optional<at::Tensor>& wx_, const std::optional<at::Tensor>& b0_, at::Tensor c_prev,
                  const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& gain_,
                  const std::optional<at::Tensor>& shift_, const std::optional<at::Tensor>& cgain_,
                  const std::optional<at::Tensor>& cshift_, double eps, at::Tensor c_new, at::Tensor h) {
  const int64_t B = c_prev.size(0), n = c_prev.size(1);
  T* P = pre.data_ptr<T>();
  const T *u = opt_ptr<T>(u_), *d = opt_ptr<T>(d_), *wx = opt_ptr<T>(wx_), *b0 = opt_ptr<T>(b0_);
  const T *mask = opt_ptr<T>(mask_), *gain = opt_ptr<T>(gain_), *shift = opt_ptr<T>(shift_);
  const T *cg = opt_ptr<T>(cgain_), *cs = opt_ptr<T>(cshift_);
  const bool ln = gain != nullptr;
  const T* C = c_prev.data_ptr<T>();
  T* CN = c_new.data_ptr<T>();
  T* Hout = h.data_ptr<T>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Rows<T> r(n);
    T rstd[4];
    for (int64_t b = begin; b < end; ++b) {
      T* p = P + b * 4 * n;
      if (u != nullptr) {  // main cell: pre = d_h * u + d_x * wx + dynamic bias + b_0
        for (int g = 0; g < 4; ++g) {
          const T* dh = d + ((0 * 4 + g) * B + b) * n;
          const T* dx = d + ((1 * 4 + g) * B + b) * n;
          const T* db = d + ((2 * 4 + g) * B + b) * n;
          const T* ub = u + b * 4 * n + g * n;
          const T* wb = wx + b * 4 * n + g * n;
          const T* bb = b0 + g * n;
          T* pg = p + g * n;
          for (int64_t j = 0; j < n; ++j) pg[j] = dh[j] * ub[j] + dx[j] * wb[j] + db[j] + bb[j];
        }
      }
      activate(p, n, ln, eps, gain, shift, r, rstd);
      const T *S = r.sig.data(), *tg = r.tg.data();
      const T* c = C + b * n;
      const T* m = mask ? mask + b * n : nullptr;
      T* cn = CN + b * n;
      for (int64_t j = 0; j < n; ++j) {
        T cand = m ? tg[j] * m[j] : tg[j];
        cn[j] = S[2 * n + j] * c[j] + S[j] * cand;
      }
      T* co = r.tco.data();
      if (ln) {
        T mean, rs;
        moments(cn, n, eps, mean, rs);
        for (int64_t j = 0; j < n; ++j) co[j] = (cn[j] - mean) * rs * cg[j] + cs[j];
      } else {
        for (int64_t j = 0; j < n; ++j) co[j] = cn[j];
      }
      T* hb = Hout + b * n;
      for (int64_t j = 0; j < n; ++j) hb[j] = S[3 * n + j] * std::tanh(co[j]);
    }
  });
}

template <typename T>
void backward_impl(at::Tensor pre, at::Tensor c_prev, at::Tensor c_new, const std::optional<at::Tensor>& mask_,
                   const std::optional<at::Tensor>& gain_, const std::optional<at::Tensor>& shift_,
                   const std::optional<at::Tensor>& cgain_, const std::optional<at::Tensor>& cshift_, double eps,
                   at::Tensor dh_in, const std::optional<at::Tensor>& dc_in_, at::Tensor dc_prev,
                   at::Tensor dpre_out, const std::optional<at::Tensor>& u_, const std::optional<at::Tensor>& d_,
                   const std::optional<at::Tensor>& wx_, const std::optional<at::Tensor>& dd_,
                   const std::optional<at::Tensor>& dwx_out_, const std::optional<at::Tensor>& acc_gain_,
                   const std::optional<at::Tensor>& acc_shift_, const std::optional<at::Tensor>& acc_cgain_,
                   const std::optional<at::Tensor>& acc_cshift_, const std::optional<at::Tensor>& acc_bias_) {
  const int64_t B = c_prev.size(0), n = c_prev.size(1);
  const T *P = pre.data_ptr<T>(), *C = c_prev.data_ptr<T>(), *CN = c_new.data_ptr<T>();
  const T *mask = opt_ptr<T>(mask_), *gain = opt_ptr<T>(gain_), *shift = opt_ptr<T>(shift_);
  const T *cg = opt_ptr<T>(cgain_), *cs = opt_ptr<T>(cshift_);
  const T *DH = dh_in.data_ptr<T>(), *DC = opt_ptr<T>(dc_in_);
  const T *u = opt_ptr<T>(u_), *d = opt_ptr<T>(d_), *wx = opt_ptr<T>(wx_);
  T* DD = dd_.has_value() ? dd_->data_ptr<T>() : nullptr;
  T* DWX = dwx_out_.has_value() ? dwx_out_->data_ptr<T>() : nullptr;
  T *AG = acc_gain_.has_value() ? acc_gain_->data_ptr<T>() : nullptr;
  T *AS = acc_shift_.has_value() ? acc_shift_->data_ptr<T>() : nullptr;
  T *ACG = acc_cgain_.has_value() ? acc_cgain_->data_ptr<T>() : nullptr;
  T *ACS = acc_cshift_.has_value() ? acc_cshift_->data_ptr<T>() : nullptr;
  T *AB = acc_bias_.has_value() ? acc_bias_->data_ptr<T>() : nullptr;
  T* DCP = dc_prev.data_ptr<T>();
  T* DP = dpre_out.data_ptr<T>();
  const bool ln = gain != nullptr;
  (void)cs;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Rows<T> r(n);
    T rstd[4];
    for (int64_t b = begin; b < end; ++b) {
      const T* p = P + b * 4 * n;
      activate(p, n, ln, eps, gain, shift, r, rstd);
      const T *S = r.sig.data(), *tg = r.tg.data();
      const T* c = C + b * n;
      const T* cn = CN + b * n;
      const T* m = mask ? mask + b * n : nullptr;
      const T* dh = DH + b * n;
      T* nc = r.cnorm.data();
      T* tco = r.tco.data();
      T crs = 1;
      if (ln) {
        T mean;
        moments(cn, n, eps, mean, crs);
        for (int64_t j = 0; j < n; ++j) { nc[j] = (cn[j] - mean) * crs; tco[j] = std::tanh(nc[j] * cg[j] + cs[j]); }
      } else {
        for (int64_t j = 0; j < n; ++j) tco[j] = std::tanh(cn[j]);
      }
      T* da = r.dact.data();
      // dL/d(LN(c)) and the output gate; dco is kept in `tco`'s neighbour buffer (act, no longer needed).
      T* dco = r.act.data();
      for (int64_t j = 0; j < n; ++j) {
        T so = S[3 * n + j];
        da[3 * n + j] = dh[j] * tco[j] * so * (T(1) - so);
        dco[j] = dh[j] * so * (T(1) - tco[j] * tco[j]);
      }
      T* dcn = r.act.data() + n;  // dL/dc_t
      if (ln) {
        // Layer norm backward: dx = rstd * (dn - mean(dn) - x_hat * mean(dn * x_hat)), dn = dy * gain.
        T* acg = ACG + b * n;
        T* acs = ACS + b * n;
        T s1 = 0, s2 = 0;
        for (int64_t j = 0; j < n; ++j) {
          T dn = dco[j] * cg[j];
          acg[j] += dco[j] * nc[j];
          acs[j] += dco[j];
          s1 += dn;
          s2 += dn * nc[j];
        }
        s1 /= T(n);
        s2 /= T(n);
        for (int64_t j = 0; j < n; ++j) dcn[j] = crs * (dco[j] * cg[j] - s1 - nc[j] * s2);
      } else {
        for (int64_t j = 0; j < n; ++j) dcn[j] = dco[j];
      }
      const T* dcin = DC ? DC + b * n : nullptr;
      T* dcp = DCP + b * n;
      for (int64_t j = 0; j < n; ++j) {
        T g = dcn[j] + (dcin ? dcin[j] : T(0));
        T si = S[j], sf = S[2 * n + j];
        T mk = m ? m[j] : T(1);
        da[2 * n + j] = g * c[j] * sf * (T(1) - sf);             // f
        da[j] = g * tg[j] * mk * si * (T(1) - si);                // i
        da[n + j] = g * si * mk * (T(1) - tg[j] * tg[j]);         // g
        dcp[j] = g * sf;
      }
      T* dp = DP + b * 4 * n;
      for (int g = 0; g < 4; ++g) {
        const T* dag = da + g * n;
        T* dpg = dp + g * n;
        if (ln) {
          const T* nm = r.norm.data() + g * n;
          const T* w = gain + g * n;
          T* ag = AG + b * 4 * n + g * n;
          T* as = AS + b * 4 * n + g * n;
          T s1 = 0, s2 = 0;
          for (int64_t j = 0; j < n; ++j) {
            T dn = dag[j] * w[j];
            ag[j] += dag[j] * nm[j];
            as[j] += dag[j];
            s1 += dn;
            s2 += dn * nm[j];
          }
          s1 /= T(n);
          s2 /= T(n);
          const T rs = rstd[g];
          for (int64_t j = 0; j < n; ++j) dpg[j] = rs * (dag[j] * w[j] - s1 - nm[j] * s2);
        } else {
          for (int64_t j = 0; j < n; ++j) dpg[j] = dag[j];
        }
        if (u != nullptr) {
          // Main cell: pre = d_h * u + d_x * wx + dyn. bias + b_0. dpre_out receives d pre * d_h (the
          // gradient of u); DD the gradients of d_h, d_x and the dynamic bias; DWX that of wx.
          const T* dhg = d + ((0 * 4 + g) * B + b) * n;
          const T* dxg = d + ((1 * 4 + g) * B + b) * n;
          const T* ub = u + b * 4 * n + g * n;
          const T* wb = wx + b * 4 * n + g * n;
          T* dd0 = DD + ((0 * 4 + g) * B + b) * n;
          T* dd1 = DD + ((1 * 4 + g) * B + b) * n;
          T* dd2 = DD + ((2 * 4 + g) * B + b) * n;
          T* dw = DWX + b * 4 * n + g * n;
          T* ab = AB + b * 4 * n + g * n;
          for (int64_t j = 0; j < n; ++j) {
            T v = dpg[j];
            dd0[j] = v * ub[j];
            dd1[j] = v * wb[j];
            dd2[j] = v;
            ab[j] += v;
            dw[j] = v * dxg[j];
            dpg[j] = v * dhg[j];
          }
        }
      }
    }
  });
}

void core_forward(at::Tensor pre, std::optional<at::Tensor> u, std::optional<at::Tensor> d,
                  std::optional<at::Tensor> wx, std::optional<at::Tensor> b0, at::Tensor c_prev,
                  std::optional<at::Tensor> mask, std::optional<at::Tensor> gain, std::optional<at::Tensor> shift,
                  std::optional<at::Tensor> cgain, std::optional<at::Tensor> cshift, double eps, at::Tensor c_new,
                  at::Tensor h) {
  for (auto* t : {&pre, &c_prev, &c_new, &h}) check(*t, "tensor");
  for (auto* t : {&u, &d, &wx, &b0, &mask, &gain, &shift, &cgain, &cshift})
    if (t->has_value()) check(**t, "tensor");
  check_ln(gain, shift, cgain, cshift);
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "hyperlstm_core_forward", [&] {
    forward_impl<scalar_t>(pre, u, d, wx, b0, c_prev, mask, gain, shift, cgain, cshift, eps, c_new, h);
  });
}

void core_backward(at::Tensor pre, at::Tensor c_prev, at::Tensor c_new, std::optional<at::Tensor> mask,
                   std::optional<at::Tensor> gain, std::optional<at::Tensor> shift, std::optional<at::Tensor> cgain,
                   std::optional<at::Tensor> cshift, double eps, at::Tensor dh, std::optional<at::Tensor> dc,
                   at::Tensor dc_prev, at::Tensor dpre_out, std::optional<at::Tensor> u, std::optional<at::Tensor> d,
                   std::optional<at::Tensor> wx, std::optional<at::Tensor> dd, std::optional<at::Tensor> dwx_out,
                   std::optional<at::Tensor> acc_gain, std::optional<at::Tensor> acc_shift,
                   std::optional<at::Tensor> acc_cgain, std::optional<at::Tensor> acc_cshift,
                   std::optional<at::Tensor> acc_bias) {
  for (auto* t : {&pre, &c_prev, &c_new, &dh, &dc_prev, &dpre_out}) check(*t, "tensor");
  for (auto* t : {&mask, &gain, &shift, &cgain, &cshift, &dc, &u, &d, &wx, &dd, &dwx_out, &acc_gain, &acc_shift,
                  &acc_cgain, &acc_cshift, &acc_bias})
    if (t->has_value()) check(**t, "tensor");
  check_ln(gain, shift, cgain, cshift);
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "hyperlstm_core_backward", [&] {
    backward_impl<scalar_t>(pre, c_prev, c_new, mask, gain, shift, cgain, cshift, eps, dh, dc, dc_prev, dpre_out,
                            u, d, wx, dd, dwx_out, acc_gain, acc_shift, acc_cgain, acc_cshift, acc_bias);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("core_forward", &core_forward, "fused LSTM core step forward (see hyperlstm_cell.cpp)");
  m.def("core_backward", &core_backward, "fused LSTM core step backward (see hyperlstm_cell.cpp)");
}
