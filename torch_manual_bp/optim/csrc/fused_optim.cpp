// One pass per tensor for the lecture's Momentum and Adam on CPU (torch_manual_bp.optim, fused=True).
//
// Plain C ABI on raw pointers, no torch headers: it builds in about a second with any C++17
// compiler and is loaded with ctypes (torch_manual_bp/optim/_fused.py). Python passes, per
// (dtype) group, arrays of data pointers, element counts and the per-tensor scalars
// (alpha_t, eps_t or the Momentum step), all already derived from the step count t.
//
// Per element, in the lecture's symbols (opmath: float for float32/bf16/fp16, double for
// float64; bf16/fp16 are loaded to float and rounded back to nearest-even on store):
//   Adam:      g ← −g (maximize);  w ← w(1 − αλ) (decoupled) or g ← g + λw (L2)
//              m ← β₁ m − (1 − β₁) g;  s ← β₂ s + (1 − β₂) g²;  s_max ← max(s_max, s)
//              w ← w + α_t m / (√s + ε_t)      α_t = α√(1−β₂ᵗ)/(1−β₁ᵗ), ε_t = ε√(1−β₂ᵗ)
//              (= w + α m̂/(√ŝ + ε)); a zero denominator (ε = 0, ŝ = 0) gives a zero update.
//   Momentum:  g ← −g (maximize);  g ← g + λw;  m ← β m + (1 − β)(−g);  w ← w + step·m
//              step = α, or α/(1 − βᵗ) with bias correction (m̂).
// Reads w, g, m, s (s_max) and writes w, m, s (s_max) once each: the memory-traffic floor.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// ---- storage types and their conversion to the arithmetic type --------------------------------

struct bf16 {
  uint16_t x;
};

inline float load(const bf16* p, int64_t j) {
  uint32_t u = static_cast<uint32_t>(p[j].x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline void store(bf16* p, int64_t j, float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);  // nearest even, as c10::BFloat16
  p[j].x = static_cast<uint16_t>((f != f ? 0x7fc00000u : rounded) >> 16);  // NaN stays NaN
}

inline float load(const float* p, int64_t j) { return p[j]; }
inline void store(float* p, int64_t j, float f) { p[j] = f; }
inline double load(const double* p, int64_t j) { return p[j]; }
inline void store(double* p, int64_t j, double f) { p[j] = f; }

#ifdef __FLT16_MAX__
#define TMBP_HAS_HALF 1
inline float load(const _Float16* p, int64_t j) { return static_cast<float>(p[j]); }
inline void store(_Float16* p, int64_t j, float f) { p[j] = static_cast<_Float16>(f); }
#else
#define TMBP_HAS_HALF 0
#endif

template <typename T>
struct Opmath {
  using type = float;
};
template <>
struct Opmath<double> {
  using type = double;
};

enum Decay { kNoDecay = 0, kL2 = 1, kDecoupled = 2 };

// ---- work split: blocks of kBlock elements, handed out dynamically ------------------------------
//
// Every tensor is cut into blocks of kBlock elements (the last one shorter); threads take the
// next block from a shared counter. Dynamic rather than static: on a busy machine a thread that
// gets descheduled does not hold the others back at the end of the step.

constexpr int64_t kBlock = 1 << 16;

struct Blocks {
  std::vector<int64_t> first;  // first[i]: index of tensor i's first block; first[n]: total
  explicit Blocks(int64_t n, const int64_t* numel) : first(n + 1, 0) {
    for (int64_t i = 0; i < n; ++i) first[i + 1] = first[i] + (numel[i] + kBlock - 1) / kBlock;
  }
  // block k -> (tensor i, [begin, end))
  void locate(int64_t k, const int64_t* numel, int64_t* i, int64_t* begin, int64_t* end) const {
    *i = std::upper_bound(first.begin(), first.end(), k) - first.begin() - 1;
    *begin = (k - first[*i]) * kBlock;
    *end = std::min(*begin + kBlock, numel[*i]);
  }
};

#ifdef _OPENMP
#define TMBP_PARALLEL_FOR _Pragma("omp parallel for schedule(dynamic, 1) num_threads(n_threads)")
#else
#define TMBP_PARALLEL_FOR
#endif

// ---- Adam ------------------------------------------------------------------------------------

template <typename T, bool kMaximize, int kDecay, bool kAmsgrad>
void adam_slice(T* __restrict w_, const T* __restrict g_, T* __restrict m_, T* __restrict s_,
                T* __restrict smax_, int64_t begin, int64_t end, typename Opmath<T>::type a,
                typename Opmath<T>::type e, double beta1_, double beta2_, double weight_decay_,
                double decay_) {
  using O = typename Opmath<T>::type;
  const O beta1 = beta1_, beta2 = beta2_, lambda = weight_decay_, decay = decay_;
  const O one_m_beta1 = 1 - beta1_, one_m_beta2 = 1 - beta2_;
  for (int64_t j = begin; j < end; ++j) {
    O g = load(g_, j);
    O w = load(w_, j);
    if (kMaximize) g = -g;
    if (kDecay == kDecoupled) w *= decay;                    // w ← w(1 − αλ)
    if (kDecay == kL2) g += lambda * w;                      // g ← g + λw
    const O m = beta1 * load(m_, j) - one_m_beta1 * g;      // m ← β₁ m − (1 − β₁) g
    const O s = beta2 * load(s_, j) + one_m_beta2 * g * g;  // s ← β₂ s + (1 − β₂) g²
    store(m_, j, m);
    store(s_, j, s);
    O s_hat = s;
    if (kAmsgrad) {
      const O s_old = load(smax_, j);
      s_hat = s_old > s ? s_old : s;  // s_max ← max(s_max, s)
      store(smax_, j, s_hat);
    }
    const O denom = std::sqrt(s_hat) + e;               // √s + ε_t
    const O q = a * m / denom;                          // α m̂/(√ŝ + ε)
    const O step = denom == 0 ? O(0) : q;               // 0 where ŝ = 0 and ε = 0 (not 0/0)
    store(w_, j, w + step);
  }
}

template <typename T, bool kMaximize, int kDecay, bool kAmsgrad>
void adam_tensors(int64_t n_tensors, T* const* W, const T* const* G, T* const* M, T* const* S,
                  T* const* Smax, const int64_t* numel, const double* alpha_t,
                  const double* eps_t, double b1, double b2, double wd, double dec,
                  int n_threads) {
  (void)n_threads;
  const Blocks blocks(n_tensors, numel);
  const int64_t n_blocks = blocks.first[n_tensors];
  TMBP_PARALLEL_FOR
  for (int64_t k = 0; k < n_blocks; ++k) {
    int64_t i, begin, end;
    blocks.locate(k, numel, &i, &begin, &end);
    adam_slice<T, kMaximize, kDecay, kAmsgrad>(W[i], G[i], M[i], S[i], kAmsgrad ? Smax[i] : nullptr,
                                               begin, end, alpha_t[i], eps_t[i], b1, b2, wd, dec);
  }
}

template <typename T, bool kMaximize, int kDecay>
void adam_amsgrad(bool amsgrad, int64_t n, T* const* W, const T* const* G, T* const* M,
                  T* const* S, T* const* Smax, const int64_t* numel, const double* a,
                  const double* e, double b1, double b2, double wd, double dec, int nt) {
  if (amsgrad)
    adam_tensors<T, kMaximize, kDecay, true>(n, W, G, M, S, Smax, numel, a, e, b1, b2, wd, dec, nt);
  else
    adam_tensors<T, kMaximize, kDecay, false>(n, W, G, M, S, Smax, numel, a, e, b1, b2, wd, dec, nt);
}

template <typename T, bool kMaximize>
void adam_decay(int decay_mode, bool amsgrad, int64_t n, T* const* W, const T* const* G,
                T* const* M, T* const* S, T* const* Smax, const int64_t* numel, const double* a,
                const double* e, double b1, double b2, double wd, double dec, int nt) {
  if (decay_mode == kL2)
    adam_amsgrad<T, kMaximize, kL2>(amsgrad, n, W, G, M, S, Smax, numel, a, e, b1, b2, wd, dec, nt);
  else if (decay_mode == kDecoupled)
    adam_amsgrad<T, kMaximize, kDecoupled>(amsgrad, n, W, G, M, S, Smax, numel, a, e, b1, b2, wd, dec, nt);
  else
    adam_amsgrad<T, kMaximize, kNoDecay>(amsgrad, n, W, G, M, S, Smax, numel, a, e, b1, b2, wd, dec, nt);
}

template <typename T>
void adam(int maximize, int decay_mode, int amsgrad, int64_t n, void* const* W,
          const void* const* G, void* const* M, void* const* S, void* const* Smax,
          const int64_t* numel, const double* a, const double* e, double b1, double b2,
          double wd, double dec, int nt) {
  auto w = reinterpret_cast<T* const*>(W);
  auto g = reinterpret_cast<const T* const*>(G);
  auto m = reinterpret_cast<T* const*>(M);
  auto s = reinterpret_cast<T* const*>(S);
  auto sm = reinterpret_cast<T* const*>(Smax);
  if (maximize)
    adam_decay<T, true>(decay_mode, amsgrad, n, w, g, m, s, sm, numel, a, e, b1, b2, wd, dec, nt);
  else
    adam_decay<T, false>(decay_mode, amsgrad, n, w, g, m, s, sm, numel, a, e, b1, b2, wd, dec, nt);
}

// ---- Momentum --------------------------------------------------------------------------------

template <typename T, bool kMaximize, bool kL2Decay>
void momentum_slice(T* __restrict w_, const T* __restrict g_, T* __restrict m_, int64_t begin,
                    int64_t end, typename Opmath<T>::type step, double beta_,
                    double weight_decay_) {
  using O = typename Opmath<T>::type;
  const O beta = beta_, one_m_beta = 1 - beta_, lambda = weight_decay_;
  for (int64_t j = begin; j < end; ++j) {
    O g = load(g_, j);
    const O w = load(w_, j);
    if (kMaximize) g = -g;
    if (kL2Decay) g += lambda * w;                    // g ← g + λw
    const O m = beta * load(m_, j) - one_m_beta * g;  // m ← β m + (1 − β)(−g)
    store(m_, j, m);
    store(w_, j, w + step * m);                       // w ← w + α m (or α m̂)
  }
}

template <typename T, bool kMaximize, bool kL2Decay>
void momentum_tensors(int64_t n_tensors, T* const* W, const T* const* G, T* const* M,
                      const int64_t* numel, const double* step, double beta, double wd,
                      int n_threads) {
  (void)n_threads;
  const Blocks blocks(n_tensors, numel);
  const int64_t n_blocks = blocks.first[n_tensors];
  TMBP_PARALLEL_FOR
  for (int64_t k = 0; k < n_blocks; ++k) {
    int64_t i, begin, end;
    blocks.locate(k, numel, &i, &begin, &end);
    momentum_slice<T, kMaximize, kL2Decay>(W[i], G[i], M[i], begin, end, step[i], beta, wd);
  }
}

template <typename T>
void momentum(int maximize, int l2, int64_t n, void* const* W, const void* const* G,
              void* const* M, const int64_t* numel, const double* step, double beta, double wd,
              int nt) {
  auto w = reinterpret_cast<T* const*>(W);
  auto g = reinterpret_cast<const T* const*>(G);
  auto m = reinterpret_cast<T* const*>(M);
  if (maximize && l2) momentum_tensors<T, true, true>(n, w, g, m, numel, step, beta, wd, nt);
  else if (maximize) momentum_tensors<T, true, false>(n, w, g, m, numel, step, beta, wd, nt);
  else if (l2) momentum_tensors<T, false, true>(n, w, g, m, numel, step, beta, wd, nt);
  else momentum_tensors<T, false, false>(n, w, g, m, numel, step, beta, wd, nt);
}

}  // namespace

// dtype codes shared with _fused.py: 0 float32, 1 float64, 2 bfloat16, 3 float16.
extern "C" {

int tmbp_abi_version() { return 1; }
int tmbp_has_half() { return TMBP_HAS_HALF; }

int tmbp_adam(int dtype, int maximize, int decay_mode, int amsgrad, int64_t n, void* const* W,
              const void* const* G, void* const* M, void* const* S, void* const* Smax,
              const int64_t* numel, const double* alpha_t, const double* eps_t, double beta1,
              double beta2, double weight_decay, double decay, int n_threads) {
  switch (dtype) {
    case 0: adam<float>(maximize, decay_mode, amsgrad, n, W, G, M, S, Smax, numel, alpha_t, eps_t, beta1, beta2, weight_decay, decay, n_threads); return 0;
    case 1: adam<double>(maximize, decay_mode, amsgrad, n, W, G, M, S, Smax, numel, alpha_t, eps_t, beta1, beta2, weight_decay, decay, n_threads); return 0;
    case 2: adam<bf16>(maximize, decay_mode, amsgrad, n, W, G, M, S, Smax, numel, alpha_t, eps_t, beta1, beta2, weight_decay, decay, n_threads); return 0;
#if TMBP_HAS_HALF
    case 3: adam<_Float16>(maximize, decay_mode, amsgrad, n, W, G, M, S, Smax, numel, alpha_t, eps_t, beta1, beta2, weight_decay, decay, n_threads); return 0;
#endif
    default: return -1;
  }
}

int tmbp_momentum(int dtype, int maximize, int l2, int64_t n, void* const* W,
                  const void* const* G, void* const* M, const int64_t* numel,
                  const double* step, double beta, double weight_decay, int n_threads) {
  switch (dtype) {
    case 0: momentum<float>(maximize, l2, n, W, G, M, numel, step, beta, weight_decay, n_threads); return 0;
    case 1: momentum<double>(maximize, l2, n, W, G, M, numel, step, beta, weight_decay, n_threads); return 0;
    case 2: momentum<bf16>(maximize, l2, n, W, G, M, numel, step, beta, weight_decay, n_threads); return 0;
#if TMBP_HAS_HALF
    case 3: momentum<_Float16>(maximize, l2, n, W, G, M, numel, step, beta, weight_decay, n_threads); return 0;
#endif
    default: return -1;
  }
}

}  // extern "C"
