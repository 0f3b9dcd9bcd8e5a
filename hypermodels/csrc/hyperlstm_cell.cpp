// The time loops of one HyperLSTM layer, forward and backward (main cell and hyper cell).
//
// Built on first use by hypermodels/fast_hyperlstm.py (torch.utils.cpp_extension.load); the ATen path
// there computes the same equations and is the fallback. Why: on a CPU the per-step cost of the
// reference is dominated by the number of kernels, each a parallel region (fork/join of the intra-op
// threads), and by Python's per-op overhead, not by arithmetic. Here one call runs a layer's whole forward
// loop and one its whole BPTT loop. Batch rows are independent, so each thread takes its own rows through
// the whole sequence: per step the recurrent product for its rows (MKL's packed GEMM, the weights packed
// once per call) and the element-wise work of the hyper cell, z = W_z ĥ, d = W_{.z} z (N_z is 4..64), both
// layer norms and the main cell, a block of rows at a time so that W_{.z} is read once per block. Backward
// recomputes the main cell's pre-activations from the saved u, W_x x and z and the gate activations from
// them (or, save_acts, forward saves the activations; recomputing was faster on an idle machine). Large
// buffers come from a small cache (workspace() below). What each step bought: bench/NOTES.md.
//
// Layouts (n = units of the cell, B = batch; gates i, g, f, o stacked along the row):
//   pre (B, 4n); c, h, mask (B, n); gain, shift (4n) with the forget bias folded into shift;
//   cell_gain, cell_shift (n); LN is on when gain is given.
//   main cell: u = W_h h_{t-1} (first 4H columns of r), wx = W_x x_t (B, 4H), b0 (4H),
//              z (B, 12 N_z) ordered (z_h, z_x, z_b) x gate x N_z, DwT (12, N_z, H) = W_{hz}, W_{xz}, W_{bz}.
//   hyper cell: pre = r_h + wx_h + b̂ (each (B, 4Ĥ); r_h = Ŵ_h h + Ŵ_hh ĥ, the last 4Ĥ columns of r);
//              z = Zw ĥ + zb, Zw (12 N_z, Ĥ).
// Compiled with -ffast-math (compile only, not link: no FTZ side effects) so that gcc vectorises exp and
// tanh through glibc's libmvec; results agree with the ATen path to a few ulps.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using OptT = std::optional<at::Tensor>;

// exp's argument clamped below its float overflow (88.7): -ffast-math assumes finite values, and an
// overflowing exp then gave NaN instead of sigmoid(x) = 0 for x < -88 (e.g. large pre-activations without LN).
template <typename T>
inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(std::min(-x, T(80)))); }

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

// Activations of one row of an LSTM core of n units: what backward needs, saved by the sequence loop
// (or recomputed into scratch by the per-step entry points). act (4n): σ(i), tanh(g), σ(f), σ(o) of the
// (layer-normed) gate pre-activations; norm (4n): the normalised pre-activations x̂ (LN only); cnh (n): the
// normalised c_new (LN only); tco (n): tanh(LN(c_new)) (tanh(c_new) without LN); rstd (5): 1/σ of the four
// gate LNs and of the cell LN (LN only).
template <typename T>
struct Acts {
  T *act, *norm, *cnh, *tco, *rstd;
};

// Activations of many rows (row i of each array at i * width), or of one row of scratch.
template <typename T>
struct ActsRows {
  T *act = nullptr, *norm = nullptr, *cnh = nullptr, *tco = nullptr, *rstd = nullptr;
  int64_t n = 0;
  ActsRows() = default;
  ActsRows(const std::vector<at::Tensor>& t, int64_t n_)  // act, norm, cnh, tco, rstd (LN ones undefined without LN)
      : act(t[0].data_ptr<T>()), norm(t[1].defined() ? t[1].data_ptr<T>() : nullptr),
        cnh(t[2].defined() ? t[2].data_ptr<T>() : nullptr), tco(t[3].data_ptr<T>()),
        rstd(t[4].defined() ? t[4].data_ptr<T>() : nullptr), n(n_) {}
  Acts<T> row(int64_t i) const {
    return {act + i * 4 * n, norm ? norm + i * 4 * n : nullptr, cnh ? cnh + i * n : nullptr, tco + i * n,
            rstd ? rstd + i * 5 : nullptr};
  }
};

// One row of scratch activations.
template <typename T>
struct ActsScratch {
  std::vector<T> v;
  Acts<T> a;
  explicit ActsScratch(int64_t n) : v(10 * n + 5) {
    T* p = v.data();
    a = {p, p + 4 * n, p + 8 * n, p + 9 * n, p + 10 * n};
  }
};

// Forward of the LSTM core on one row from its pre-activation P (4n): c_new = σ(f) c + σ(i) tanh(g) m,
// h = σ(o) tanh(LN(c_new)); the activations go to a.
template <typename T>
inline void core_forward_row(const T* P, const T* c, const T* m, const LN<T>& ln, const Acts<T>& a, int64_t n,
                             T* cn, T* h) {
  T* A = a.act;
  for (int g = 0; g < 4; ++g) {
    const T* p = P + g * n;
    T* x = A + g * n;
    if (ln.on) {
      T mean, r;
      moments(p, n, ln.eps, mean, r);
      a.rstd[g] = r;
      T* nm = a.norm + g * n;
      const T *w = ln.gain + g * n, *b = ln.shift + g * n;
      for (int64_t j = 0; j < n; ++j) { nm[j] = (p[j] - mean) * r; x[j] = nm[j] * w[j] + b[j]; }
    } else {
      for (int64_t j = 0; j < n; ++j) x[j] = p[j];
    }
  }
  for (int g : {0, 2, 3})
    for (int64_t j = g * n; j < (g + 1) * n; ++j) A[j] = sigmoid(A[j]);
  for (int64_t j = n; j < 2 * n; ++j) A[j] = std::tanh(A[j]);
  for (int64_t j = 0; j < n; ++j) cn[j] = A[2 * n + j] * c[j] + A[j] * (m ? A[n + j] * m[j] : A[n + j]);
  T* tco = a.tco;
  if (ln.on) {
    T mean, r;
    moments(cn, n, ln.eps, mean, r);
    a.rstd[4] = r;
    for (int64_t j = 0; j < n; ++j) {
      a.cnh[j] = (cn[j] - mean) * r;
      tco[j] = std::tanh(a.cnh[j] * ln.cgain[j] + ln.cshift[j]);
    }
  } else {
    for (int64_t j = 0; j < n; ++j) tco[j] = std::tanh(cn[j]);
  }
  for (int64_t j = 0; j < n; ++j) h[j] = A[3 * n + j] * tco[j];
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

// Backward of core_forward_row from its activations a: writes dL/dP into dP (4n) and dL/dc into dcp; dh, dc
// are the gradients arriving at h and c_new (dc may be null). tmp: 6n scratch. acc: LN gain/shift (4n each)
// and cell gain/shift (n each) accumulators of this row, or null without LN.
template <typename T>
inline void core_backward_row(const Acts<T>& a, const T* c, const T* m, const LN<T>& ln, int64_t n, const T* dh,
                              const T* dc, T* tmp, T* dP, T* dcp, T* ag, T* as, T* acg, T* acs) {
  const T *A = a.act, *tco = a.tco;
  T* da = tmp;               // dL/d(gate activation input), 4n
  T* dco = tmp + 4 * n;      // dL/d LN(c_new)
  T* dcn = tmp + 5 * n;      // dL/d c_new
  for (int64_t j = 0; j < n; ++j) {
    T so = A[3 * n + j];
    da[3 * n + j] = dh[j] * tco[j] * so * (T(1) - so);  // o
    dco[j] = dh[j] * so * (T(1) - tco[j] * tco[j]);
  }
  if (ln.on) {
    ln_backward(dco, a.cnh, ln.cgain, a.rstd[4], n, acg, acs, dcn);
  } else {
    for (int64_t j = 0; j < n; ++j) dcn[j] = dco[j];
  }
  for (int64_t j = 0; j < n; ++j) {
    T g = dcn[j] + (dc ? dc[j] : T(0));
    T si = A[j], tg = A[n + j], sf = A[2 * n + j], mk = m ? m[j] : T(1);
    da[2 * n + j] = g * c[j] * sf * (T(1) - sf);   // f
    da[j] = g * tg * mk * si * (T(1) - si);         // i
    da[n + j] = g * si * mk * (T(1) - tg * tg);     // g
    dcp[j] = g * sf;
  }
  for (int g = 0; g < 4; ++g) {
    if (ln.on) {
      ln_backward(da + g * n, a.norm + g * n, ln.gain + g * n, a.rstd[g], n, ag + g * n, as + g * n, dP + g * n);
    } else {
      for (int64_t j = 0; j < n; ++j) dP[g * n + j] = da[g * n + j];
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// The main cell's scaling vectors d = W_{.z} z (Eq. 12), for a block of rows at a time. W_{.z} (DwT: 12, nz, H)
// is walked in chunks of CHUNK units; each chunk is used for every row of the block while it sits in L1, so
// W_{.z} is read from L2 once per block instead of once per row (12 nz H values a row: at H = 1000 that
// traffic, and the W_{.z} gradient's read-modify-write, were most of the backward kernel's time). d itself is
// never stored: each chunk goes straight into the pre-activation (forward) or the gradients (backward).
// Row r of an operand X is at X + r * ldX.
// ---------------------------------------------------------------------------------------------------
// The chunk loops below carry "#pragma GCC ivdep": their operands are distinct buffers, and with this many
// pointers gcc would otherwise not prove it and leave the loops scalar (measured: ~1/3 of backward's time).
constexpr int64_t CHUNK = 64;
constexpr int64_t ROW_BLOCK = 8;

// One chunk of d for block q (gate g of part h, x or b) of row z: out[0..len) = Σ_k z[q,k] DwT[q,k,j0..].
template <typename T>
inline void d_chunk(const T* z, const T* DW, int64_t n, int64_t nz, int q, int64_t j0, int64_t len, T* out) {
  #pragma GCC ivdep
  for (int64_t j = 0; j < len; ++j) out[j] = 0;
  for (int64_t k = 0; k < nz; ++k) {
    const T zk = z[q * nz + k];
    const T* w = DW + (q * nz + k) * n + j0;
    #pragma GCC ivdep
    for (int64_t j = 0; j < len; ++j) out[j] += zk * w[j];
  }
}

// Calls f(g, j0, len, o, r) for every gate g, chunk [j0, j0 + len) of its n units (o = g n + j0, the chunk's
// offset in a 4n row) and row r < rows, rows innermost: a chunk of W_.z stays in L1 across the block's rows.
template <typename F>
inline void for_each_chunk_and_row(int64_t rows, int64_t n, F&& f) {
  for (int g = 0; g < 4; ++g)
    for (int64_t j0 = 0; j0 < n; j0 += CHUNK) {
      const int64_t len = std::min(CHUNK, n - j0), o = g * n + j0;
      for (int64_t r = 0; r < rows; ++r) f(g, j0, len, o, r);
    }
}

// pre = d_h u + d_x wx + d_b + b0 for `rows` rows (4n each).
template <typename T>
inline void main_pre_rows(int64_t rows, const T* U, int64_t ldu, const T* Z, int64_t ldz, const T* DW, const T* WX,
                          int64_t ldw, const T* B0, int64_t n, int64_t nz, T* P, int64_t ldp) {
  T dh[CHUNK], dx[CHUNK], db[CHUNK];
  for_each_chunk_and_row(rows, n, [&](int g, int64_t j0, int64_t len, int64_t o, int64_t r) {
    const T* z = Z + r * ldz;
    d_chunk(z, DW, n, nz, g, j0, len, dh);
    d_chunk(z, DW, n, nz, 4 + g, j0, len, dx);
    d_chunk(z, DW, n, nz, 8 + g, j0, len, db);
    const T *u = U + r * ldu + o, *wx = WX + r * ldw + o, *b0 = B0 + o;
    T* p = P + r * ldp + o;
    #pragma GCC ivdep
    for (int64_t j = 0; j < len; ++j) p[j] = dh[j] * u[j] + dx[j] * wx[j] + db[j] + b0[j];
  });
}

// From dpre (gradient of the pre-activation, 4n a row) of `rows` rows: du = dpre ⊙ d_h (gradient of u),
// dwx = dpre ⊙ d_x, dz (12 nz: z's gradient through d), and adds z[q,k] dd[q,:] to adw (12, nz, n: the
// W_.z gradient; dd = dpre ⊙ u, dpre ⊙ wx, dpre for the parts h, x, b) and dpre to ab (b0's gradient, 4n).
template <typename T>
inline void main_grad_rows(int64_t rows, const T* DP, int64_t ldp, const T* U, int64_t ldu, const T* Z, int64_t ldz,
                           const T* DW, const T* WX, int64_t ldw, int64_t n, int64_t nz, T* DU, int64_t lddu,
                           T* DWX, int64_t lddw, T* DZ, int64_t lddz, T* adw, T* ab) {
  T dh[CHUNK], dx[CHUNK], ddh[CHUNK], ddx[CHUNK];
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < 12 * nz; ++k) DZ[r * lddz + k] = 0;
  for_each_chunk_and_row(rows, n, [&](int g, int64_t j0, int64_t len, int64_t o, int64_t r) {
    const T* z = Z + r * ldz;
    d_chunk(z, DW, n, nz, g, j0, len, dh);
    d_chunk(z, DW, n, nz, 4 + g, j0, len, dx);
    const T *dp = DP + r * ldp + o, *u = U + r * ldu + o, *wx = WX + r * ldw + o;
    T *du = DU + r * lddu + o, *dwx = DWX + r * lddw + o, *b = ab + o;
    #pragma GCC ivdep
    for (int64_t j = 0; j < len; ++j) {
      const T v = dp[j];
      ddh[j] = v * u[j];
      ddx[j] = v * wx[j];
      du[j] = v * dh[j];
      dwx[j] = v * dx[j];
      b[j] += v;
    }
    T* dz = DZ + r * lddz;
    const T* parts[3] = {ddh, ddx, dp};
    for (int part = 0; part < 3; ++part) {
      const int q = part * 4 + g;
      const T* dd = parts[part];
      for (int64_t k = 0; k < nz; ++k) {
        const T* w = DW + (q * nz + k) * n + j0;
        T* aw = adw + (q * nz + k) * n + j0;
        const T zk = z[q * nz + k];
        T acc = 0;
        #pragma GCC ivdep
        for (int64_t j = 0; j < len; ++j) { acc += dd[j] * w[j]; aw[j] += zk * dd[j]; }
        dz[q * nz + k] += acc;
      }
    }
  });
}

template <typename T>
inline void hyper_forward_row(const T* r_h, const T* hp, const T* wx_h, const T* hb, const T* c, const LN<T>& ln,
                              const T* ZW, const T* ZB, int64_t n, int64_t NZ, T* p, const Acts<T>& a, T* cn, T* h,
                              T* z) {
  if (hp) {
    for (int64_t j = 0; j < 4 * n; ++j) p[j] = r_h[j] + hp[j] + wx_h[j] + hb[j];
  } else {
    for (int64_t j = 0; j < 4 * n; ++j) p[j] = r_h[j] + wx_h[j] + hb[j];
  }
  core_forward_row(p, c, static_cast<const T*>(nullptr), ln, a, n, cn, h);
  for (int64_t k = 0; k < NZ; ++k) {
    const T* w = ZW + k * n;
    T acc = 0;
    for (int64_t j = 0; j < n; ++j) acc += w[j] * h[j];
    z[k] = acc + ZB[k];
  }
}

// Backward: dĥ = dhh + Zwᵀ dz (z's gradient), then the core. scratch: n (dĥ) + 6n (core tmp).
template <typename T>
inline void hyper_backward_row(const Acts<T>& a, const T* c, const LN<T>& ln, int64_t n, int64_t NZ, const T* dhh,
                               const T* dz, const T* ZW, const T* dc, T* scratch, T* dcp, T* dpre, T* ag, T* as,
                               T* acg, T* acs) {
  T* dh = scratch;
  for (int64_t j = 0; j < n; ++j) dh[j] = dhh ? dhh[j] : T(0);
  for (int64_t k = 0; k < NZ; ++k) {
    const T* w = ZW + k * n;
    const T g = dz[k];
    for (int64_t j = 0; j < n; ++j) dh[j] += g * w[j];
  }
  core_backward_row(a, c, static_cast<const T*>(nullptr), ln, n, dh, dc, scratch + n, dpre, dcp, ag, as, acg, acs);
}

template <typename T>
T* row_or_null(T* base, int64_t i, int64_t width) { return base ? base + i * width : nullptr; }

template <typename T>
T* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

void check_rows(std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts)
    if (t->defined())
      TORCH_CHECK(t->is_contiguous() && t->device().is_cpu(), "expected contiguous CPU tensors");
}

at::Tensor opt_or_undefined(const OptT& t) { return t.has_value() ? *t : at::Tensor(); }

// ---------------------------------------------------------------------------------------------------
// The per-step products against a fixed weight matrix. A plain GEMM repacks the weight into the BLAS's
// blocked layout on every call (at H = 1000 that is 18 MB a step, twice per step and direction); MKL's packed
// GEMM packs it once per sequence and reuses it, as oneDNN's fused LSTM does (11-30% less time per product,
// bench/NOTES.md). MKL ships inside libtorch_cpu on x86-64; its functions are looked up at run time, so a
// torch without MKL (or double precision) takes at::mm_out instead.
// ---------------------------------------------------------------------------------------------------
struct MklPacked {
  using GetSize = size_t (*)(int, int, int, int);
  using Pack = void (*)(int, int, int, int, int, int, float, const float*, int, float*);
  using Compute = void (*)(int, int, int, int, int, int, const float*, int, const float*, int, float, float*, int);
  GetSize get_size = nullptr;
  Pack pack = nullptr;
  Compute compute = nullptr;
  MklPacked() {
    Dl_info info;  // the library that holds ATen (and MKL's cblas symbols, when built with MKL)
    if (!dladdr(reinterpret_cast<void*>(&at::get_num_threads), &info) || !info.dli_fname) return;
    void* lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (!lib) return;
    get_size = reinterpret_cast<GetSize>(dlsym(lib, "cblas_sgemm_pack_get_size"));
    pack = reinterpret_cast<Pack>(dlsym(lib, "cblas_sgemm_pack"));
    compute = reinterpret_cast<Compute>(dlsym(lib, "cblas_sgemm_compute"));
  }
  bool ok() const { return get_size && pack && compute; }
  // CBLAS constants (mkl_cblas.h): row major, no transpose, packed operand, the B matrix.
  static constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;
};

const MklPacked& mkl_packed() {
  static const MklPacked mkl;
  return mkl;
}

// An on/off switch from the environment: on unless the variable is "0".
bool env_switch(const char* name) {
  const char* v = std::getenv(name);
  return !(v && std::string(v) == "0");
}

bool packed_gemm_enabled() {
  static const bool on = env_switch("HYPERMODELS_PACKED_GEMM");
  return on;
}

// C = A · op(W) for many A (rows × k, row-major, columns contiguous) against one contiguous W: op(W) = W (k × n),
// or Wᵀ for W (n × k) when `transposed` (packed as such: no transposed copy is made).
class FixedRight {
 public:
  // W is detached: the products run in worker threads, where autograd's (thread-local) grad mode is on.
  FixedRight(const at::Tensor& W, bool transposed, int64_t m) : W_(transposed ? W.detach().t() : W.detach()) {
    TORCH_CHECK(W.dim() == 2 && W.is_contiguous(), "the fixed operand must be contiguous");
    k_ = W_.size(0);
    n_ = W_.size(1);
    const MklPacked& mkl = mkl_packed();
    if (W.scalar_type() != at::kFloat || !mkl.ok() || !packed_gemm_enabled()) return;
    const size_t bytes = mkl.get_size(MklPacked::kBMatrix, int(m), int(n_), int(k_));
    packed_ = at::empty({int64_t((bytes + sizeof(float) - 1) / sizeof(float))}, W.options());
    mkl.pack(MklPacked::kRowMajor, MklPacked::kBMatrix, transposed ? MklPacked::kTrans : MklPacked::kNoTrans,
             int(m), int(n_), int(k_), 1.0f, W.data_ptr<float>(), int(transposed ? k_ : n_), packed_.data_ptr<float>());
  }
  // `rows` rows of C = A · op(W), A and C given by their first row and row stride. Each thread calls this for
  // its own rows inside a parallel region, where MKL and ATen run single-threaded.
  template <typename T>
  void mm_rows(const T* A, int64_t lda, T* C, int64_t ldc, int64_t rows) const {
    if (rows <= 0) return;
    if constexpr (std::is_same_v<T, float>) {
      if (packed_.defined()) {
        mkl_packed().compute(MklPacked::kRowMajor, MklPacked::kNoTrans, MklPacked::kPacked, int(rows), int(n_),
                             int(k_), A, int(lda), packed_.data_ptr<float>(), int(n_), 0.0f, C, int(ldc));
        return;
      }
    }
    at::Tensor a = at::from_blob(const_cast<T*>(A), {rows, k_}, {lda, 1}, W_.options());
    at::Tensor c = at::from_blob(C, {rows, n_}, {ldc, 1}, W_.options());
    at::mm_out(c, a, W_);
  }

 private:
  at::Tensor W_, packed_;
  int64_t k_ = 0, n_ = 0;
};

// ---------------------------------------------------------------------------------------------------
// Workspace: the loops' large buffers (at H = 1000, batch 128: ~1.2 GB a training step) come from a small
// cache and are reused once nothing else holds them (their storage's only owner is the cache: autograd
// has released what forward saved, the caller has dropped the output). Fresh buffers of that size come
// from mmap, and first-touching their pages cost ~0.3 s a training step at that size (page faults), more
// than any kernel here; cuDNN/oneDNN keep workspaces for the same reason. Buffers under 1 MiB are plain
// allocations. HYPERMODELS_WORKSPACE_CACHE=0 turns the cache off; release_workspace() empties it.
// ---------------------------------------------------------------------------------------------------
constexpr int64_t kWorkspaceMinBytes = 1 << 20;
constexpr size_t kWorkspaceMaxBuffers = 48;

struct WorkspaceCache {
  std::mutex mu;
  std::vector<at::Tensor> buffers;  // flat, most recently used last
};

WorkspaceCache& workspace_cache() {
  static WorkspaceCache cache;
  return cache;
}

bool workspace_cache_enabled() {
  static const bool on = env_switch("HYPERMODELS_WORKSPACE_CACHE");
  return on;
}

bool is_free(const at::Tensor& t) { return t.use_count() == 1 && t.storage().use_count() == 1; }

// An uninitialised tensor of `size` (like at::empty), from the cache when one of the right size is free.
at::Tensor workspace(at::IntArrayRef size, const at::TensorOptions& opts) {
  const int64_t numel = c10::multiply_integers(size);
  const int64_t bytes = numel * int64_t(c10::elementSize(c10::typeMetaToScalarType(opts.dtype())));
  if (!workspace_cache_enabled() || bytes < kWorkspaceMinBytes || !opts.device().is_cpu())
    return at::empty(size, opts);
  WorkspaceCache& cache = workspace_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  auto& bufs = cache.buffers;
  for (auto it = bufs.begin(); it != bufs.end(); ++it) {
    if (it->numel() == numel && it->dtype() == opts.dtype() && is_free(*it)) {
      at::Tensor t = *it;
      bufs.erase(it);
      bufs.push_back(t);
      return t.view(size);
    }
  }
  at::Tensor t = at::empty({numel}, opts);
  bufs.push_back(t);
  // Bound the cache: drop the least recently used free buffers.
  for (auto it = bufs.begin(); bufs.size() > kWorkspaceMaxBuffers && it != bufs.end();)
    it = is_free(*it) ? bufs.erase(it) : it + 1;
  return t.view(size);
}

at::Tensor workspace_like(std::vector<int64_t> size, at::Tensor like) { return workspace(size, like.options()); }

void release_workspace() {
  WorkspaceCache& cache = workspace_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  cache.buffers.clear();
}

// ---------------------------------------------------------------------------------------------------
// Whole-sequence loops of one layer (one call per layer and direction). Batch rows are independent, so
// each thread takes its rows through the whole sequence: per step the recurrent product for its rows (MKL's
// packed GEMM, single-threaded inside the parallel region) and the element-wise work of the hyper cell, z, d
// and the main cell, in row blocks. The product takes both recurrent inputs at once: [h, ĥ]_{t-1} (B, H + Ĥ)
// times W2ᵀ, W2 = [[W_h, 0]; [Ŵ_h, Ŵ_hh]] (4H + 4Ĥ, H + Ĥ), gives u = W_h h and the hyper cell's recurrent
// part; the zero block costs 4H Ĥ multiply-adds per row, less than a second product at tiny sizes. Otherwise
// the caller passes the separate Ŵ_hh (hW_hh): then W2 = [W_h; Ŵ_h] (4H + 4Ĥ, H) and a second product adds
// ĥ's part. Backward multiplies by W2 and Ŵ_hh, forward by their transposes (packed as such).
// ---------------------------------------------------------------------------------------------------

// Forward. wx = W_x x (steps, B, 4H), hwx = Ŵ_x x (steps, B, 4Ĥ), hb = b̂ (4Ĥ); W2, hW_hh as above. Returns out
// (steps, B, H), c_T, ĥ_T, ĉ_T and what backward needs (save) or placeholders: r = [h, ĥ]_{t-1} W2ᵀ
// (steps, B, 4H + 4Ĥ), z, c, ĉ, ĥ, then the main cell's activations (act,
// norm, cnh, tco, rstd) and the hyper cell's (LN ones undefined without LN).
std::vector<at::Tensor> forward_loop(at::Tensor wx, at::Tensor hwx, at::Tensor h0, at::Tensor c0, at::Tensor hh0,
                                     at::Tensor hc0, OptT masks, at::Tensor W2, OptT hW_hh, at::Tensor Zw,
                                     at::Tensor zb, at::Tensor DwT, at::Tensor b0, at::Tensor hb, OptT gain, OptT shift,
                                     OptT cgain, OptT cshift, OptT hgain, OptT hshift, OptT hcgain, OptT hcshift,
                                     double eps, bool save, bool save_acts) {
  const int64_t steps = wx.size(0), B = wx.size(1), H = c0.size(1), Hh = hc0.size(1), NZ = Zw.size(0);
  const int64_t nz = DwT.size(1), LDR = 4 * H + 4 * Hh;
  TORCH_CHECK(NZ == 12 * nz && DwT.size(0) == 12 && DwT.size(2) == H && Zw.size(1) == Hh, "bad z/d shapes");
  const bool split = hW_hh.has_value();
  TORCH_CHECK(wx.size(2) == 4 * H && hwx.size(2) == 4 * Hh && W2.size(1) == (split ? H : H + Hh) &&
              W2.size(0) == LDR, "bad shapes");
  at::Tensor mk = opt_or_undefined(masks);
  check_rows({&wx, &hwx, &h0, &c0, &hh0, &hc0, &mk, &Zw, &zb, &DwT, &b0, &hb});
  check_contiguous({&gain, &shift, &cgain, &cshift, &hgain, &hshift, &hcgain, &hcshift});
  const bool lnon = gain.has_value();
  const int64_t S1 = save ? steps : 1, S2 = save ? steps : 2;
  auto e = [&](std::initializer_list<int64_t> size) { return workspace(size, wx.options()); };
  auto eln = [&](std::initializer_list<int64_t> size) { return lnon ? e(size) : at::Tensor(); };
  at::Tensor out = e({steps, B, H}), R = e({S1, B, LDR}), Z = e({S1, B, NZ}), C = e({S2, B, H}),
             HC = e({S2, B, Hh}), HH = e({S2, B, Hh}), X = e({2, B, H + Hh}),
             HP = split ? e({B, 4 * Hh}) : at::Tensor();
  const FixedRight w2t(W2, /*transposed=*/true, B);
  const std::optional<FixedRight> hw_hht =
      split ? std::optional<FixedRight>(std::in_place, *hW_hh, /*transposed=*/true, B) : std::nullopt;
  // [h, ĥ] of the previous step, the product's input: ping-pong, slot 1 first holds the initial state.
  X[1].narrow(1, 0, H).copy_(h0);
  X[1].narrow(1, H, Hh).copy_(hh0);
  // Activations: saved per step (keep_acts), else one slot of scratch rows and the pre-activations are
  // saved instead (backward recomputes the activations from them).
  const bool keep_acts = save && save_acts;
  const int64_t SA = keep_acts ? steps : 1;
  std::vector<at::Tensor> ma = {e({SA, B, 4 * H}), eln({SA, B, 4 * H}), eln({SA, B, H}), e({SA, B, H}),
                                eln({SA, B, 5})};
  std::vector<at::Tensor> ha = {e({SA, B, 4 * Hh}), eln({SA, B, 4 * Hh}), eln({SA, B, Hh}), e({SA, B, Hh}),
                                eln({SA, B, 5})};
  // Without saved activations backward recomputes them: the hyper cell's from its saved pre-activations, the
  // main cell's from pre = d_h u + d_x wx + d_b + b0 (u, wx and z are saved anyway).
  at::Tensor HPR = save && !save_acts ? e({steps, B, 4 * Hh}) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(wx.scalar_type(), "forward_loop", [&] {
    using T = scalar_t;
    LN<T> lm(gain, shift, cgain, cshift, eps), lh(hgain, hshift, hcgain, hcshift, eps);
    ActsRows<T> am(ma, H), ah(ha, Hh);
    const T *WX = wx.data_ptr<T>(), *HWX = hwx.data_ptr<T>(), *M = ptr_or_null<T>(mk);
    const T *ZW = Zw.data_ptr<T>(), *ZB = zb.data_ptr<T>(), *DW = DwT.data_ptr<T>(), *B0 = b0.data_ptr<T>();
    const T* HB = hb.data_ptr<T>();
    T *OUT = out.data_ptr<T>(), *RR = R.data_ptr<T>(), *ZZ = Z.data_ptr<T>(), *CC = C.data_ptr<T>();
    T *HCC = HC.data_ptr<T>(), *HHH = HH.data_ptr<T>(), *XX = X.data_ptr<T>(), *HPP = ptr_or_null<T>(HP);
    T* HPRp = ptr_or_null<T>(HPR);
    // Rows are independent (batch elements): each thread runs the whole sequence for its own rows, product
    // included, so no step needs a fork/join or a barrier.
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> buf(4 * Hh + ROW_BLOCK * 4 * H);  // hyper pre (when not saved), main pre of a block
      T *hpre = buf.data(), *mpre = hpre + 4 * Hh;
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t s1 = save ? t : 0, s2 = save ? t : t % 2, p2 = save ? t - 1 : (t + 1) % 2;
        const T* xp = XX + ((t + 1) % 2) * B * (H + Hh) + begin * (H + Hh);  // [h, ĥ]_{t-1} of these rows
        T* r = RR + (s1 * B + begin) * LDR;
        w2t.mm_rows(xp, H + Hh, r, LDR, end - begin);
        if (split)  // ĥ's part into its own (contiguous) buffer, added by the kernel
          hw_hht->mm_rows(xp + H, H + Hh, HPP + begin * 4 * Hh, 4 * Hh, end - begin);
        T* Xn = XX + (t % 2) * B * (H + Hh);
        const T* c_prev = t == 0 ? c0.data_ptr<T>() : CC + p2 * B * H;
        const T* hc_prev = t == 0 ? hc0.data_ptr<T>() : HCC + p2 * B * Hh;
        for (int64_t bb = begin; bb < end; bb += ROW_BLOCK) {
          const int64_t rows = std::min(ROW_BLOCK, end - bb);
          for (int64_t b = bb; b < bb + rows; ++b) {  // the hyper cell and z of each row
            const int64_t i = s1 * B + b, k = t * B + b, j2 = s2 * B + b, ia = (keep_acts ? t : 0) * B + b;
            hyper_forward_row(RR + i * LDR + 4 * H, row_or_null(HPP, b, 4 * Hh), HWX + k * 4 * Hh, HB,
                              hc_prev + b * Hh, lh, ZW, ZB, Hh, NZ, HPRp ? HPRp + k * 4 * Hh : hpre, ah.row(ia),
                              HCC + j2 * Hh, HHH + j2 * Hh, ZZ + i * NZ);
          }
          const int64_t i0 = s1 * B + bb, k0 = t * B + bb;
          main_pre_rows(rows, RR + i0 * LDR, LDR, ZZ + i0 * NZ, NZ, DW, WX + k0 * 4 * H, 4 * H, B0, H, nz, mpre,
                        4 * H);
          for (int64_t b = bb; b < bb + rows; ++b) {  // the main cell of each row
            const int64_t k = t * B + b, j2 = s2 * B + b, ia = (keep_acts ? t : 0) * B + b;
            core_forward_row(mpre + (b - bb) * 4 * H, c_prev + b * H, row_or_null(M, k, H), lm, am.row(ia), H,
                             CC + j2 * H, OUT + k * H);
            T* xb = Xn + b * (H + Hh);
            std::copy(OUT + k * H, OUT + (k + 1) * H, xb);
            std::copy(HHH + j2 * Hh, HHH + (j2 + 1) * Hh, xb + H);
          }
        }
      }
    });
  });
  const int64_t last = save ? steps - 1 : (steps - 1) % 2;
  std::vector<at::Tensor> res = {out, C[last], HH[last], HC[last], R, Z, C, HC, HH};
  if (save && !save_acts) {  // the pre-activations stand for the activations
    ma = {};
    ha = {HPR};
  }
  res.insert(res.end(), ma.begin(), ma.end());
  res.insert(res.end(), ha.begin(), ha.end());
  return res;
}

// BPTT over the sequence saved by forward_loop (save=true). dh (B, H) is the gradient at h_T (output's
// last step included), dc, dhh, dhc at the final state (may be None); dout (steps, B, H) the output's. W2 =
// as in forward_loop: one product per step gives the gradients at [h, ĥ]_{t-1}. Returns DUH (steps, B, 4H + 4Ĥ: gradients of u = W_h h and
// of the hyper pre-activation), DWX (gradient of W_x x), DZ, the W_.z gradient (12, nz, H), b0's (4H), the
// main and hyper LN parameter gradients (gain (4n), shift (4n), cell gain, cell shift; undefined without LN),
// and the gradients at the initial state: dh0, dc0, dhh0, dhc0.
std::vector<at::Tensor> backward_loop(at::Tensor R, at::Tensor Z, at::Tensor C, at::Tensor HC,
                                      std::vector<OptT> ma_, std::vector<OptT> ha_, at::Tensor wx,
                                      at::Tensor c0, at::Tensor hc0, OptT masks, OptT dout_, at::Tensor dh_in,
                                      OptT dc_, OptT dhh_, OptT dhc_, at::Tensor W2, OptT hW_hh,
                                      at::Tensor Zw, at::Tensor DwT, at::Tensor b0, OptT gain, OptT shift, OptT cgain,
                                      OptT cshift, OptT hgain, OptT hshift, OptT hcgain, OptT hcshift, double eps) {
  const int64_t steps = wx.size(0), B = wx.size(1), H = c0.size(1), Hh = hc0.size(1), NZ = Zw.size(0);
  const int64_t nz = DwT.size(1), LDR = 4 * H + 4 * Hh;
  // 5 activation tensors per cell as saved by forward_loop, or 1: the pre-activations (then recomputed).
  // 5 activation tensors per cell as saved by forward_loop, or none for the main cell and the hyper cell's
  // pre-activations: then both are recomputed.
  const bool recompute = ma_.empty();
  TORCH_CHECK(recompute ? ha_.size() == 1 : (ma_.size() == 5 && ha_.size() == 5), "expected 5+5 or 0+1 tensors");
  std::vector<at::Tensor> ma, ha;
  for (auto& t : ma_) ma.push_back(opt_or_undefined(t));
  for (auto& t : ha_) ha.push_back(opt_or_undefined(t));
  at::Tensor mk = opt_or_undefined(masks), dout = opt_or_undefined(dout_), dc0 = opt_or_undefined(dc_),
             dhh0 = opt_or_undefined(dhh_), dhc0 = opt_or_undefined(dhc_);
  check_rows({&R, &Z, &C, &HC, &wx, &c0, &hc0, &mk, &dout, &dh_in, &dc0, &dhh0, &dhc0, &Zw, &DwT});
  for (auto& t : ma) check_rows({&t});
  for (auto& t : ha) check_rows({&t});
  check_contiguous({&gain, &shift, &cgain, &cshift, &hgain, &hshift, &hcgain, &hcshift});
  const bool lnon = gain.has_value();
  const int threads = at::get_num_threads();
  auto e = [&](std::initializer_list<int64_t> size) { return workspace(size, wx.options()); };
  auto zl = [&](std::initializer_list<int64_t> size) { return lnon ? at::zeros(size, wx.options()) : at::Tensor(); };
  at::Tensor DUH = e({steps, B, LDR}), DWX = e({steps, B, 4 * H}), DZ = e({steps, B, NZ});
  // Parameter-gradient accumulators, one slice per thread (each kept hot in its core's cache).
  at::Tensor acc_dw = at::zeros({threads, 12, nz, H}, wx.options()), acc_b = at::zeros({threads, 4 * H}, wx.options());
  std::vector<at::Tensor> macc = {zl({threads, 4 * H}), zl({threads, 4 * H}), zl({threads, H}), zl({threads, H})};
  std::vector<at::Tensor> hacc = {zl({threads, 4 * Hh}), zl({threads, 4 * Hh}), zl({threads, Hh}), zl({threads, Hh})};
  // Ping-pong buffers for the state gradients; DX holds those at [h, ĥ] (without dout's part), slot 1 first
  // the final state's.
  // the final state's. With separate products (hW_hh given) DXh and DXhh hold the two parts instead.
  const bool split = hW_hh.has_value();
  const FixedRight w2(W2, /*transposed=*/false, B);
  const std::optional<FixedRight> hw_hh =
      split ? std::optional<FixedRight>(std::in_place, *hW_hh, /*transposed=*/false, B) : std::nullopt;
  at::Tensor DX = e({2, B, H + Hh}), dcb[2] = {e({B, H}), e({B, H})}, dhcb[2] = {e({B, Hh}), e({B, Hh})};
  at::Tensor DXh = split ? e({2, B, H}) : DX.narrow(2, 0, H), DXhh = split ? e({2, B, Hh}) : DX.narrow(2, H, Hh);
  const int64_t ldh = split ? H : H + Hh, ldhh = split ? Hh : H + Hh;
  DXh[1].copy_(dh_in);
  if (dhh0.defined()) DXhh[1].copy_(dhh0); else DXhh[1].zero_();
  AT_DISPATCH_FLOATING_TYPES(wx.scalar_type(), "backward_loop", [&] {
    using T = scalar_t;
    LN<T> lm(gain, shift, cgain, cshift, eps), lh(hgain, hshift, hcgain, hcshift, eps);
    ActsRows<T> am, ah;
    if (!recompute) am = ActsRows<T>(ma, H), ah = ActsRows<T>(ha, Hh);
    const T* HPRp = recompute ? ha[0].data_ptr<T>() : nullptr;
    const T* B0 = b0.data_ptr<T>();
    const T *RR = R.data_ptr<T>(), *ZZ = Z.data_ptr<T>(), *CC = C.data_ptr<T>(), *HCC = HC.data_ptr<T>();
    const T *WX = wx.data_ptr<T>(), *M = ptr_or_null<T>(mk), *ZW = Zw.data_ptr<T>(), *DW = DwT.data_ptr<T>();
    T *DUHp = DUH.data_ptr<T>(), *DWXp = DWX.data_ptr<T>(), *DZp = DZ.data_ptr<T>();
    T *ADW = acc_dw.data_ptr<T>(), *AB = acc_b.data_ptr<T>();
    T *MAG = ptr_or_null<T>(macc[0]), *MAS = ptr_or_null<T>(macc[1]), *MACG = ptr_or_null<T>(macc[2]),
      *MACS = ptr_or_null<T>(macc[3]);
    T *HAG = ptr_or_null<T>(hacc[0]), *HAS = ptr_or_null<T>(hacc[1]), *HACG = ptr_or_null<T>(hacc[2]),
      *HACS = ptr_or_null<T>(hacc[3]);
    const T* DOUT = ptr_or_null<T>(dout);
    T *DXhp = DXh.data_ptr<T>(), *DXhhp = DXhh.data_ptr<T>();
    // As in forward, each thread runs the whole sequence for its own rows, products included.
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      // scratch: the block's dpre and recomputed pre (ROW_BLOCK x 4H each), core backward (6H, or 7Ĥ for the
      // hyper cell), dh (H)
      std::vector<T> buf(2 * ROW_BLOCK * 4 * H + std::max(6 * H, 7 * Hh) + H);
      T *dpre = buf.data(), *mpre = dpre + ROW_BLOCK * 4 * H, *tmp = mpre + ROW_BLOCK * 4 * H;
      T* dh = tmp + std::max(6 * H, 7 * Hh);
      std::optional<ActsScratch<T>> sm, sh;
      std::vector<T> cn_s, h_s;
      if (recompute) sm.emplace(H), sh.emplace(Hh), cn_s.resize(H + Hh), h_s.resize(H + Hh);
      // This thread's accumulators of parameter gradients (summed over threads after the loop).
      const int64_t th = at::get_thread_num();
      T* adw = ADW + th * 12 * nz * H;
      int cur = 1;  // DX slot holding the gradients at [h, ĥ]_t
      const T *DC = ptr_or_null<T>(dc0), *DHC = ptr_or_null<T>(dhc0);  // at c_t, ĉ_t (null: zero)
      for (int64_t t = steps - 1; t >= 0; --t) {
        const int nb = t % 2;  // buffers the gradients at step t-1's state go to
        const T *DHr = DXhp + cur * DXh.stride(0), *DHHr = DXhhp + cur * DXhh.stride(0);
        const T* DO = (DOUT && t < steps - 1) ? DOUT + t * B * H : nullptr;  // dh_in already holds dout[T-1]
        T *DCP = dcb[nb].data_ptr<T>(), *DHCP = dhcb[nb].data_ptr<T>();
        const T* c_prev = t == 0 ? c0.data_ptr<T>() : CC + (t - 1) * B * H;
        const T* hc_prev = t == 0 ? hc0.data_ptr<T>() : HCC + (t - 1) * B * Hh;
        for (int64_t bb = begin; bb < end; bb += ROW_BLOCK) {
          const int64_t rows = std::min(ROW_BLOCK, end - bb), i0 = t * B + bb;
          if (recompute)  // the same pre-activations forward computed, from the same saved inputs
            main_pre_rows(rows, RR + i0 * LDR, LDR, ZZ + i0 * NZ, NZ, DW, WX + i0 * 4 * H, 4 * H, B0, H, nz, mpre,
                          4 * H);
          for (int64_t b = bb; b < bb + rows; ++b) {  // the main cell's core of each row
            const int64_t i = t * B + b;
            const T* dx = DHr + b * ldh;
            for (int64_t j = 0; j < H; ++j) dh[j] = DO ? dx[j] + DO[b * H + j] : dx[j];
            Acts<T> arow;
            if (recompute) {
              core_forward_row(mpre + (b - bb) * 4 * H, c_prev + b * H, row_or_null(M, i, H), lm, sm->a, H,
                               cn_s.data(), h_s.data());
              arow = sm->a;
            } else {
              arow = am.row(i);
            }
            core_backward_row(arow, c_prev + b * H, row_or_null(M, i, H), lm, H, dh, row_or_null(DC, b, H), tmp,
                              dpre + (b - bb) * 4 * H, DCP + b * H, row_or_null(MAG, th, 4 * H),
                              row_or_null(MAS, th, 4 * H), row_or_null(MACG, th, H), row_or_null(MACS, th, H));
          }
          main_grad_rows(rows, dpre, 4 * H, RR + i0 * LDR, LDR, ZZ + i0 * NZ, NZ, DW, WX + i0 * 4 * H, 4 * H, H, nz,
                         DUHp + i0 * LDR, LDR, DWXp + i0 * 4 * H, 4 * H, DZp + i0 * NZ, NZ, adw, AB + th * 4 * H);
          for (int64_t b = bb; b < bb + rows; ++b) {  // the hyper cell of each row, given z's gradient
            const int64_t i = t * B + b;
            Acts<T> hrow;
            if (recompute) {
              core_forward_row(HPRp + i * 4 * Hh, hc_prev + b * Hh, static_cast<const T*>(nullptr), lh, sh->a, Hh,
                               cn_s.data(), h_s.data());
              hrow = sh->a;
            } else {
              hrow = ah.row(i);
            }
            hyper_backward_row(hrow, hc_prev + b * Hh, lh, Hh, NZ, DHHr + b * ldhh, DZp + i * NZ, ZW,
                               row_or_null(DHC, b, Hh), tmp, DHCP + b * Hh, DUHp + i * LDR + 4 * H,
                               row_or_null(HAG, th, 4 * Hh), row_or_null(HAS, th, 4 * Hh), row_or_null(HACG, th, Hh),
                               row_or_null(HACS, th, Hh));
          }
        }
        // The gradients at [h, ĥ]_{t-1} of this thread's rows.
        const T* duh = DUHp + (t * B + begin) * LDR;
        w2.mm_rows(duh, LDR, DXhp + (1 - cur) * DXh.stride(0) + begin * ldh, ldh, end - begin);
        if (split)
          hw_hh->mm_rows(duh + 4 * H, LDR, DXhhp + (1 - cur) * DXhh.stride(0) + begin * ldhh, ldhh, end - begin);
        cur = 1 - cur;
        DC = DCP;
        DHC = DHCP;
      }
    });
  });
  // Where the loop left the gradients at the initial state: each step flips the DX slot (from slot 1) and
  // the last step (t = 0) wrote dc, dĉ to buffer 0.
  const int cur = steps % 2 == 0 ? 1 : 0;
  const at::Tensor dc = dcb[0], dhc = dhcb[0];
  auto sum0 = [](const at::Tensor& t) { return t.defined() ? t.sum(0) : at::Tensor(); };
  return {DUH, DWX, DZ, acc_dw.sum(0), acc_b.sum(0), sum0(macc[0]), sum0(macc[1]), sum0(macc[2]), sum0(macc[3]),
          sum0(hacc[0]), sum0(hacc[1]), sum0(hacc[2]), sum0(hacc[3]), DXh[cur].contiguous(), dc,
          DXhh[cur].contiguous(), dhc};
}

// ---------------------------------------------------------------------------------------------------
// Per-step entry points of the main cell (used by the tests to check the core against autograd): forward
// writes pre (B, 4H), c_new, h; backward recomputes the activations from pre.
// ---------------------------------------------------------------------------------------------------

void main_forward(at::Tensor u, at::Tensor z, at::Tensor DwT, at::Tensor wx, at::Tensor b0, at::Tensor c_prev,
                  OptT mask, OptT gain, OptT shift, OptT cgain, OptT cshift, double eps, at::Tensor pre,
                  at::Tensor c_new, at::Tensor h) {
  check_contiguous({&mask, &gain, &shift, &cgain, &cshift});
  for (auto* t : {&u, &wx, &h, &z, &DwT, &b0, &c_prev, &pre, &c_new})
    TORCH_CHECK(t->is_contiguous(), "expected contiguous");
  TORCH_CHECK(z.size(1) == 12 * DwT.size(1), "z must hold 12 blocks of N_z");
  const int64_t B = c_prev.size(0), n = c_prev.size(1), nz = DwT.size(1);
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "main_forward", [&] {
    using T = scalar_t;
    LN<T> ln(gain, shift, cgain, cshift, eps);
    const T *U = u.data_ptr<T>(), *Zp = z.data_ptr<T>(), *DW = DwT.data_ptr<T>(), *W = wx.data_ptr<T>();
    const T *B0 = b0.data_ptr<T>(), *C = c_prev.data_ptr<T>(), *M = ptr<T>(mask);
    T *P = pre.data_ptr<T>(), *CN = c_new.data_ptr<T>(), *Hp = h.data_ptr<T>();
    ActsScratch<T> s(n);
    main_pre_rows(B, U, 4 * n, Zp, 12 * nz, DW, W, 4 * n, B0, n, nz, P, 4 * n);
    for (int64_t b = 0; b < B; ++b)
      core_forward_row(P + b * 4 * n, C + b * n, M ? M + b * n : nullptr, ln, s.a, n, CN + b * n, Hp + b * n);
  });
}

void main_backward(at::Tensor pre, at::Tensor u, at::Tensor z, at::Tensor DwT, at::Tensor wx, at::Tensor c_prev,
                   at::Tensor c_new, OptT mask, OptT gain, OptT shift, OptT cgain, OptT cshift, double eps,
                   at::Tensor dh, OptT dc, at::Tensor dc_prev, at::Tensor du, at::Tensor dwx, at::Tensor dz,
                   at::Tensor acc_dDwT, at::Tensor acc_bias, OptT acc_gain, OptT acc_shift, OptT acc_cgain,
                   OptT acc_cshift) {
  check_contiguous({&mask, &gain, &shift, &cgain, &cshift, &dc, &acc_gain, &acc_shift, &acc_cgain, &acc_cshift});
  for (auto* t : {&pre, &u, &wx, &du, &dwx, &z, &DwT, &c_prev, &c_new, &dh, &dc_prev, &dz, &acc_dDwT, &acc_bias})
    TORCH_CHECK(t->is_contiguous(), "expected contiguous");
  const int64_t B = c_prev.size(0), n = c_prev.size(1), nz = DwT.size(1);
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "main_backward", [&] {
    using T = scalar_t;
    LN<T> ln(gain, shift, cgain, cshift, eps);
    const T *P = pre.data_ptr<T>(), *U = u.data_ptr<T>(), *Zp = z.data_ptr<T>(), *DW = DwT.data_ptr<T>();
    const T *W = wx.data_ptr<T>(), *C = c_prev.data_ptr<T>(), *M = ptr<T>(mask), *DH = dh.data_ptr<T>(),
            *DC = ptr<T>(dc);
    T *DCP = dc_prev.data_ptr<T>(), *DU = du.data_ptr<T>(), *DWX = dwx.data_ptr<T>(), *DZ = dz.data_ptr<T>();
    T *ADW = acc_dDwT.data_ptr<T>(), *AB = acc_bias.data_ptr<T>();
    T *AG = ptr<T>(acc_gain), *AS = ptr<T>(acc_shift), *ACG = ptr<T>(acc_cgain), *ACS = ptr<T>(acc_cshift);
    ActsScratch<T> s(n);
    std::vector<T> tmp(6 * n), dpre(B * 4 * n), cn(n), h(n);
    for (int64_t b = 0; b < B; ++b) {
      // Recompute the activations (c_new comes out the same as the saved one).
      core_forward_row(P + b * 4 * n, C + b * n, M ? M + b * n : nullptr, ln, s.a, n, cn.data(), h.data());
      core_backward_row(s.a, C + b * n, M ? M + b * n : nullptr, ln, n, DH + b * n, DC ? DC + b * n : nullptr,
                        tmp.data(), dpre.data() + b * 4 * n, DCP + b * n, AG ? AG + b * 4 * n : nullptr,
                        AS ? AS + b * 4 * n : nullptr, ACG ? ACG + b * n : nullptr, ACS ? ACS + b * n : nullptr);
      // One row at a time: acc_bias has a row per batch row here.
      main_grad_rows(int64_t(1), dpre.data() + b * 4 * n, 4 * n, U + b * 4 * n, 4 * n, Zp + b * 12 * nz, 12 * nz, DW,
                     W + b * 4 * n, 4 * n, n, nz, DU + b * 4 * n, 4 * n, DWX + b * 4 * n, 4 * n, DZ + b * 12 * nz,
                     12 * nz, ADW, AB + b * 4 * n);
    }
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_loop", &forward_loop, "one HyperLSTM layer over a sequence, saving what backward needs");
  m.def("backward_loop", &backward_loop, "BPTT of forward_loop over the whole sequence");
  m.def("packed_gemm_available", [] { return mkl_packed().ok() && packed_gemm_enabled(); },
        "whether the per-step products use MKL's packed GEMM (float32)");
  m.def("workspace", &workspace_like, "an uninitialised tensor (size, like) from the loops' buffer cache");
  m.def("release_workspace", &release_workspace, "empty the loops' buffer cache");
  m.def("main_forward", &main_forward, "main cell, one step (for tests)");
  m.def("main_backward", &main_backward, "backward of main_forward, recomputing the activations (for tests)");
}
