// Fused element-wise work of one HyperLSTM step, forward and backward (main cell and hyper cell).
//
// Built on first use by hypermodels/fast_hyperlstm.py (torch.utils.cpp_extension.load); the ATen path
// there computes the same equations and is the fallback. Why: on a CPU the per-step cost of the
// reference is dominated by the number of kernels, each a parallel region (fork/join of the intra-op
// threads), not by arithmetic. Here one parallel region per cell and step handles every row of the
// batch from the gate pre-activations through both layer norms to h, with the row in cache; the small
// products z = W_z ĥ and d = W_{.z} z (N_z is 4..64) are done per row too. What is left per step is
// two matrix products per direction (MKL) and these kernels.
//
// Layouts (n = units of the cell, B = batch; gates i, g, f, o stacked along the row; rows may have a
// stride, columns must be contiguous):
//   pre (B, 4n); c, h, mask (B, n); gain, shift (4n) with the forget bias folded into shift;
//   cell_gain, cell_shift (n); LN is on when gain is given.
//   main cell: u = W_h h_{t-1} (first 4H columns of r), wx = W_x x_t (B, 4H), b0 (4H),
//              z (B, 12 N_z) ordered (z_h, z_x, z_b) x gate x N_z, DwT (12, N_z, H) = W_{hz}, W_{xz}, W_{bz}.
//   hyper cell: pre = r_h + w_hh ĥ + wx_h (each (B, 4Ĥ)); z = Zw ĥ + zb, Zw (12 N_z, Ĥ).
// Compiled with -ffast-math (compile only, not link: no FTZ side effects) so that gcc vectorises exp and
// tanh through glibc's libmvec; results agree with the ATen path to a few ulps.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <optional>
#include <vector>

namespace {

using OptT = std::optional<at::Tensor>;

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
T* ptr(const OptT& t) { return t.has_value() ? t->data_ptr<T>() : nullptr; }

// Row stride of a (rows, cols) tensor whose columns are contiguous.
int64_t ld(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 2 && t.stride(1) == 1, name,
              " must be a 2-D CPU tensor with contiguous rows");
  return t.stride(0);
}

void check_contiguous(std::initializer_list<const OptT*> ts) {
  for (const OptT* t : ts)
    if (t->has_value())
      TORCH_CHECK((*t)->is_contiguous() && (*t)->device().is_cpu(), "expected contiguous CPU tensors");
}

// The per-gate LN affine and the output-path LN; all null without layer norm.
template <typename T>
struct LN {
  const T *gain, *shift, *cgain, *cshift;
  T eps;
  bool on;
  LN(const OptT& g, const OptT& s, const OptT& cg, const OptT& cs, double e)
      : gain(ptr<T>(g)), shift(ptr<T>(s)), cgain(ptr<T>(cg)), cshift(ptr<T>(cs)), eps(T(e)), on(g.has_value()) {
    TORCH_CHECK(s.has_value() == on && cg.has_value() == on && cs.has_value() == on,
                "layer-norm gain, shift, cell gain and cell shift must be given together");
  }
};

// Per-thread scratch for one row.
template <typename T>
struct Scratch {
  std::vector<T> act, sig, tg, norm, cnorm, tco, da, tmp;
  int64_t n;
  explicit Scratch(int64_t n_)
      : act(4 * n_), sig(4 * n_), tg(n_), norm(4 * n_), cnorm(n_), tco(n_), da(4 * n_), tmp(4 * n_), n(n_) {}
};

// Gate activations of one row from its pre-activation P (4n): LN per gate, sigmoid (all gates), tanh(g).
template <typename T>
inline void activate(const T* P, const LN<T>& ln, Scratch<T>& s, T* rstd) {
  const int64_t n = s.n;
  T* A = s.act.data();
  for (int g = 0; g < 4; ++g) {
    const T* p = P + g * n;
    T* a = A + g * n;
    if (ln.on) {
      T mean;
      moments(p, n, ln.eps, mean, rstd[g]);
      T* nm = s.norm.data() + g * n;
      const T *w = ln.gain + g * n, *b = ln.shift + g * n;
      const T r = rstd[g];
      for (int64_t j = 0; j < n; ++j) { nm[j] = (p[j] - mean) * r; a[j] = nm[j] * w[j] + b[j]; }
    } else {
      for (int64_t j = 0; j < n; ++j) a[j] = p[j];
    }
  }
  T* S = s.sig.data();  // sigmoid of gates i, f, o (the g block stays unused)
  for (int g : {0, 2, 3})
    for (int64_t j = g * n; j < (g + 1) * n; ++j) S[j] = sigmoid(A[j]);
  T* tg = s.tg.data();
  for (int64_t j = 0; j < n; ++j) tg[j] = std::tanh(A[n + j]);
}

// Forward of the LSTM core on one row: c_new = σ(f) c + σ(i) tanh(g) m, h = σ(o) tanh(LN(c_new)).
template <typename T>
inline void core_forward_row(const T* P, const T* c, const T* m, const LN<T>& ln, Scratch<T>& s, T* cn, T* h) {
  const int64_t n = s.n;
  T rstd[4];
  activate(P, ln, s, rstd);
  const T *S = s.sig.data(), *tg = s.tg.data();
  for (int64_t j = 0; j < n; ++j) cn[j] = S[2 * n + j] * c[j] + S[j] * (m ? tg[j] * m[j] : tg[j]);
  T* co = s.tco.data();
  if (ln.on) {
    T mean, r;
    moments(cn, n, ln.eps, mean, r);
    for (int64_t j = 0; j < n; ++j) co[j] = (cn[j] - mean) * r * ln.cgain[j] + ln.cshift[j];
  } else {
    for (int64_t j = 0; j < n; ++j) co[j] = cn[j];
  }
  for (int64_t j = 0; j < n; ++j) h[j] = S[3 * n + j] * std::tanh(co[j]);
}

// Layer-norm backward on one vector: dx = rstd (dy w - mean(dy w) - x̂ mean(dy w x̂)); also adds
// dy x̂ and dy to the gain and shift accumulators.
template <typename T>
inline void ln_backward(const T* dy, const T* xhat, const T* w, T rstd, int64_t n, T* acc_w, T* acc_b, T* dx) {
  T s1 = 0, s2 = 0;
  for (int64_t j = 0; j < n; ++j) {
    T dn = dy[j] * w[j];
    acc_w[j] += dy[j] * xhat[j];
    acc_b[j] += dy[j];
    s1 += dn;
    s2 += dn * xhat[j];
  }
  s1 /= T(n);
  s2 /= T(n);
  for (int64_t j = 0; j < n; ++j) dx[j] = rstd * (dy[j] * w[j] - s1 - xhat[j] * s2);
}

// Backward of core_forward_row (recomputing its activations): writes dL/dP into dP (4n) and dL/dc into
// dcp; dh, dc are the gradients arriving at h and c_new (dc may be null). acc: LN gain/shift (4n each) and
// cell gain/shift (n each) accumulators of this row, or null without LN.
template <typename T>
inline void core_backward_row(const T* P, const T* c, const T* cn, const T* m, const LN<T>& ln, const T* dh,
                              const T* dc, Scratch<T>& s, T* dP, T* dcp, T* ag, T* as, T* acg, T* acs) {
  const int64_t n = s.n;
  T rstd[4];
  activate(P, ln, s, rstd);
  const T *S = s.sig.data(), *tg = s.tg.data();
  T *nc = s.cnorm.data(), *tco = s.tco.data(), *da = s.da.data();
  T crs = 1;
  if (ln.on) {
    T mean;
    moments(cn, n, ln.eps, mean, crs);
    for (int64_t j = 0; j < n; ++j) {
      nc[j] = (cn[j] - mean) * crs;
      tco[j] = std::tanh(nc[j] * ln.cgain[j] + ln.cshift[j]);
    }
  } else {
    for (int64_t j = 0; j < n; ++j) tco[j] = std::tanh(cn[j]);
  }
  T* dco = s.tmp.data();      // dL/d LN(c_new)
  T* dcn = s.tmp.data() + n;  // dL/d c_new
  for (int64_t j = 0; j < n; ++j) {
    T so = S[3 * n + j];
    da[3 * n + j] = dh[j] * tco[j] * so * (T(1) - so);  // o
    dco[j] = dh[j] * so * (T(1) - tco[j] * tco[j]);
  }
  if (ln.on) {
    ln_backward(dco, nc, ln.cgain, crs, n, acg, acs, dcn);
  } else {
    for (int64_t j = 0; j < n; ++j) dcn[j] = dco[j];
  }
  for (int64_t j = 0; j < n; ++j) {
    T g = dcn[j] + (dc ? dc[j] : T(0));
    T si = S[j], sf = S[2 * n + j], mk = m ? m[j] : T(1);
    da[2 * n + j] = g * c[j] * sf * (T(1) - sf);      // f
    da[j] = g * tg[j] * mk * si * (T(1) - si);         // i
    da[n + j] = g * si * mk * (T(1) - tg[j] * tg[j]);  // g
    dcp[j] = g * sf;
  }
  for (int g = 0; g < 4; ++g) {
    if (ln.on) {
      ln_backward(da + g * n, s.norm.data() + g * n, ln.gain + g * n, rstd[g], n, ag + g * n, as + g * n,
                  dP + g * n);
    } else {
      for (int64_t j = 0; j < n; ++j) dP[g * n + j] = da[g * n + j];
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Hyper cell: pre = r_h + hh_part + wx_h; core; z = Zw ĥ + zb.
// ---------------------------------------------------------------------------------------------------
template <typename T>
void hyper_forward_impl(const at::Tensor& r_h, const at::Tensor& hh_part, const at::Tensor& wx_h,
                        const at::Tensor& c_prev, const LN<T>& ln, const at::Tensor& Zw, const at::Tensor& zb,
                        at::Tensor& pre, at::Tensor& c_new, at::Tensor& h, at::Tensor& z) {
  const int64_t B = c_prev.size(0), n = c_prev.size(1), nz = Zw.size(0);
  const int64_t ldr = ld(r_h, "r_h"), ldp = ld(hh_part, "hh_part"), ldw = ld(wx_h, "wx_h");
  const T *R = r_h.data_ptr<T>(), *HP = hh_part.data_ptr<T>(), *W = wx_h.data_ptr<T>();
  const T *C = c_prev.data_ptr<T>(), *ZW = Zw.data_ptr<T>(), *ZB = zb.data_ptr<T>();
  T *P = pre.data_ptr<T>(), *CN = c_new.data_ptr<T>(), *H = h.data_ptr<T>(), *Z = z.data_ptr<T>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s(n);
    for (int64_t b = begin; b < end; ++b) {
      T* p = P + b * 4 * n;
      const T *rb = R + b * ldr, *hb = HP + b * ldp, *wb = W + b * ldw;
      for (int64_t j = 0; j < 4 * n; ++j) p[j] = rb[j] + hb[j] + wb[j];
      T* hh = H + b * n;
      core_forward_row(p, C + b * n, static_cast<const T*>(nullptr), ln, s, CN + b * n, hh);
      T* zr = Z + b * nz;
      for (int64_t k = 0; k < nz; ++k) {
        const T* w = ZW + k * n;
        T acc = 0;
        for (int64_t j = 0; j < n; ++j) acc += w[j] * hh[j];
        zr[k] = acc + ZB[k];
      }
    }
  });
}

// Backward: dĥ = dhh + Zwᵀ dz (z's gradient), then the core; dL/dpre goes to dpre (rows may be strided).
template <typename T>
void hyper_backward_impl(const at::Tensor& pre, const at::Tensor& c_prev, const at::Tensor& c_new, const LN<T>& ln,
                         const OptT& dhh_, const at::Tensor& dz, const at::Tensor& Zw, const OptT& dc_,
                         at::Tensor& dc_prev, at::Tensor& dpre, const OptT& acc_gain, const OptT& acc_shift,
                         const OptT& acc_cgain, const OptT& acc_cshift) {
  const int64_t B = c_prev.size(0), n = c_prev.size(1), nz = Zw.size(0);
  const int64_t ldd = ld(dpre, "dpre");
  const T *P = pre.data_ptr<T>(), *C = c_prev.data_ptr<T>(), *CN = c_new.data_ptr<T>();
  const T *DHH = ptr<T>(dhh_), *DZ = dz.data_ptr<T>(), *ZW = Zw.data_ptr<T>(), *DC = ptr<T>(dc_);
  T *DCP = dc_prev.data_ptr<T>(), *DP = dpre.data_ptr<T>();
  T *AG = ptr<T>(acc_gain), *AS = ptr<T>(acc_shift), *ACG = ptr<T>(acc_cgain), *ACS = ptr<T>(acc_cshift);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s(n);
    std::vector<T> dh(n);
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t j = 0; j < n; ++j) dh[j] = DHH ? DHH[b * n + j] : T(0);
      const T* dzr = DZ + b * nz;
      for (int64_t k = 0; k < nz; ++k) {
        const T* w = ZW + k * n;
        const T g = dzr[k];
        for (int64_t j = 0; j < n; ++j) dh[j] += g * w[j];
      }
      core_backward_row(P + b * 4 * n, C + b * n, CN + b * n, static_cast<const T*>(nullptr), ln, dh.data(),
                        DC ? DC + b * n : nullptr, s, DP + b * ldd, DCP + b * n, AG ? AG + b * 4 * n : nullptr,
                        AS ? AS + b * 4 * n : nullptr, ACG ? ACG + b * n : nullptr, ACS ? ACS + b * n : nullptr);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Main cell: d = W_{.z} z per row, pre = d_h u + d_x wx + d_b + b0; core.
// ---------------------------------------------------------------------------------------------------

// d (12 blocks of n: d_h, d_x, d_b per gate) of one row from its z (12 blocks of nz): d[q] = Σ_k z[q,k] DwT[q,k,:].
template <typename T>
inline void scales_row(const T* z, const T* DwT, int64_t n, int64_t nz, int blocks, T* d) {
  for (int q = 0; q < blocks; ++q) {
    T* dq = d + q * n;
    for (int64_t j = 0; j < n; ++j) dq[j] = 0;
    for (int64_t k = 0; k < nz; ++k) {
      const T zk = z[q * nz + k];
      const T* w = DwT + (q * nz + k) * n;
      for (int64_t j = 0; j < n; ++j) dq[j] += zk * w[j];
    }
  }
}

template <typename T>
void main_forward_impl(const at::Tensor& u, const at::Tensor& z, const at::Tensor& DwT, const at::Tensor& wx,
                       const at::Tensor& b0, const at::Tensor& c_prev, const OptT& mask, const LN<T>& ln,
                       at::Tensor& pre, at::Tensor& c_new, at::Tensor& h) {
  const int64_t B = c_prev.size(0), n = c_prev.size(1), nz = DwT.size(1);
  const int64_t ldu = ld(u, "u"), ldw = ld(wx, "wx"), ldh = ld(h, "h");
  const T *U = u.data_ptr<T>(), *Z = z.data_ptr<T>(), *DW = DwT.data_ptr<T>(), *W = wx.data_ptr<T>();
  const T *B0 = b0.data_ptr<T>(), *C = c_prev.data_ptr<T>(), *M = ptr<T>(mask);
  T *P = pre.data_ptr<T>(), *CN = c_new.data_ptr<T>(), *H = h.data_ptr<T>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s(n);
    std::vector<T> d(12 * n);
    for (int64_t b = begin; b < end; ++b) {
      scales_row(Z + b * 12 * nz, DW, n, nz, 12, d.data());
      T* p = P + b * 4 * n;
      const T *ub = U + b * ldu, *wb = W + b * ldw;
      const T *dh = d.data(), *dx = d.data() + 4 * n, *db = d.data() + 8 * n;
      for (int64_t j = 0; j < 4 * n; ++j) p[j] = dh[j] * ub[j] + dx[j] * wb[j] + db[j] + B0[j];
      core_forward_row(p, C + b * n, M ? M + b * n : nullptr, ln, s, CN + b * n, H + b * ldh);
    }
  });
}

// Backward of the main cell on one step. Outputs per row: du = dpre ⊙ d_h (gradient of u, rows may be
// strided), dwx = dpre ⊙ d_x, dz (12 nz); accumulates dDwT[q,k,:] += z[q,k] dd[q,:] into the calling
// thread's slice of acc_dDwT (threads, 12, nz, n), b0's gradient into acc_bias (B, 4n) and LN's.
template <typename T>
void main_backward_impl(const at::Tensor& pre, const at::Tensor& u, const at::Tensor& z, const at::Tensor& DwT,
                        const at::Tensor& wx, const at::Tensor& c_prev, const at::Tensor& c_new, const OptT& mask,
                        const LN<T>& ln, const at::Tensor& dh_in, const OptT& dc_, at::Tensor& dc_prev,
                        at::Tensor& du, at::Tensor& dwx, at::Tensor& dz, at::Tensor& acc_dDwT, at::Tensor& acc_bias,
                        const OptT& acc_gain, const OptT& acc_shift, const OptT& acc_cgain,
                        const OptT& acc_cshift) {
  const int64_t B = c_prev.size(0), n = c_prev.size(1), nz = DwT.size(1);
  const int64_t ldu = ld(u, "u"), ldw = ld(wx, "wx"), lddu = ld(du, "du");
  TORCH_CHECK(acc_dDwT.size(0) >= at::get_num_threads(), "acc_dDwT needs one slice per thread");
  const T *P = pre.data_ptr<T>(), *U = u.data_ptr<T>(), *Z = z.data_ptr<T>(), *DW = DwT.data_ptr<T>();
  const T *W = wx.data_ptr<T>(), *C = c_prev.data_ptr<T>(), *CN = c_new.data_ptr<T>(), *M = ptr<T>(mask);
  const T *DH = dh_in.data_ptr<T>(), *DC = ptr<T>(dc_);
  T *DCP = dc_prev.data_ptr<T>(), *DU = du.data_ptr<T>(), *DWX = dwx.data_ptr<T>(), *DZ = dz.data_ptr<T>();
  T *ADW = acc_dDwT.data_ptr<T>(), *AB = acc_bias.data_ptr<T>();
  T *AG = ptr<T>(acc_gain), *AS = ptr<T>(acc_shift), *ACG = ptr<T>(acc_cgain), *ACS = ptr<T>(acc_cshift);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s(n);
    std::vector<T> d(8 * n), dpre(4 * n), dd(12 * n);
    T* adw = ADW + at::get_thread_num() * 12 * nz * n;
    for (int64_t b = begin; b < end; ++b) {
      const T* zr = Z + b * 12 * nz;
      scales_row(zr, DW, n, nz, 8, d.data());  // d_h, d_x (the dynamic bias is not needed)
      core_backward_row(P + b * 4 * n, C + b * n, CN + b * n, M ? M + b * n : nullptr, ln, DH + b * n,
                        DC ? DC + b * n : nullptr, s, dpre.data(), DCP + b * n, AG ? AG + b * 4 * n : nullptr,
                        AS ? AS + b * 4 * n : nullptr, ACG ? ACG + b * n : nullptr, ACS ? ACS + b * n : nullptr);
      const T *ub = U + b * ldu, *wb = W + b * ldw;
      T *dub = DU + b * lddu, *dwb = DWX + b * ldw, *ab = AB + b * 4 * n;
      for (int64_t j = 0; j < 4 * n; ++j) {
        const T v = dpre[j];
        dd[j] = v * ub[j];           // d_h's gradient
        dd[4 * n + j] = v * wb[j];   // d_x's
        dd[8 * n + j] = v;           // the dynamic bias's
        ab[j] += v;
        dub[j] = v * d[j];
        dwb[j] = v * d[4 * n + j];
      }
      T* dzr = DZ + b * 12 * nz;
      for (int q = 0; q < 12; ++q) {
        const T* ddq = dd.data() + q * n;
        for (int64_t k = 0; k < nz; ++k) {
          const T* w = DW + (q * nz + k) * n;
          T* a = adw + (q * nz + k) * n;
          const T zk = zr[q * nz + k];
          T acc = 0;
          for (int64_t j = 0; j < n; ++j) { acc += ddq[j] * w[j]; a[j] += zk * ddq[j]; }
          dzr[q * nz + k] = acc;
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Python entry points.
// ---------------------------------------------------------------------------------------------------

void hyper_forward(at::Tensor r_h, at::Tensor hh_part, at::Tensor wx_h, at::Tensor c_prev, OptT gain, OptT shift,
                   OptT cgain, OptT cshift, double eps, at::Tensor Zw, at::Tensor zb, at::Tensor pre,
                   at::Tensor c_new, at::Tensor h, at::Tensor z) {
  check_contiguous({&gain, &shift, &cgain, &cshift});
  for (auto* t : {&c_prev, &Zw, &zb, &pre, &c_new, &h, &z}) TORCH_CHECK(t->is_contiguous(), "expected contiguous");
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "hyper_forward", [&] {
    LN<scalar_t> ln(gain, shift, cgain, cshift, eps);
    hyper_forward_impl<scalar_t>(r_h, hh_part, wx_h, c_prev, ln, Zw, zb, pre, c_new, h, z);
  });
}

void hyper_backward(at::Tensor pre, at::Tensor c_prev, at::Tensor c_new, OptT gain, OptT shift, OptT cgain,
                    OptT cshift, double eps, OptT dhh, at::Tensor dz, at::Tensor Zw, OptT dc, at::Tensor dc_prev,
                    at::Tensor dpre, OptT acc_gain, OptT acc_shift, OptT acc_cgain, OptT acc_cshift) {
  check_contiguous({&gain, &shift, &cgain, &cshift, &dhh, &dc, &acc_gain, &acc_shift, &acc_cgain, &acc_cshift});
  for (auto* t : {&pre, &c_prev, &c_new, &dz, &Zw, &dc_prev}) TORCH_CHECK(t->is_contiguous(), "expected contiguous");
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "hyper_backward", [&] {
    LN<scalar_t> ln(gain, shift, cgain, cshift, eps);
    hyper_backward_impl<scalar_t>(pre, c_prev, c_new, ln, dhh, dz, Zw, dc, dc_prev, dpre, acc_gain, acc_shift,
                                  acc_cgain, acc_cshift);
  });
}

void main_forward(at::Tensor u, at::Tensor z, at::Tensor DwT, at::Tensor wx, at::Tensor b0, at::Tensor c_prev,
                  OptT mask, OptT gain, OptT shift, OptT cgain, OptT cshift, double eps, at::Tensor pre,
                  at::Tensor c_new, at::Tensor h) {
  check_contiguous({&mask, &gain, &shift, &cgain, &cshift});
  for (auto* t : {&z, &DwT, &b0, &c_prev, &pre, &c_new}) TORCH_CHECK(t->is_contiguous(), "expected contiguous");
  TORCH_CHECK(z.size(1) == 12 * DwT.size(1), "z must hold 12 blocks of N_z");
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "main_forward", [&] {
    LN<scalar_t> ln(gain, shift, cgain, cshift, eps);
    main_forward_impl<scalar_t>(u, z, DwT, wx, b0, c_prev, mask, ln, pre, c_new, h);
  });
}

void main_backward(at::Tensor pre, at::Tensor u, at::Tensor z, at::Tensor DwT, at::Tensor wx, at::Tensor c_prev,
                   at::Tensor c_new, OptT mask, OptT gain, OptT shift, OptT cgain, OptT cshift, double eps,
                   at::Tensor dh, OptT dc, at::Tensor dc_prev, at::Tensor du, at::Tensor dwx, at::Tensor dz,
                   at::Tensor acc_dDwT, at::Tensor acc_bias, OptT acc_gain, OptT acc_shift, OptT acc_cgain,
                   OptT acc_cshift) {
  check_contiguous({&mask, &gain, &shift, &cgain, &cshift, &dc, &acc_gain, &acc_shift, &acc_cgain, &acc_cshift});
  for (auto* t : {&pre, &z, &DwT, &c_prev, &c_new, &dh, &dc_prev, &dz, &acc_dDwT, &acc_bias})
    TORCH_CHECK(t->is_contiguous(), "expected contiguous");
  TORCH_CHECK(dwx.stride(0) == wx.stride(0), "dwx and wx must share a row stride");
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "main_backward", [&] {
    LN<scalar_t> ln(gain, shift, cgain, cshift, eps);
    main_backward_impl<scalar_t>(pre, u, z, DwT, wx, c_prev, c_new, mask, ln, dh, dc, dc_prev, du, dwx, dz,
                                 acc_dDwT, acc_bias, acc_gain, acc_shift, acc_cgain, acc_cshift);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("hyper_forward", &hyper_forward, "hyper cell step: pre-activation sum, LSTM core, z (hyperlstm_cell.cpp)");
  m.def("hyper_backward", &hyper_backward, "backward of hyper_forward");
  m.def("main_forward", &main_forward, "main cell step: d from z, pre-activation, LSTM core (hyperlstm_cell.cpp)");
  m.def("main_backward", &main_backward, "backward of main_forward, with dz and the W_.z gradient");
}
