// CPU kernels of the CNN's feature block, fused: conv1 + max-pool + ReLU in one pass over the
// window; conv2 + max-pool + ReLU, conv2 summed in registers and never stored on AVX-512 CPUs
// (oneDNN's convolution then a pool pass elsewhere; its backward is oneDNN's); one op forward
// (`features`) and one backward (`features_backward`), so a training step crosses from Python into
// C++ once for the block. Built on first use by hpsearch/models/cpu_kernels.py (torch's JIT
// extension loader); the model runs nn.Conv2d + MaxPool2d + ReLU where it cannot be built.
//
// Why hand-written: at the CNN's sizes (8-16 channels, 6 features, batch 64) torch's CPU
// MaxPool2d forward and backward each make a full pass over the activations plus a zero fill and
// int64 indices, and the one-channel first convolution is a tiny product that oneDNN runs far
// below matmul speed; with the per-layer overhead they were ~40 % of a training step
// (scripts/bench.py: this block is 1.3-1.4x the module path's epoch). Nothing in torch fuses them
// on CPU (torch.compile measured 0.5x here).
//
// Layouts: activations (B, C, T, F) in channels-last memory, i.e. rows (B, T, F * C).
// Semantics are exactly MaxPool2d((2, 1)) then ReLU: the earlier time step wins a tie, a NaN wins
// the max, ReLU passes NaN and cuts v <= 0; the gradient goes to the winning step where the ReLU
// passed and is +0 elsewhere. `code` keeps that decision per output: 0 even step, 1 odd, 2 cut.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HPS_AVX512 1
#define HPS_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#endif

// The generic loops are compiled for AVX-512, AVX2 and baseline x86-64, picked at load time by the
// CPU (gcc's function multi-versioning), so the cached build runs on any x86-64 machine at its
// width; the hottest rows also have AVX-512 intrinsics versions (HPS_AVX512, chosen at run time).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define HPS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HPS_CLONES
#endif

namespace {

constexpr uint8_t kEven = 0, kOdd = 1, kCut = 2;
// Windows per partial sum of the weight gradient: a fixed split, so that the sum's order, and its
// float result, is the same on any number of threads.
constexpr int64_t kChunk = 8;

// v if keep else +0, without a branch (so loops vectorize) and without v * 0 (NaN * 0 is NaN).
inline float keep_if(float v, bool keep) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  u &= 0u - static_cast<uint32_t>(keep);
  std::memcpy(&v, &u, sizeof u);
  return v;
}

// One output row of the pool: max of rows a (step 2t) and b (step 2t + 1), then ReLU.
// The loops below run in blocks of kBlock elements: a loop that mixes byte codes and floats
// otherwise vectorizes 64 elements at a time, more than a row of 48 holds, and runs scalar.
constexpr int64_t kBlock = 16;

inline int32_t pool_relu_one(const float va, const float vb, float* out) {
  // Without branches (the winner is data: a branch on it mispredicts half the time).
  const bool take_b = (vb > va) | (vb != vb);  // vb != vb: vb is NaN
  const float v = keep_if(vb, take_b) + keep_if(va, !take_b);  // one of the two terms is +0
  const bool cut = v <= 0.0f;
  *out = keep_if(v, !cut);
  return static_cast<int32_t>(take_b & !cut) | (static_cast<int32_t>(cut) << 1);  // kEven, kOdd or kCut
}

HPS_CLONES void pool_relu_row(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out,
                              uint8_t* __restrict__ code, int64_t n) {
  int64_t j = 0;
  for (; j + kBlock <= n; j += kBlock) {
    int32_t wide[kBlock];  // codes computed at the floats' width, then narrowed in one pass
    for (int64_t l = 0; l < kBlock; ++l) wide[l] = pool_relu_one(a[j + l], b[j + l], out + j + l);
    for (int64_t l = 0; l < kBlock; ++l) code[j + l] = static_cast<uint8_t>(wide[l]);
  }
  for (; j < n; ++j) code[j] = static_cast<uint8_t>(pool_relu_one(a[j], b[j], out + j));
}

// The pool's backward for one output row: the gradient to the winning step, +0 to the other.
HPS_CLONES void unpool_row(const float* __restrict__ s, const uint8_t* __restrict__ k, float* __restrict__ a,
                           float* __restrict__ o, int64_t n) {
  int64_t j = 0;
  for (; j + kBlock <= n; j += kBlock)
    for (int64_t l = 0; l < kBlock; ++l) {
      a[j + l] = keep_if(s[j + l], k[j + l] == kEven);
      o[j + l] = keep_if(s[j + l], k[j + l] == kOdd);
    }
  for (; j < n; ++j) {
    a[j] = keep_if(s[j], k[j] == kEven);
    o[j] = keep_if(s[j], k[j] == kOdd);
  }
}

// Written with AVX-512 intrinsics where the CPU has them: the generic loops above leave the
// vectorizer to pack float comparisons into byte codes, which it does poorly (measured at batch
// 64 with the conv1 rows below: conv1 forward 143 -> 101 us, backward 186 -> 90 us).
// HPSEARCH_CPU_KERNELS_GENERIC=1 picks the generic loops (tests compare both).
#ifdef HPS_AVX512
bool use_avx512() {
  static const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  const char* generic = std::getenv("HPSEARCH_CPU_KERNELS_GENERIC");
  return cpu && !(generic && *generic && *generic != '0');
}

HPS_TARGET_AVX512 inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

HPS_TARGET_AVX512 void pool_relu_row_avx512(const float* a, const float* b, float* out, uint8_t* code,
                                            int64_t n) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = lanes(n - j);
    const __m512 va = _mm512_maskz_loadu_ps(m, a + j), vb = _mm512_maskz_loadu_ps(m, b + j);
    const __mmask16 take_b = _mm512_cmp_ps_mask(vb, va, _CMP_GT_OQ) | _mm512_cmp_ps_mask(vb, vb, _CMP_UNORD_Q);
    const __m512 v = _mm512_mask_blend_ps(take_b, va, vb);
    const __mmask16 cut = _mm512_cmp_ps_mask(v, zero, _CMP_LE_OQ);  // false for NaN: ReLU passes it
    _mm512_mask_storeu_ps(out + j, m, _mm512_maskz_mov_ps(static_cast<__mmask16>(~cut), v));
    __m128i c = _mm_maskz_mov_epi8(take_b & static_cast<__mmask16>(~cut), _mm_set1_epi8(kOdd));
    c = _mm_mask_mov_epi8(c, cut, _mm_set1_epi8(kCut));
    _mm_mask_storeu_epi8(code + j, m, c);
  }
}

HPS_TARGET_AVX512 void unpool_row_avx512(const float* s, const uint8_t* k, float* a, float* o, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = lanes(n - j);
    const __m128i kc = _mm_maskz_loadu_epi8(m, k + j);
    const __mmask16 even = _mm_cmpeq_epi8_mask(kc, _mm_set1_epi8(kEven)) & m;
    const __mmask16 odd = _mm_cmpeq_epi8_mask(kc, _mm_set1_epi8(kOdd)) & m;
    const __m512 g = _mm512_maskz_loadu_ps(m, s + j);
    _mm512_mask_storeu_ps(a + j, m, _mm512_maskz_mov_ps(even, g));
    _mm512_mask_storeu_ps(o + j, m, _mm512_maskz_mov_ps(odd, g));
  }
}
#else
inline bool use_avx512() { return false; }
inline void pool_relu_row_avx512(const float*, const float*, float*, uint8_t*, int64_t) {}
inline void unpool_row_avx512(const float*, const uint8_t*, float*, float*, int64_t) {}
#endif

inline void pool_row(bool avx, const float* a, const float* b, float* out, uint8_t* code, int64_t n) {
  avx ? pool_relu_row_avx512(a, b, out, code, n) : pool_relu_row(a, b, out, code, n);
}

inline void unpool(bool avx, const float* s, const uint8_t* k, float* a, float* o, int64_t n) {
  avx ? unpool_row_avx512(s, k, a, o, n) : unpool_row(s, k, a, o, n);
}

void check_float_cpu(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, what, ": float32 CPU tensor expected");
}

// One window's pooled row t2, (F, C) channels-last, to and from its (C, T2, F) default layout.
inline void row_to_nchw(const float* row, float* win, int64_t C, int64_t T2, int64_t F, int64_t t2) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t f = 0; f < F; ++f) win[(c * T2 + t2) * F + f] = row[f * C + c];
}

inline void row_from_nchw(const float* win, float* row, int64_t C, int64_t T2, int64_t F, int64_t t2) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t f = 0; f < F; ++f) row[f * C + c] = win[(c * T2 + t2) * F + f];
}

// ------------------------------------------------------------------------- pool + ReLU alone

// pool_relu writes its output in the default (B, C, T/2, F) layout, not channels-last: the head
// flattens it in (C, T/2, F) order, the reference's, so its first layer uses its weight as it is.
std::tuple<at::Tensor, at::Tensor> pool_relu(const at::Tensor& input) {
  const bool avx = use_avx512();
  check_float_cpu(input, "pool_relu");
  TORCH_CHECK(input.dim() == 4, "pool_relu: (B, C, T, F) expected");
  const auto x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), C = x.size(1), T = x.size(2), F = x.size(3), T2 = T / 2, R = F * C;
  auto out = at::empty({B, C, T2, F}, x.options());
  auto code = at::empty({B, T2, R}, x.options().dtype(at::kByte));
  const float* xp = x.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  uint8_t* cp = code.mutable_data_ptr<uint8_t>();
  at::parallel_for(0, B * T2, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> row(R);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / T2, t2 = r % T2;
      const float* a = xp + (b * T + 2 * t2) * R;
      pool_row(avx, a, a + R, row.data(), cp + r * R, R);
      row_to_nchw(row.data(), op + b * C * T2 * F, C, T2, F, t2);
    }
  });
  return {out, code};
}

// The gradient of pool_relu's input (channels-last) from that of its output (any layout).
at::Tensor pool_relu_backward(const at::Tensor& grad_output, const at::Tensor& code, int64_t T) {
  const bool avx = use_avx512();
  check_float_cpu(grad_output, "pool_relu_backward");
  // The head hands back a slice of a wider gradient (its ticker columns cut off): read it with its
  // batch stride rather than copy it, when each window's part is contiguous.
  const bool rows_ok = grad_output.dim() == 4 && grad_output.stride(3) == 1 &&
                       grad_output.stride(2) == grad_output.size(3) &&
                       grad_output.stride(1) == grad_output.size(2) * grad_output.size(3);
  const auto g = rows_ok ? grad_output : grad_output.contiguous();
  const int64_t B = g.size(0), C = g.size(1), T2 = g.size(2), F = g.size(3), R = F * C, bs = g.stride(0);
  TORCH_CHECK(T / 2 == T2 && code.numel() == B * T2 * R, "pool_relu_backward: shapes do not match");
  auto grad = at::empty({B, C, T, F}, g.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* gp = g.const_data_ptr<float>();
  const uint8_t* cp = code.const_data_ptr<uint8_t>();
  float* ip = grad.mutable_data_ptr<float>();
  at::parallel_for(0, B * T2, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> row(R);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / T2, t2 = r % T2;
      row_from_nchw(gp + b * bs, row.data(), C, T2, F, t2);
      float* a = ip + (b * T + 2 * t2) * R;
      unpool(avx, row.data(), cp + r * R, a, a + R, R);
    }
  });
  if (T % 2) {  // the last step of an odd T is not pooled: no gradient
    for (int64_t b = 0; b < B; ++b) std::fill_n(ip + (b * T + T - 1) * R, R, 0.0f);
  }
  return grad;
}

// ------------------------------------------------- one-channel conv (k x k, zero padding) + pool + ReLU
//
// As in OneChannelConv2d, the conv of one time step is a product of the k input rows around it,
// K = k * F values, with a banded (K, F * C) matrix band[i][g][f * C + c] = weight[c][0][i][g - f +
// k/2] (0 where that tap does not exist): output row = bias + sum over q < K of in[q] * band[q].
// The sum runs over all K terms, the band's zeros included: exact zeros leave a sum unchanged, and
// a fixed-length loop with its 16 accumulators in one vector register beats skipping them. The
// products are the convolution's, summed in another order: results agree to float rounding.

constexpr int64_t kLanes = 16;  // one AVX-512 register of floats

// Rows are padded to two registers' width: band_rows works on two at a time.
inline int64_t padded(int64_t n) { return (n + 2 * kLanes - 1) / (2 * kLanes) * (2 * kLanes); }

// Band (K, Rp) and per-row bias (Rp) from weight (C, 1, k, k) and bias (C); zeros in the padding.
void build_band(const float* w, const float* bias, int64_t C, int64_t k, int64_t F, float* band, float* bias_row) {
  const int64_t p = k / 2, Rp = padded(F * C);
  std::fill_n(band, k * F * Rp, 0.0f);
  std::fill_n(bias_row, Rp, 0.0f);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t g = 0; g < F; ++g)
      for (int64_t f = std::max<int64_t>(0, g - p); f < std::min<int64_t>(F, g + p + 1); ++f)
        for (int64_t c = 0; c < C; ++c) band[(i * F + g) * Rp + f * C + c] = w[(c * k + i) * k + (g - f + p)];
  for (int64_t f = 0; f < F; ++f)
    for (int64_t c = 0; c < C; ++c) bias_row[f * C + c] = bias[c];
}

// The K inputs under time step t of window xb (T, F): rows t - k/2 .. t + k/2, which are
// contiguous in xb; copied into buf with zero rows only at the window's edges.
inline const float* inputs_at(const float* xb, int64_t T, int64_t F, int64_t k, int64_t t, float* buf) {
  const int64_t p = k / 2;
  if (t - p >= 0 && t + p < T) return xb + (t - p) * F;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t tt = t + i - p;
    if (tt < 0 || tt >= T)
      std::fill_n(buf + i * F, F, 0.0f);
    else
      std::copy_n(xb + tt * F, F, buf + i * F);
  }
  return buf;
}

// The pre-activations of the even and the odd step of a pooled pair, (Rp) each:
// bias_row + sum over q < K of in[q] * band[q], kLanes outputs at a time. The two steps (and two
// lane blocks) run side by side: four independent sums hide the latency of each multiply-add.
HPS_CLONES void band_rows(const float* __restrict__ in_e, const float* __restrict__ in_o,
                          const float* __restrict__ band, const float* __restrict__ bias_row,
                          float* __restrict__ pre_e, float* __restrict__ pre_o, int64_t K, int64_t Rp) {
  for (int64_t j0 = 0; j0 < Rp; j0 += 2 * kLanes) {
    float e[2 * kLanes], o[2 * kLanes];
    for (int64_t l = 0; l < 2 * kLanes; ++l) e[l] = o[l] = bias_row[j0 + l];
    for (int64_t q = 0; q < K; ++q) {
      const float ve = in_e[q], vo = in_o[q];
      const float* __restrict__ b = band + q * Rp + j0;
      for (int64_t l = 0; l < 2 * kLanes; ++l) {
        e[l] += ve * b[l];
        o[l] += vo * b[l];
      }
    }
    for (int64_t l = 0; l < 2 * kLanes; ++l) {
      pre_e[j0 + l] = e[l];
      pre_o[j0 + l] = o[l];
    }
  }
}

// gband (K, Rp) += outer(in_e, g_e) + outer(in_o, g_o): the band's gradient from a pooled pair.
HPS_CLONES void band_grad_rows(const float* __restrict__ in_e, const float* __restrict__ in_o,
                               const float* __restrict__ g_e, const float* __restrict__ g_o,
                               float* __restrict__ gband, int64_t K, int64_t Rp) {
  for (int64_t q = 0; q < K; ++q) {
    const float ve = in_e[q], vo = in_o[q];
    float* __restrict__ g = gband + q * Rp;
    for (int64_t j = 0; j < Rp; ++j) g[j] += ve * g_e[j] + vo * g_o[j];
  }
}

#ifdef HPS_AVX512
// band_rows for NB register blocks of 16 outputs at j0: 2 * NB independent sums.
template <int NB>
HPS_TARGET_AVX512 inline void band_block(const float* in_e, const float* in_o, const float* band,
                                         const float* bias_row, float* pre_e, float* pre_o, int64_t K, int64_t Rp,
                                         int64_t j0) {
  __m512 e[NB], o[NB];
  for (int l = 0; l < NB; ++l) e[l] = o[l] = _mm512_loadu_ps(bias_row + j0 + 16 * l);
  for (int64_t q = 0; q < K; ++q) {
    const __m512 ve = _mm512_set1_ps(in_e[q]), vo = _mm512_set1_ps(in_o[q]);
    const float* b = band + q * Rp + j0;
    for (int l = 0; l < NB; ++l) {
      const __m512 w = _mm512_loadu_ps(b + 16 * l);
      e[l] = _mm512_fmadd_ps(ve, w, e[l]);
      o[l] = _mm512_fmadd_ps(vo, w, o[l]);
    }
  }
  for (int l = 0; l < NB; ++l) {
    _mm512_storeu_ps(pre_e + j0 + 16 * l, e[l]);
    _mm512_storeu_ps(pre_o + j0 + 16 * l, o[l]);
  }
}

// As band_rows, over the R outputs only (up to 4 registers at a time), not the padding to Rp.
HPS_TARGET_AVX512 void band_rows_avx512(const float* in_e, const float* in_o, const float* band,
                                        const float* bias_row, float* pre_e, float* pre_o, int64_t K, int64_t R,
                                        int64_t Rp) {
  for (int64_t j0 = 0; j0 < R; j0 += 64) {
    switch (std::min<int64_t>(4, (R - j0 + 15) / 16)) {
      case 4: band_block<4>(in_e, in_o, band, bias_row, pre_e, pre_o, K, Rp, j0); break;
      case 3: band_block<3>(in_e, in_o, band, bias_row, pre_e, pre_o, K, Rp, j0); break;
      case 2: band_block<2>(in_e, in_o, band, bias_row, pre_e, pre_o, K, Rp, j0); break;
      default: band_block<1>(in_e, in_o, band, bias_row, pre_e, pre_o, K, Rp, j0); break;
    }
  }
}

template <int NB>
HPS_TARGET_AVX512 inline void band_grad_block(const float* in_e, const float* in_o, const float* g_e,
                                              const float* g_o, float* gband, int64_t K, int64_t Rp, int64_t j0) {
  __m512 ge[NB], go[NB];
  for (int l = 0; l < NB; ++l) {
    ge[l] = _mm512_loadu_ps(g_e + j0 + 16 * l);
    go[l] = _mm512_loadu_ps(g_o + j0 + 16 * l);
  }
  for (int64_t q = 0; q < K; ++q) {
    const __m512 ve = _mm512_set1_ps(in_e[q]), vo = _mm512_set1_ps(in_o[q]);
    float* g = gband + q * Rp + j0;
    for (int l = 0; l < NB; ++l) {
      __m512 acc = _mm512_loadu_ps(g + 16 * l);
      acc = _mm512_fmadd_ps(ve, ge[l], acc);
      _mm512_storeu_ps(g + 16 * l, _mm512_fmadd_ps(vo, go[l], acc));
    }
  }
}

HPS_TARGET_AVX512 void band_grad_rows_avx512(const float* in_e, const float* in_o, const float* g_e,
                                             const float* g_o, float* gband, int64_t K, int64_t R, int64_t Rp) {
  for (int64_t j0 = 0; j0 < R; j0 += 64) {
    switch (std::min<int64_t>(4, (R - j0 + 15) / 16)) {
      case 4: band_grad_block<4>(in_e, in_o, g_e, g_o, gband, K, Rp, j0); break;
      case 3: band_grad_block<3>(in_e, in_o, g_e, g_o, gband, K, Rp, j0); break;
      case 2: band_grad_block<2>(in_e, in_o, g_e, g_o, gband, K, Rp, j0); break;
      default: band_grad_block<1>(in_e, in_o, g_e, g_o, gband, K, Rp, j0); break;
    }
  }
}
#else
inline void band_rows_avx512(const float*, const float*, const float*, const float*, float*, float*, int64_t,
                             int64_t, int64_t) {}
inline void band_grad_rows_avx512(const float*, const float*, const float*, const float*, float*, int64_t,
                                  int64_t, int64_t) {}
#endif

inline void conv1_rows(bool avx, const float* in_e, const float* in_o, const float* band, const float* bias_row,
                       float* pre_e, float* pre_o, int64_t K, int64_t R, int64_t Rp) {
  avx ? band_rows_avx512(in_e, in_o, band, bias_row, pre_e, pre_o, K, R, Rp)
      : band_rows(in_e, in_o, band, bias_row, pre_e, pre_o, K, Rp);
}

inline void conv1_grad_rows(bool avx, const float* in_e, const float* in_o, const float* g_e, const float* g_o,
                            float* gband, int64_t K, int64_t R, int64_t Rp) {
  avx ? band_grad_rows_avx512(in_e, in_o, g_e, g_o, gband, K, R, Rp)
      : band_grad_rows(in_e, in_o, g_e, g_o, gband, K, Rp);
}

// x (B, T, F); weight (C, 1, k, k); bias (C). Returns relu(maxpool_(2,1)(conv(x))) as (B, C, T/2, F)
// channels-last, and the pool's code.
std::tuple<at::Tensor, at::Tensor> conv1_pool_relu(const at::Tensor& input, const at::Tensor& weight,
                                                   const at::Tensor& bias) {
  const bool avx = use_avx512();
  check_float_cpu(input, "conv1_pool_relu");
  check_float_cpu(weight, "conv1_pool_relu weight");
  check_float_cpu(bias, "conv1_pool_relu bias");
  TORCH_CHECK(input.dim() == 3 && weight.dim() == 4 && weight.size(1) == 1 && weight.size(2) == weight.size(3) &&
                  weight.size(2) % 2 == 1 && bias.numel() == weight.size(0),
              "conv1_pool_relu: x (B, T, F), weight (C, 1, k, k) with odd k, bias (C) expected");
  const auto x = input.contiguous();
  const auto w = weight.contiguous();
  const auto bc = bias.contiguous();
  const int64_t B = x.size(0), T = x.size(1), F = x.size(2), C = w.size(0), k = w.size(2);
  const int64_t T2 = T / 2, R = F * C, Rp = padded(R), K = k * F;
  std::vector<float> band(K * Rp), bias_row(Rp);
  build_band(w.const_data_ptr<float>(), bc.const_data_ptr<float>(), C, k, F, band.data(), bias_row.data());
  auto out = at::empty({B, C, T2, F}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto code = at::empty({B, T2, R}, x.options().dtype(at::kByte));
  const float* xp = x.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  uint8_t* cp = code.mutable_data_ptr<uint8_t>();
  at::parallel_for(0, B * T2, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> in(2 * K), pre(2 * Rp);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / T2, t2 = r % T2;
      const float* in_e = inputs_at(xp + b * T * F, T, F, k, 2 * t2, in.data());  // the even step's inputs
      const float* in_o = inputs_at(xp + b * T * F, T, F, k, 2 * t2 + 1, in.data() + K);  // the odd step's
      conv1_rows(avx, in_e, in_o, band.data(), bias_row.data(), pre.data(), pre.data() + Rp, K, R, Rp);
      pool_row(avx, pre.data(), pre.data() + Rp, op + r * R, cp + r * R, R);
    }
  });
  return {out, code};
}

// Gradients of conv1_pool_relu's weight (C, 1, k, k) and bias (C); x needs none (it is data).
std::tuple<at::Tensor, at::Tensor> conv1_pool_relu_backward(const at::Tensor& grad_output, const at::Tensor& code,
                                                            const at::Tensor& input, int64_t k) {
  const bool avx = use_avx512();
  check_float_cpu(grad_output, "conv1_pool_relu_backward");
  const auto g = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  const auto x = input.contiguous();
  const int64_t B = x.size(0), T = x.size(1), F = x.size(2), C = g.size(1), T2 = g.size(2), R = F * C;
  const int64_t p = k / 2, K = k * F, Rp = padded(R), N = (K + 1) * Rp;  // per chunk: band (K, Rp), bias row
  TORCH_CHECK(T / 2 == T2 && g.size(0) == B && g.size(3) == F && code.numel() == B * T2 * R,
              "conv1_pool_relu_backward: shapes do not match");
  const int64_t n_chunks = (B + kChunk - 1) / kChunk;
  std::vector<float> partial(n_chunks * N, 0.0f);
  const float* gp = g.const_data_ptr<float>();
  const uint8_t* cp = code.const_data_ptr<uint8_t>();
  const float* xp = x.const_data_ptr<float>();
  at::parallel_for(0, n_chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> in(2 * K), grow(2 * Rp, 0.0f);  // grow: the even and odd steps' pre-activation gradients
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      float* gband = partial.data() + chunk * N;
      float* gbias = gband + K * Rp;
      for (int64_t b = chunk * kChunk; b < std::min(B, (chunk + 1) * kChunk); ++b) {
        for (int64_t t2 = 0; t2 < T2; ++t2) {
          const int64_t r = b * T2 + t2;
          unpool(avx, gp + r * R, cp + r * R, grow.data(), grow.data() + Rp, R);
          for (int64_t j = 0; j < R; ++j) gbias[j] += grow[j] + grow[Rp + j];
          const float* in_e = inputs_at(xp + b * T * F, T, F, k, 2 * t2, in.data());
          const float* in_o = inputs_at(xp + b * T * F, T, F, k, 2 * t2 + 1, in.data() + K);
          conv1_grad_rows(avx, in_e, in_o, grow.data(), grow.data() + Rp, gband, K, R, Rp);
        }
      }
    }
  });
  for (int64_t chunk = 1; chunk < n_chunks; ++chunk)  // chunks in order: a fixed summation order
    for (int64_t j = 0; j < N; ++j) partial[j] += partial[chunk * N + j];
  // Back from the band to the weight: tap (c, i, j) sits at band[i][f + j - p][f * C + c] for each f.
  auto grad_weight = at::zeros({C, 1, k, k}, g.options());
  auto grad_bias = at::zeros({C}, g.options());
  float* gw = grad_weight.mutable_data_ptr<float>();
  float* gb = grad_bias.mutable_data_ptr<float>();
  for (int64_t i = 0; i < k; ++i)
    for (int64_t gg = 0; gg < F; ++gg)
      for (int64_t f = std::max<int64_t>(0, gg - p); f < std::min<int64_t>(F, gg + p + 1); ++f)
        for (int64_t c = 0; c < C; ++c) gw[(c * k + i) * k + (gg - f + p)] += partial[(i * F + gg) * Rp + f * C + c];
  for (int64_t f = 0; f < F; ++f)
    for (int64_t c = 0; c < C; ++c) gb[c] += partial[K * Rp + f * C + c];
  return {grad_weight, grad_bias};
}

// ------------------------------------------------------- conv2 + pool + ReLU (AVX-512 only)
//
// A direct k x k convolution, C1 -> C2 channels, fused with the pool and ReLU that follow it, so
// that its output is never written: each pair of output rows is summed in registers (16 output
// channels per register, up to 4 pixels x 2 rows side by side), pooled, and stored as pool_relu
// stores it. Where the CPU lacks AVX-512, features() uses oneDNN's convolution and pool_relu.
#ifdef HPS_AVX512
template <int FB>
HPS_TARGET_AVX512 inline void conv2_block(const float* pad, int64_t Fp, int64_t C1, const float* wt, int64_t C2p,
                                          int64_t k, int64_t t, int64_t f0, int64_t cb, __m512 bias,
                                          float* pre_e, float* pre_o, int64_t C2, __mmask16 m) {
  __m512 acc[2][FB];
  for (int r = 0; r < 2; ++r)
    for (int u = 0; u < FB; ++u) acc[r][u] = bias;
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const float* w = wt + (i * k + j) * C1 * C2p + cb * 16;
      const float* x0 = pad + ((t + i) * Fp + f0 + j) * C1;  // row t + i of the padded input
      const float* x1 = x0 + Fp * C1;  // row t + 1 + i
      for (int64_t ci = 0; ci < C1; ++ci) {
        const __m512 wv = _mm512_loadu_ps(w + ci * C2p);
        for (int u = 0; u < FB; ++u) {
          acc[0][u] = _mm512_fmadd_ps(_mm512_set1_ps(x0[u * C1 + ci]), wv, acc[0][u]);
          acc[1][u] = _mm512_fmadd_ps(_mm512_set1_ps(x1[u * C1 + ci]), wv, acc[1][u]);
        }
      }
    }
  for (int u = 0; u < FB; ++u) {
    _mm512_mask_storeu_ps(pre_e + (f0 + u) * C2 + cb * 16, m, acc[0][u]);
    _mm512_mask_storeu_ps(pre_o + (f0 + u) * C2 + cb * 16, m, acc[1][u]);
  }
}

// One window: xb (T, F, C1) -> out (C2, T/2, F) and code (T/2, F * C2).
HPS_TARGET_AVX512 void conv2_window(const float* xb, const float* wt, const float* bias, float* pad, float* pre,
                                    float* row, float* out, uint8_t* code, int64_t T, int64_t F, int64_t C1,
                                    int64_t C2, int64_t k) {
  const int64_t p = k / 2, T2 = T / 2, R = F * C2, C2p = (C2 + 15) / 16 * 16, Fp = F + 2 * p;
  for (int64_t t = 0; t < T; ++t)  // the window's rows into the padded buffer (borders stay 0)
    std::copy_n(xb + t * F * C1, F * C1, pad + ((t + p) * Fp + p) * C1);
  for (int64_t t2 = 0; t2 < T2; ++t2) {
    for (int64_t cb = 0; cb * 16 < C2; ++cb) {
      const __mmask16 m = lanes(C2 - cb * 16);
      const __m512 bv = _mm512_loadu_ps(bias + cb * 16);
      for (int64_t f0 = 0; f0 < F; f0 += 4) {
        switch (std::min<int64_t>(4, F - f0)) {
          case 4: conv2_block<4>(pad, Fp, C1, wt, C2p, k, 2 * t2, f0, cb, bv, pre, pre + R, C2, m); break;
          case 3: conv2_block<3>(pad, Fp, C1, wt, C2p, k, 2 * t2, f0, cb, bv, pre, pre + R, C2, m); break;
          case 2: conv2_block<2>(pad, Fp, C1, wt, C2p, k, 2 * t2, f0, cb, bv, pre, pre + R, C2, m); break;
          default: conv2_block<1>(pad, Fp, C1, wt, C2p, k, 2 * t2, f0, cb, bv, pre, pre + R, C2, m); break;
        }
      }
    }
    pool_relu_row_avx512(pre, pre + R, row, code + t2 * R, R);
    row_to_nchw(row, out, C2, T2, F, t2);
  }
}

// a1 (B, C1, T, F) channels-last; w2 (C2, C1, k, k); b2 (C2). Returns what pool_relu(conv2d(a1))
// returns: (B, C2, T/2, F) in the default layout, and the code (B, T/2, F * C2).
std::tuple<at::Tensor, at::Tensor> conv2_pool_relu_avx512(const at::Tensor& a1, const at::Tensor& w2,
                                                          const at::Tensor& b2) {
  const auto x = a1.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), C1 = x.size(1), T = x.size(2), F = x.size(3);
  const int64_t C2 = w2.size(0), k = w2.size(2), p = k / 2, T2 = T / 2, R = F * C2;
  const int64_t C2p = (C2 + 15) / 16 * 16, Tp = T + 2 * p, Fp = F + 2 * p;
  // Weight as (k, k, C1, C2p), zeros in the padded channels; bias as (C2p).
  std::vector<float> wt(k * k * C1 * C2p, 0.0f), bias(C2p, 0.0f);
  const auto wc = w2.contiguous();
  const float* wp = wc.const_data_ptr<float>();
  for (int64_t co = 0; co < C2; ++co)
    for (int64_t ci = 0; ci < C1; ++ci)
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j) wt[((i * k + j) * C1 + ci) * C2p + co] = wp[((co * C1 + ci) * k + i) * k + j];
  const auto bc = b2.contiguous();
  std::copy_n(bc.const_data_ptr<float>(), C2, bias.data());
  auto out = at::empty({B, C2, T2, F}, x.options());
  auto code = at::empty({B, T2, R}, x.options().dtype(at::kByte));
  const float* xp = x.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  uint8_t* cp = code.mutable_data_ptr<uint8_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> pad(Tp * Fp * C1, 0.0f), pre(2 * R), row(R);  // borders stay 0
    for (int64_t b = begin; b < end; ++b)
      conv2_window(xp + b * T * F * C1, wt.data(), bias.data(), pad.data(), pre.data(), row.data(),
                   op + b * C2 * T2 * F, cp + b * T2 * R, T, F, C1, C2, k);
  });
  return {out, code};
}
#endif

// ------------------------------------------------------------------ the whole feature block
//
// conv1 + pool + ReLU, conv2 + pool + ReLU (see conv2_pool_relu_avx512; oneDNN's convolution on
// channels-last where the CPU lacks AVX-512, and for conv2's backward everywhere), as one op each
// way, so that a training step crosses from Python into C++ once for the block, not once per
// layer. Returns the block's output (B, C2, T/4, F) in the default layout, and what the backward
// needs: conv2's input and the two pools' codes.

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> features(const at::Tensor& x, const at::Tensor& w1,
                                                                    const at::Tensor& b1, const at::Tensor& w2,
                                                                    const at::Tensor& b2) {
  auto [a1, code1] = conv1_pool_relu(x, w1, b1);
#ifdef HPS_AVX512
  if (use_avx512()) {
    auto [out, code2] = conv2_pool_relu_avx512(a1, w2, b2);
    return {out, a1, code1, code2};
  }
#endif
  const int64_t p = w2.size(2) / 2;
  auto z2 = at::convolution(a1, w2, b2, {1, 1}, {p, p}, {1, 1}, false, {0, 0}, 1);
  auto [out, code2] = pool_relu(z2);
  return {out, a1, code1, code2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> features_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& a1, const at::Tensor& code1,
    const at::Tensor& code2, const at::Tensor& w1, const at::Tensor& w2) {
  const auto gz2 = pool_relu_backward(grad, code2, a1.size(2));
  const int64_t p = w2.size(2) / 2;
  auto [ga1, gw2, gb2] = at::convolution_backward(gz2, a1, w2, at::IntArrayRef{w2.size(0)}, {1, 1}, {p, p},
                                                  {1, 1}, false, {0, 0}, 1, {true, true, true});
  auto [gw1, gb1] = conv1_pool_relu_backward(ga1, code1, x, w1.size(2));
  return {gw1, gb1, gw2, gb2};
}

}  // namespace

TORCH_LIBRARY(hpsearch, m) {
  m.def("features(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2) -> (Tensor, Tensor, Tensor, Tensor)",
        features);
  m.def(
      "features_backward(Tensor grad, Tensor x, Tensor a1, Tensor code1, Tensor code2, Tensor w1, Tensor w2) -> "
      "(Tensor, Tensor, Tensor, Tensor)",
      features_backward);
  m.def("pool_relu(Tensor x) -> (Tensor, Tensor)", pool_relu);
  m.def("pool_relu_backward(Tensor grad, Tensor code, int T) -> Tensor", pool_relu_backward);
  m.def("conv1_pool_relu(Tensor x, Tensor weight, Tensor bias) -> (Tensor, Tensor)", conv1_pool_relu);
  m.def("conv1_pool_relu_backward(Tensor grad, Tensor code, Tensor x, int k) -> (Tensor, Tensor)",
        conv1_pool_relu_backward);
}
