// CPU kernels of the CNN's feature block, fused: conv1 + max-pool + ReLU in one pass over the
// window; conv2 + max-pool + ReLU as a direct convolution summed in registers and never stored,
// and its backward likewise (8-float vectors on any CPU, 16-float ones on AVX-512 CPUs); one op
// forward (`features`) and one backward (`features_backward`), so a
// training step crosses from Python into C++ once for the block. Built on first use by
// hpsearch/models/cpu_kernels.py (torch's JIT extension loader); the model runs nn.Conv2d +
// MaxPool2d + ReLU where it cannot be built.
//
// Why hand-written: at the CNN's sizes (8-16 channels, 6 features, batch 64) torch's CPU
// MaxPool2d forward and backward each make a full pass over the activations plus a zero fill and
// int64 indices, the one-channel first convolution is a tiny product that oneDNN runs far below
// matmul speed, and oneDNN's 8 -> 16 channel convolution runs at about half of it; with the
// per-layer overhead they were most of a training step. Nothing in torch fuses them on CPU
// (torch.compile measured 0.4-0.6x here).
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

// The generic code is compiled for each ISA by HPS_CLONES (cpu_simd.h); the hottest rows also
// have AVX-512 intrinsics versions (HPS_AVX512, chosen at run time).
#include "cpu_simd.h"

namespace {

constexpr uint8_t kEven = 0, kOdd = 1, kCut = 2;
// Windows per partial sum of the weight gradient: a fixed split, so that the sum's order, and its
// float result, is the same on any number of threads.
constexpr int64_t kChunk = 8;

// The generic code's vectors: vf8 (cpu_simd.h), 8 floats, one AVX2 register (a baseline x86-64 or
// an ARM build splits it in two), compiled by HPS_CLONES at each ISA's width.
typedef uint8_t vu32 __attribute__((vector_size(32), aligned(1)));

constexpr int64_t kVec = 8;

HPS_INLINE vf8 load8(const float* p) {
  vf8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
HPS_INLINE void store8(float* p, vf8 v) { std::memcpy(p, &v, sizeof v); }
HPS_INLINE vf8 keep8(vf8 v, vi8 keep) { return (vf8)((vi8)v & keep); }  // v where keep, else +0

// The low byte of each lane to code[0 .. 8), and back (a vpshufb and a vpmovzxbd; __builtin_convertvector goes
// lane by lane).
typedef int64_t vl4 __attribute__((vector_size(32)));
// code[0 .. 8) as the low bytes of a vector (through a 64-bit lane: a vector filled through
// memory from an 8-byte copy stalls on the store's forwarding, measured 36 % of conv1's backward).
HPS_INLINE vu32 code_bytes(const uint8_t* code) {
  int64_t u;
  std::memcpy(&u, code, sizeof u);
  return (vu32)vl4{u, 0, 0, 0};
}
#if defined(__clang__)
HPS_INLINE void store_codes(uint8_t* code, vi8 c) {
  const vu32 b = (vu32)c;
  const vu32 low = __builtin_shufflevector(b, b, 0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                           0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  std::memcpy(code, &low, 8);
}
HPS_INLINE vi8 load_codes(const uint8_t* code) {
  const vu32 b = code_bytes(code);
  return (vi8)__builtin_shufflevector(b, vu32{}, 0, 32, 32, 32, 1, 32, 32, 32, 2, 32, 32, 32, 3, 32, 32, 32, 4,
                                      32, 32, 32, 5, 32, 32, 32, 6, 32, 32, 32, 7, 32, 32, 32);
}
#else
HPS_INLINE void store_codes(uint8_t* code, vi8 c) {
  const vu32 low = __builtin_shuffle((vu32)c, vu32{0, 4, 8, 12, 16, 20, 24, 28});
  std::memcpy(code, &low, 8);
}
HPS_INLINE vi8 load_codes(const uint8_t* code) {
  const vu32 b = code_bytes(code);
  constexpr uint8_t z = 32;  // a byte of the second operand: 0
  return (vi8)__builtin_shuffle(b, vu32{}, vu32{0, z, z, z, 1, z, z, z, 2, z, z, z, 3, z, z, z,
                                                 4, z, z, z, 5, z, z, z, 6, z, z, z, 7, z, z, z});
}
#endif

// Two-operand shuffle of 8-float vectors by constant lane indices (0-7 the first, 8-15 the second).
#if defined(__clang__)
#define HPS_SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define HPS_SHUF(a, b, ...) __builtin_shuffle(a, b, vi8{__VA_ARGS__})
#endif

// The direct convolutions below are written once for a vector of L floats (Lanes, cpu_simd.h):
// Lanes<8> (vf8, any CPU) and, where the CPU has AVX-512, Lanes<16>: one zmm register, only ever
// inlined into HPS_TARGET_AVX512 functions here, so that no other CPU runs it.
constexpr int64_t kMaxLanes = 16;

// The 8 x 8 block at src (row stride ss) transposed to dst (row stride ds): 24 shuffles, which
// gcc emits as AVX2's unpack / shuffle / 128-bit permute.
HPS_INLINE void transpose8x8(const float* src, int64_t ss, float* dst, int64_t ds) {
  vf8 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = load8(src + i * ss);
  for (int i = 0; i < 8; i += 2) {
    t[i] = HPS_SHUF(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = HPS_SHUF(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int h = 0; h < 2; ++h) {
      u[i + 2 * h] = HPS_SHUF(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * h + 1] = HPS_SHUF(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int i = 0; i < 4; ++i) {
    store8(dst + i * ds, HPS_SHUF(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11));
    store8(dst + (i + 4) * ds, HPS_SHUF(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15));
  }
}

// dst (cols, rows) = src (rows, cols) transposed, both contiguous; the edges element by element.
HPS_INLINE void transpose(const float* src, int64_t rows, int64_t cols, float* dst) {
  int64_t r0 = 0;
  for (; r0 + kVec <= rows; r0 += kVec) {
    int64_t c0 = 0;
    for (; c0 + kVec <= cols; c0 += kVec) transpose8x8(src + r0 * cols + c0, cols, dst + c0 * rows + r0, rows);
    for (; c0 < cols; ++c0)
      for (int64_t r = r0; r < r0 + kVec; ++r) dst[c0 * rows + r] = src[r * cols + c0];
  }
  for (; r0 < rows; ++r0)
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r0] = src[r0 * cols + c];
}

// v if keep else +0, without a branch (so loops vectorize) and without v * 0 (NaN * 0 is NaN).
inline float keep_if(float v, bool keep) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  u &= 0u - static_cast<uint32_t>(keep);
  std::memcpy(&v, &u, sizeof u);
  return v;
}

// One output row of the pool: max of rows a (step 2t) and b (step 2t + 1), then ReLU; 8 at a time
// in vectors (a loop left to the vectorizer packs the comparisons into byte codes poorly), the
// tail one by one. Without branches: the winner is data, and a branch on it mispredicts half the time.
inline int32_t pool_relu_one(const float va, const float vb, float* out) {
  const bool take_b = (vb > va) | (vb != vb);  // vb != vb: vb is NaN
  const float v = keep_if(vb, take_b) + keep_if(va, !take_b);  // one of the two terms is +0
  const bool cut = v <= 0.0f;
  *out = keep_if(v, !cut);
  return static_cast<int32_t>(take_b & !cut) | (static_cast<int32_t>(cut) << 1);  // kEven, kOdd or kCut
}

HPS_CLONES void pool_relu_row(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out,
                              uint8_t* __restrict__ code, int64_t n) {
  int64_t j = 0;
  for (; j + kVec <= n; j += kVec) {
    const vf8 va = load8(a + j), vb = load8(b + j);
    const vi8 take_b = (vb > va) | (vb != vb);
    const vf8 v = keep8(vb, take_b) + keep8(va, ~take_b);  // as pool_relu_one: one term is +0
    const vi8 cut = v <= vf8{};  // false for NaN: ReLU passes it
    store8(out + j, keep8(v, ~cut));
    store_codes(code + j, (take_b & ~cut & kOdd) | (cut & kCut));
  }
  for (; j < n; ++j) code[j] = static_cast<uint8_t>(pool_relu_one(a[j], b[j], out + j));
}

// The pool's backward for one output row: the gradient to the winning step, +0 to the other.
HPS_CLONES void unpool_row(const float* __restrict__ s, const uint8_t* __restrict__ k, float* __restrict__ a,
                           float* __restrict__ o, int64_t n) {
  int64_t j = 0;
  for (; j + kVec <= n; j += kVec) {
    const vi8 ki = load_codes(k + j);
    const vf8 g = load8(s + j);
    store8(a + j, keep8(g, ki == kEven));
    store8(o + j, keep8(g, ki == kOdd));
  }
  for (; j < n; ++j) {
    a[j] = keep_if(s[j], k[j] == kEven);
    o[j] = keep_if(s[j], k[j] == kOdd);
  }
}

// The pool rows of pool_relu (the pass after oneDNN's conv2) with AVX-512 intrinsics where the
// CPU has them: 16 floats, and mask registers for the codes and the tails (written when conv1's
// band used them too, and measured then at batch 64 against the generic loops as they were,
// scalar code left to the vectorizer: conv1 forward 143 -> 101 us, backward 186 -> 90 us).
// HPSEARCH_CPU_KERNELS_GENERIC=1 picks the generic code (tests compare both).
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

// conv2's input a1 (B, C1, T, F), weight (C2, C1, k, k) with odd k and bias (C2): float32 CPU
// tensors whose shapes agree (the kernels index by them).
void check_conv2(const at::Tensor& a1, const at::Tensor& w2, const at::Tensor* b2, const char* what) {
  check_float_cpu(a1, what);
  check_float_cpu(w2, what);
  TORCH_CHECK(a1.dim() == 4 && w2.dim() == 4 && w2.size(1) == a1.size(1) && w2.size(2) == w2.size(3) &&
                  w2.size(2) % 2 == 1,
              what, ": input (B, C1, T, F) and weight (C2, C1, k, k) with odd k expected");
  if (b2 != nullptr) {
    check_float_cpu(*b2, what);
    TORCH_CHECK(b2->numel() == w2.size(0), what, ": bias (C2) expected");
  }
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

// ---------------------------------------------------- direct k x k convolutions, 8 floats
//
// Why hand-written: at the CNN's sizes (8 -> 16 channels over 48 x 6 pixels) oneDNN's
// convolution runs at about half of matmul speed forward and less backward (measured at batch 256
// on 2 AVX2 cores: forward 97 GFLOP/s, input and weight gradients 77, float32 matmul 186), and its
// output is a tensor that the pool then reads again; the one-channel conv1 as a banded product
// (below) spends half of its multiply-adds on the band's zeros. Here each window's convolution
// runs from a zero-padded copy of its input that stays in L1, each output summed in registers:
// forward, the pair of rows that one pooled row needs, then pooled at once (never stored);
// backward, the gradient unpooled into a padded copy, the input's gradient as a convolution of it
// with the flipped weight, and the weight's gradient summed per tap. Written with the compilers'
// vector extension and compiled by HPS_CLONES for each ISA; conv2's also at 16 floats for AVX-512
// CPUs (below).
//
// Padded buffers are (rows, F + 2p, C) channels-last, with p = k/2 zero pixels around each row,
// p zero rows above and p + 1 below (the last so that a pair of rows can start at the last row),
// and slack for a vector read past the last channel. Weights are (k, k, Cin, Coutp), Coutp = Cout
// rounded up to 8, zeros in the padding lanes; outputs are written at that stride and compacted.

inline int64_t round_up(int64_t n, int64_t lanes) { return (n + lanes - 1) / lanes * lanes; }
inline int64_t round8(int64_t n) { return round_up(n, kVec); }

struct Padded {  // geometry of a padded buffer
  int64_t rows, F, C, p;
  int64_t Fp() const { return F + 2 * p; }
  int64_t size() const { return (rows + 2 * p + 1) * Fp() * C + 2 * kMaxLanes; }
  float* row(float* buf, int64_t t) const { return buf + ((t + p) * Fp() + p) * C; }  // pixel (t, 0)
};

// Output rows t and t + 1 of a direct k x k convolution of the padded input `pad` (Cin channels),
// at pixels f0 .. f0 + FB - 1 and output channels c0 .. c0 + L NV - 1, into e and o, (F, Coutp)
// each. 2 FB NV sums side by side hide the multiply-add latency (12 of AVX2's 16 registers).
template <int L, int NV, int FB>
HPS_INLINE void conv_block(const float* pad, int64_t Fp, int64_t Cin, const float* wt, int64_t Coutp, int64_t k,
                           int64_t t, int64_t f0, int64_t c0, const float* bias, float* e, float* o) {
  using V = typename Lanes<L>::V;
  V acc[2][FB][NV];
  for (int v = 0; v < NV; ++v) {
    const V b = Lanes<L>::load(bias + c0 + L * v);
    for (int u = 0; u < FB; ++u) acc[0][u][v] = acc[1][u][v] = b;
  }
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const float* w = wt + (i * k + j) * Cin * Coutp + c0;
      const float* x0 = pad + ((t + i) * Fp + f0 + j) * Cin;  // padded row t + i, pixel f0 + j
      const float* x1 = x0 + Fp * Cin;  // row t + 1 + i
      for (int64_t ci = 0; ci < Cin; ++ci) {
        V wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = Lanes<L>::load(w + ci * Coutp + L * v);
        for (int u = 0; u < FB; ++u) {
          const V s0 = Lanes<L>::bcast(x0[u * Cin + ci]), s1 = Lanes<L>::bcast(x1[u * Cin + ci]);
          for (int v = 0; v < NV; ++v) {
            acc[0][u][v] += s0 * wv[v];
            acc[1][u][v] += s1 * wv[v];
          }
        }
      }
    }
  for (int u = 0; u < FB; ++u)
    for (int v = 0; v < NV; ++v) {
      Lanes<L>::store(e + (f0 + u) * Coutp + c0 + L * v, acc[0][u][v]);
      Lanes<L>::store(o + (f0 + u) * Coutp + c0 + L * v, acc[1][u][v]);
    }
}

template <int L, int NV>
HPS_INLINE void conv_blocks(const float* pad, int64_t F, int64_t Fp, int64_t Cin, const float* wt, int64_t Coutp,
                            int64_t k, int64_t t, int64_t c0, const float* bias, float* e, float* o) {
  constexpr int64_t kMax = NV == 2 ? 3 : 6;  // pixels per block: 2 * kMax * NV = 12 sums
  for (int64_t f0 = 0; f0 < F; f0 += kMax) {
    const int64_t n = std::min(kMax, F - f0);
    if constexpr (NV == 1) {
      if (n == 6) { conv_block<L, 1, 6>(pad, Fp, Cin, wt, Coutp, k, t, f0, c0, bias, e, o); continue; }
      if (n == 5) { conv_block<L, 1, 5>(pad, Fp, Cin, wt, Coutp, k, t, f0, c0, bias, e, o); continue; }
      if (n == 4) { conv_block<L, 1, 4>(pad, Fp, Cin, wt, Coutp, k, t, f0, c0, bias, e, o); continue; }
    }
    if (n >= 3) conv_block<L, NV, 3>(pad, Fp, Cin, wt, Coutp, k, t, f0, c0, bias, e, o);
    else if (n == 2) conv_block<L, NV, 2>(pad, Fp, Cin, wt, Coutp, k, t, f0, c0, bias, e, o);
    else conv_block<L, NV, 1>(pad, Fp, Cin, wt, Coutp, k, t, f0, c0, bias, e, o);
  }
}

// Rows t and t + 1 of the convolution, every pixel and output channel, into e and o (F, Coutp),
// Coutp a multiple of L.
template <int L>
HPS_INLINE void conv_rows(const float* pad, int64_t F, int64_t Fp, int64_t Cin, const float* wt, int64_t Cout,
                          int64_t Coutp, int64_t k, int64_t t, const float* bias, float* e, float* o) {
  for (int64_t c0 = 0; c0 < Cout;) {
    if (Cout - c0 > L) {
      conv_blocks<L, 2>(pad, F, Fp, Cin, wt, Coutp, k, t, c0, bias, e, o);
      c0 += 2 * L;
    } else {
      conv_blocks<L, 1>(pad, F, Fp, Cin, wt, Coutp, k, t, c0, bias, e, o);
      c0 += L;
    }
  }
}

// gb[0 .. C) += the sums over n pixels of C channels, x[r * C + c], in 4 interleaved partial sums
// (a loop of `gb[c] += ...` waits on its own store each time: measured 45 % of conv1's backward).
// Lanes past C read what follows and land in gb's padding lanes, which are dropped.
HPS_INLINE void add_channel_sums(const float* x, int64_t n, int64_t C, float* gb) {
  for (int64_t c0 = 0; c0 < C; c0 += kVec) {
    vf8 a[4] = {};
    int64_t r = 0;
    for (; r + 4 <= n; r += 4)
      for (int u = 0; u < 4; ++u) a[u] += load8(x + (r + u) * C + c0);
    for (; r < n; ++r) a[0] += load8(x + r * C + c0);
    store8(gb + c0, load8(gb + c0) + ((a[0] + a[1]) + (a[2] + a[3])));
  }
}

// (F, Cp) rows to (F, C) in place, where C < Cp.
inline void compact(float* row, int64_t F, int64_t C, int64_t Cp) {
  if (C == Cp) return;
  for (int64_t f = 0; f < F; ++f) std::memmove(row + f * C, row + f * Cp, C * sizeof(float));
}

// The weight (Cout, Cin, k, k) as (k, k, Cin, Coutp), Coutp = Cout rounded up to `lanes`, zeros in
// the padding; flipped: w[c][ci][k-1-i][k-1-j] at (i, j, c, ci), i.e. the weight of the
// convolution that gives the input's gradient (Cout <-> Cin).
std::vector<float> taps_layout(const at::Tensor& weight, bool flipped, int64_t lanes = kVec) {
  const auto wc = weight.contiguous();
  const float* w = wc.const_data_ptr<float>();
  const int64_t Co = weight.size(0), Ci = weight.size(1), k = weight.size(2);
  const int64_t Cin = flipped ? Co : Ci, Cout = flipped ? Ci : Co, Coutp = (Cout + lanes - 1) / lanes * lanes;
  std::vector<float> out(k * k * Cin * Coutp, 0.0f);
  for (int64_t co = 0; co < Co; ++co)
    for (int64_t ci = 0; ci < Ci; ++ci)
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j) {
          const float v = w[((co * Ci + ci) * k + i) * k + j];
          if (flipped)
            out[(((k - 1 - i) * k + (k - 1 - j)) * Cin + co) * Coutp + ci] = v;
          else
            out[((i * k + j) * Cin + ci) * Coutp + co] = v;
        }
  return out;
}

// The bias (C) in n >= C floats, zeros after it (vector loads read whole blocks of channels).
std::vector<float> padded_bias(const at::Tensor& bias, int64_t n) {
  std::vector<float> out(n, 0.0f);
  std::copy_n(bias.contiguous().const_data_ptr<float>(), bias.numel(), out.data());
  return out;
}

// ------------------------------------------------- one-channel conv (k x k, zero padding) + pool + ReLU
//
// A direct convolution too: a window's pair of rows summed in registers from its padded copy,
// then pooled; backward, the weight's gradient summed over the window's pixels for up to 9 taps
// side by side. Each output sums k * k products where a banded product (OneChannelConv2d's, and
// these kernels' earlier AVX-512 rows) sums k * F. Measured at batch 256 against the band: 8-float
// vectors on 2 AVX2 cores, forward 1.83 -> 1.20 us per window and backward 3.17 -> 1.19 (with the
// two fixes in add_channel_sums and code_bytes); on a 2-core AVX-512 Xeon against the band's
// 16-float intrinsics, forward 1.01-1.04 -> 0.93-0.97 and backward 1.22-2.21 -> 0.76-0.79.

// One window: x (T, F) -> relu(pool(conv1(x))) as rows (T/2, F * C) channels-last, and the code.
HPS_CLONES void conv1_forward_window(const float* __restrict__ x, const float* __restrict__ wt,
                                     const float* __restrict__ bias, float* __restrict__ pad,
                                     float* __restrict__ pre, float* __restrict__ out, uint8_t* __restrict__ code,
                                     int64_t T, int64_t F, int64_t C, int64_t k) {
  const Padded g{T, F, 1, k / 2};
  const int64_t R = F * C, Cp = round8(C);
  for (int64_t t = 0; t < T; ++t) std::copy_n(x + t * F, F, g.row(pad, t));
  float* e = pre;
  float* o = pre + F * Cp;
  for (int64_t t2 = 0; t2 < T / 2; ++t2) {
    conv_rows<kVec>(pad, F, g.Fp(), 1, wt, C, Cp, k, 2 * t2, bias, e, o);
    compact(e, F, C, Cp);
    compact(o, F, C, Cp);
    pool_relu_row(e, o, out + t2 * R, code + t2 * R, R);
  }
}

// gw[q0 + u][c0 .. c0 + 8 NV) += sum over the window's pixels (t, f) of x at tap q0 + u, i.e.
// pad[t + i][f + j] for q = i * k + j, times G[t][f][c0 ..]: QB taps by 8 NV channels side by side.
template <int QB, int NV>
HPS_INLINE void wgrad1_block(const float* pad, const float* G, int64_t rows, int64_t F, int64_t Fp, int64_t C,
                             int64_t k, int64_t q0, int64_t c0, float* gw, int64_t Cp) {
  int64_t off[QB];
  for (int u = 0; u < QB; ++u) off[u] = (q0 + u) / k * Fp + (q0 + u) % k;
  vf8 acc[QB][NV];
  for (int u = 0; u < QB; ++u)
    for (int v = 0; v < NV; ++v) acc[u][v] = vf8{};
  for (int64_t t = 0; t < rows; ++t) {
    const float* xr = pad + t * Fp;  // padded row t: input row t - p
    const float* gr = G + t * F * C + c0;
    for (int64_t f = 0; f < F; ++f) {
      vf8 gv[NV];
      for (int v = 0; v < NV; ++v) gv[v] = load8(gr + f * C + kVec * v);
      for (int u = 0; u < QB; ++u) {
        const vf8 s = Lanes<8>::bcast(xr[f + off[u]]);
        for (int v = 0; v < NV; ++v) acc[u][v] += s * gv[v];
      }
    }
  }
  for (int u = 0; u < QB; ++u)
    for (int v = 0; v < NV; ++v) {
      float* dst = gw + (q0 + u) * Cp + c0 + kVec * v;
      store8(dst, load8(dst) + acc[u][v]);
    }
}

template <int NV>
HPS_INLINE void wgrad1_taps(const float* pad, const float* G, int64_t rows, int64_t F, int64_t Fp, int64_t C,
                            int64_t k, int64_t c0, float* gw, int64_t Cp) {
  constexpr int64_t kMax = NV == 1 ? 9 : 6;  // taps per block: kMax * NV sums, 9 or 12 registers
  for (int64_t q0 = 0; q0 < k * k; q0 += kMax) {
    const int64_t n = std::min(kMax, k * k - q0);
#define HPS_WGRAD1(QB) wgrad1_block<QB, NV>(pad, G, rows, F, Fp, C, k, q0, c0, gw, Cp)
    if constexpr (NV == 1) {
      if (n == 9) { HPS_WGRAD1(9); continue; }
      if (n == 8) { HPS_WGRAD1(8); continue; }
      if (n == 7) { HPS_WGRAD1(7); continue; }
    }
    switch (n) {
      case 6: HPS_WGRAD1(6); break;
      case 5: HPS_WGRAD1(5); break;
      case 4: HPS_WGRAD1(4); break;
      case 3: HPS_WGRAD1(3); break;
      case 2: HPS_WGRAD1(2); break;
      default: HPS_WGRAD1(1); break;
    }
#undef HPS_WGRAD1
  }
}

// One window backward: g (T/2, F * C), the gradient of conv1_pool_relu's output, and its code;
// x (T, F). Adds the weight's gradient to gw (k * k, Cp) and the bias's to gb (Cp). G: the
// unpooled gradient (T, F * C) plus slack.
HPS_CLONES void conv1_backward_window(const float* __restrict__ g, const uint8_t* __restrict__ code,
                                      const float* __restrict__ x, float* __restrict__ pad, float* __restrict__ G,
                                      float* __restrict__ gw, float* __restrict__ gb, int64_t T, int64_t F,
                                      int64_t C, int64_t k) {
  const Padded pg{T, F, 1, k / 2};
  const int64_t R = F * C, Cp = round8(C), rows = 2 * (T / 2);  // an odd T's last row has no gradient
  for (int64_t t = 0; t < T; ++t) std::copy_n(x + t * F, F, pg.row(pad, t));
  for (int64_t t2 = 0; t2 < T / 2; ++t2)
    unpool_row(g + t2 * R, code + t2 * R, G + 2 * t2 * R, G + (2 * t2 + 1) * R, R);
  add_channel_sums(G, rows * F, C, gb);
  for (int64_t c0 = 0; c0 < C;) {
    if (C - c0 > kVec) {
      wgrad1_taps<2>(pad, G, rows, F, pg.Fp(), C, k, c0, gw, Cp);
      c0 += 2 * kVec;
    } else {
      wgrad1_taps<1>(pad, G, rows, F, pg.Fp(), C, k, c0, gw, Cp);
      c0 += kVec;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> conv1_pool_relu_direct(const at::Tensor& x, const at::Tensor& weight,
                                                          const at::Tensor& bias) {
  const int64_t B = x.size(0), T = x.size(1), F = x.size(2), C = weight.size(0), k = weight.size(2);
  const int64_t T2 = T / 2, R = F * C, Cp = round8(C);
  const auto wt = taps_layout(weight, false);
  const auto b = padded_bias(bias, Cp + kVec);
  auto out = at::empty({B, C, T2, F}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto code = at::empty({B, T2, R}, x.options().dtype(at::kByte));
  const float* xp = x.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  uint8_t* cp = code.mutable_data_ptr<uint8_t>();
  const Padded g{T, F, 1, k / 2};
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> pad(g.size(), 0.0f), pre(2 * F * Cp);  // borders stay 0
    for (int64_t i = begin; i < end; ++i)
      conv1_forward_window(xp + i * T * F, wt.data(), b.data(), pad.data(), pre.data(), op + i * T2 * R,
                           cp + i * T2 * R, T, F, C, k);
  });
  return {out, code};
}

// The weight's and bias's gradients, summed per fixed chunk of kChunk windows, then the chunks in
// order (the same float result on any number of threads).
std::tuple<at::Tensor, at::Tensor> conv1_pool_relu_direct_backward(const at::Tensor& g, const at::Tensor& code,
                                                                   const at::Tensor& x, int64_t k) {
  const int64_t B = x.size(0), T = x.size(1), F = x.size(2), C = g.size(1), T2 = T / 2, R = F * C;
  const int64_t Cp = round8(C), NW = k * k * Cp, N = NW + Cp;  // per chunk: weight (k * k, Cp), bias (Cp)
  const int64_t n_chunks = (B + kChunk - 1) / kChunk;
  std::vector<float> partial(n_chunks * N, 0.0f);
  const float* gp = g.const_data_ptr<float>();
  const uint8_t* cp = code.const_data_ptr<uint8_t>();
  const float* xp = x.const_data_ptr<float>();
  const Padded pg{T, F, 1, k / 2};
  at::parallel_for(0, n_chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> pad(pg.size(), 0.0f), G(T * R + 2 * kVec, 0.0f);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      float* gw = partial.data() + chunk * N;
      for (int64_t b = chunk * kChunk; b < std::min(B, (chunk + 1) * kChunk); ++b)
        conv1_backward_window(gp + b * T2 * R, cp + b * T2 * R, xp + b * T * F, pad.data(), G.data(), gw, gw + NW,
                              T, F, C, k);
    }
  });
  for (int64_t chunk = 1; chunk < n_chunks; ++chunk)  // chunks in order: a fixed summation order
    for (int64_t j = 0; j < N; ++j) partial[j] += partial[chunk * N + j];
  auto grad_weight = at::empty({C, 1, k, k}, x.options());
  auto grad_bias = at::empty({C}, x.options());
  float* gw = grad_weight.mutable_data_ptr<float>();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t q = 0; q < k * k; ++q) gw[c * k * k + q] = partial[q * Cp + c];
  std::copy_n(partial.data() + NW, C, grad_bias.mutable_data_ptr<float>());
  return {grad_weight, grad_bias};
}

// x (B, T, F); weight (C, 1, k, k); bias (C). Returns relu(maxpool_(2,1)(conv(x))) as (B, C, T/2, F)
// channels-last, and the pool's code.
std::tuple<at::Tensor, at::Tensor> conv1_pool_relu(const at::Tensor& input, const at::Tensor& weight,
                                                   const at::Tensor& bias) {
  check_float_cpu(input, "conv1_pool_relu");
  check_float_cpu(weight, "conv1_pool_relu weight");
  check_float_cpu(bias, "conv1_pool_relu bias");
  TORCH_CHECK(input.dim() == 3 && weight.dim() == 4 && weight.size(1) == 1 && weight.size(2) == weight.size(3) &&
                  weight.size(2) % 2 == 1 && bias.numel() == weight.size(0),
              "conv1_pool_relu: x (B, T, F), weight (C, 1, k, k) with odd k, bias (C) expected");
  return conv1_pool_relu_direct(input.contiguous(), weight.contiguous(), bias.contiguous());
}

// Gradients of conv1_pool_relu's weight (C, 1, k, k) and bias (C); x needs none (it is data).
std::tuple<at::Tensor, at::Tensor> conv1_pool_relu_backward(const at::Tensor& grad_output, const at::Tensor& code,
                                                            const at::Tensor& input, int64_t k) {
  check_float_cpu(grad_output, "conv1_pool_relu_backward");
  const auto g = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  const auto x = input.contiguous();
  const int64_t B = x.size(0), T = x.size(1), F = x.size(2), C = g.size(1), T2 = g.size(2), R = F * C;
  TORCH_CHECK(T / 2 == T2 && g.size(0) == B && g.size(3) == F && code.numel() == B * T2 * R && k % 2 == 1 && k > 0,
              "conv1_pool_relu_backward: shapes do not match");
  return conv1_pool_relu_direct_backward(g, code, x, k);
}

// ------------------------------------------- conv2 + pool + ReLU, direct, 8 or 16 floats
//
// Each window's kernels are written once, for L floats per vector (conv2's output channels; L1
// for the input's gradient, whose outputs are conv2's input channels), and compiled twice: at
// 8 floats by HPS_CLONES for any CPU, and at 16 where the CPU has AVX-512, when there are more
// than 8 channels to fill a register. Measured on a 2-core AVX-512 Xeon at batch 256, 8 -> 16
// channels, per window: forward 3.60-3.74 us at 8 floats, 2.61-2.82 at 16 (the intrinsics kernel
// this replaced: ~3.6, the block's 4.6 less conv1's 1.0); backward 7.04-7.14 at 8 floats,
// 6.04-6.28 at 16 (the whole block's backward with oneDNN's conv2: 11.1-11.3).

// One window forward: a1 (T1, F, C1) -> relu(pool(conv2(a1))) as out (C2, T1/2, F) and code
// (T1/2, F * C2). pad: Padded{T1, F, C1, p}; pre: 2 rows (F, C2p); rows: (T1/2, F * C2), the pooled
// rows channels-last, transposed at the end (the element-by-element scatter was 16 % of the time).
template <int L>
HPS_INLINE void conv2_forward(const float* __restrict__ a1, const float* __restrict__ wt,
                              const float* __restrict__ bias, float* __restrict__ pad, float* __restrict__ pre,
                              float* __restrict__ rows, float* __restrict__ out, uint8_t* __restrict__ code,
                              int64_t T1, int64_t F, int64_t C1, int64_t C2, int64_t k) {
  const Padded g{T1, F, C1, k / 2};
  const int64_t T2 = T1 / 2, R = F * C2, C2p = round_up(C2, L);
  for (int64_t t = 0; t < T1; ++t) std::copy_n(a1 + t * F * C1, F * C1, g.row(pad, t));
  float* e = pre;
  float* o = pre + F * C2p;
  for (int64_t t2 = 0; t2 < T2; ++t2) {
    conv_rows<L>(pad, F, g.Fp(), C1, wt, C2, C2p, k, 2 * t2, bias, e, o);
    compact(e, F, C2, C2p);
    compact(o, F, C2, C2p);
    pool_relu_row(e, o, rows + t2 * R, code + t2 * R, R);
  }
  transpose(rows, T2 * F, C2, out);
}

// gw[i][j][ci0 + c][c0 .. c0 + L NV) += sum over the window's pixels (t, f) of
// a[t + i][f + j][ci0 + c] * g[t][f][c0 ..]: the weight's gradient at tap (i, j), CB input
// channels by L NV output channels summed side by side.
template <int L, int CB, int NV>
HPS_INLINE void wgrad_block(const float* apad, const float* gpad, const Padded& ag, const Padded& gg, int64_t i,
                            int64_t j, int64_t ci0, int64_t c0, float* gw, int64_t C2p, int64_t k) {
  using V = typename Lanes<L>::V;
  V acc[CB][NV];
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NV; ++v) acc[c][v] = V{};
  const int64_t F = ag.F, C1 = ag.C, C2 = gg.C;
  for (int64_t t = 0; t < ag.rows; ++t) {
    const float* x = apad + ((t + i) * ag.Fp() + j) * C1 + ci0;  // padded pixel (t + i, j): a[t + i - p][j - p]
    const float* gr = gg.row(const_cast<float*>(gpad), t) + c0;
    for (int64_t f = 0; f < F; ++f) {
      V gv[NV];
      for (int v = 0; v < NV; ++v) gv[v] = Lanes<L>::load(gr + f * C2 + L * v);
      for (int c = 0; c < CB; ++c) {
        const V s = Lanes<L>::bcast(x[f * C1 + c]);
        for (int v = 0; v < NV; ++v) acc[c][v] += s * gv[v];
      }
    }
  }
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NV; ++v) {
      float* dst = gw + ((i * k + j) * C1 + ci0 + c) * C2p + c0 + L * v;
      Lanes<L>::store(dst, Lanes<L>::load(dst) + acc[c][v]);
    }
}

template <int L, int NV>
HPS_INLINE void wgrad_taps(const float* apad, const float* gpad, const Padded& ag, const Padded& gg, int64_t c0,
                           float* gw, int64_t C2p, int64_t k) {
  // 8 sums side by side: 4 input channels by 2 vectors, or 8 by 1 (one vector holds all of c0's).
  constexpr int64_t kMax = NV == 1 ? 8 : 4;
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t ci0 = 0; ci0 < ag.C; ci0 += kMax) {
#define HPS_WGRAD(CB) wgrad_block<L, CB, NV>(apad, gpad, ag, gg, i, j, ci0, c0, gw, C2p, k)
        switch (std::min<int64_t>(kMax, ag.C - ci0)) {
          case 8: HPS_WGRAD(8); break;
          case 7: HPS_WGRAD(7); break;
          case 6: HPS_WGRAD(6); break;
          case 5: HPS_WGRAD(5); break;
          case 4: HPS_WGRAD(4); break;
          case 3: HPS_WGRAD(3); break;
          case 2: HPS_WGRAD(2); break;
          default: HPS_WGRAD(1); break;
        }
#undef HPS_WGRAD
      }
}

// One window backward. grad: the block output's gradient (C2, T1/2, F) (default layout), code its
// pool's; a1: conv2's input (T1, F, C1). Writes ga1, the gradient of a1 (T1, F * C1), and adds the
// weight's and bias's gradients to gw (k, k, C1, C2p) and gb (C2p); wt_flip is (k, k, C2, C1p).
template <int L, int L1>
HPS_INLINE void conv2_backward(const float* __restrict__ grad, const uint8_t* __restrict__ code,
                               const float* __restrict__ a1, const float* __restrict__ wt_flip,
                               const float* __restrict__ zeros, float* __restrict__ apad, float* __restrict__ gpad,
                               float* __restrict__ pre, float* __restrict__ rows, float* __restrict__ ga1,
                               float* __restrict__ gw, float* __restrict__ gb, int64_t T1, int64_t F, int64_t C1,
                               int64_t C2, int64_t k) {
  const int64_t p = k / 2, T2 = T1 / 2, R = F * C2, C1p = round_up(C1, L1), C2p = round_up(C2, L);
  const Padded ag{T1, F, C1, p}, gg{T1, F, C2, p};
  for (int64_t t = 0; t < T1; ++t) std::copy_n(a1 + t * F * C1, F * C1, ag.row(apad, t));
  transpose(grad, C2, T2 * F, rows);  // (C2, T2, F) -> rows (T2, F * C2)
  for (int64_t t2 = 0; t2 < T2; ++t2)  // conv2's output gradient: unpooled into gpad
    unpool_row(rows + t2 * R, code + t2 * R, gg.row(gpad, 2 * t2), gg.row(gpad, 2 * t2 + 1), R);
  // (An odd T1's last row is not pooled: its gradient is 0, and that row of gpad is never written.)
  for (int64_t t = 0; t < T1; ++t) add_channel_sums(gg.row(gpad, t), F, C2, gb);
  for (int64_t c0 = 0; c0 < C2;) {
    if (C2 - c0 > L) {
      wgrad_taps<L, 2>(apad, gpad, ag, gg, c0, gw, C2p, k);
      c0 += 2 * L;
    } else {
      wgrad_taps<L, 1>(apad, gpad, ag, gg, c0, gw, C2p, k);
      c0 += L;
    }
  }
  // The input's gradient: the convolution of gpad with the flipped weight (C2 -> C1), two rows at
  // a time (an odd T1's last pair reads the zero row below and drops its second row).
  float* e = pre;
  float* o = pre + F * C1p;
  for (int64_t t = 0; t < T1; t += 2) {
    conv_rows<L1>(gpad, F, gg.Fp(), C2, wt_flip, C1, C1p, k, t, zeros, e, o);
    compact(e, F, C1, C1p);
    std::copy_n(e, F * C1, ga1 + t * F * C1);
    if (t + 1 < T1) {
      compact(o, F, C1, C1p);
      std::copy_n(o, F * C1, ga1 + (t + 1) * F * C1);
    }
  }
}

#define HPS_FORWARD_ARGS                                                                                      \
  const float *a1, const float *wt, const float *bias, float *pad, float *pre, float *rows, float *out,         \
      uint8_t *code, int64_t T1, int64_t F, int64_t C1, int64_t C2, int64_t k
#define HPS_BACKWARD_ARGS                                                                                     \
  const float *grad, const uint8_t *code, const float *a1, const float *wt_flip, const float *zeros,           \
      float *apad, float *gpad, float *pre, float *rows, float *ga1, float *gw, float *gb, int64_t T1,          \
      int64_t F, int64_t C1, int64_t C2, int64_t k
#define HPS_FORWARD_CALL a1, wt, bias, pad, pre, rows, out, code, T1, F, C1, C2, k
#define HPS_BACKWARD_CALL grad, code, a1, wt_flip, zeros, apad, gpad, pre, rows, ga1, gw, gb, T1, F, C1, C2, k
HPS_CLONES void conv2_forward_8(HPS_FORWARD_ARGS) { conv2_forward<8>(HPS_FORWARD_CALL); }
HPS_CLONES void conv2_backward_8_8(HPS_BACKWARD_ARGS) { conv2_backward<8, 8>(HPS_BACKWARD_CALL); }
#ifdef HPS_AVX512
HPS_TARGET_AVX512 void conv2_forward_16(HPS_FORWARD_ARGS) { conv2_forward<16>(HPS_FORWARD_CALL); }
template <int L, int L1>
HPS_TARGET_AVX512 void conv2_backward_avx512(HPS_BACKWARD_ARGS) {
  conv2_backward<L, L1>(HPS_BACKWARD_CALL);
}
#endif

// The lanes the kernels use for C output channels: 16 on AVX-512 CPUs where C > 8, else 8.
int64_t lanes_for(int64_t C) { return use_avx512() && C > kVec ? 16 : kVec; }

// One window at L (and L1) floats: the instantiation for that width.
void conv2_forward_window(int64_t L, HPS_FORWARD_ARGS) {
#ifdef HPS_AVX512
  if (L == 16) return conv2_forward_16(HPS_FORWARD_CALL);
#endif
  conv2_forward_8(HPS_FORWARD_CALL);
}

void conv2_backward_window(int64_t L, int64_t L1, HPS_BACKWARD_ARGS) {
#ifdef HPS_AVX512
  if (L == 16 && L1 == 16) return conv2_backward_avx512<16, 16>(HPS_BACKWARD_CALL);
  if (L == 16) return conv2_backward_avx512<16, 8>(HPS_BACKWARD_CALL);
  if (L1 == 16) return conv2_backward_avx512<8, 16>(HPS_BACKWARD_CALL);
#endif
  conv2_backward_8_8(HPS_BACKWARD_CALL);
}

// a1 (B, C1, T1, F) channels-last; w2 (C2, C1, k, k); b2 (C2). Returns what pool_relu(conv2d(a1))
// returns: (B, C2, T1/2, F) in the default layout, and the code (B, T1/2, F * C2).
std::tuple<at::Tensor, at::Tensor> conv2_pool_relu_direct(const at::Tensor& a1, const at::Tensor& w2,
                                                          const at::Tensor& b2) {
  check_conv2(a1, w2, &b2, "conv2_pool_relu_direct");
  const auto x = a1.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), C1 = x.size(1), T1 = x.size(2), F = x.size(3);
  const int64_t C2 = w2.size(0), k = w2.size(2), T2 = T1 / 2, R = F * C2;
  const int64_t L = lanes_for(C2), C2p = round_up(C2, L);
  const auto wt = taps_layout(w2, false, L);
  const auto bias = padded_bias(b2, C2p + kMaxLanes);
  auto out = at::empty({B, C2, T2, F}, x.options());
  auto code = at::empty({B, T2, R}, x.options().dtype(at::kByte));
  const float* xp = x.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  uint8_t* cp = code.mutable_data_ptr<uint8_t>();
  const Padded g{T1, F, C1, k / 2};
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> pad(g.size(), 0.0f), pre(2 * F * C2p), rows(T2 * R);  // borders stay 0
    for (int64_t b = begin; b < end; ++b)
      conv2_forward_window(L, xp + b * T1 * F * C1, wt.data(), bias.data(), pad.data(), pre.data(), rows.data(),
                           op + b * C2 * T2 * F, cp + b * T2 * R, T1, F, C1, C2, k);
  });
  return {out, code};
}

// The gradients of conv2_pool_relu_direct's input (channels-last), weight and bias from that of
// its output (any layout). The weight's is summed per fixed chunk of kChunk windows, then the
// chunks in order, so that its float result is the same on any number of threads.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2_pool_relu_direct_backward(const at::Tensor& grad_output,
                                                                               const at::Tensor& code,
                                                                               const at::Tensor& a1,
                                                                               const at::Tensor& w2) {
  check_conv2(a1, w2, nullptr, "conv2_pool_relu_direct_backward");
  check_float_cpu(grad_output, "conv2_pool_relu_direct_backward");
  const bool rows_ok = grad_output.dim() == 4 && grad_output.stride(3) == 1 &&
                       grad_output.stride(2) == grad_output.size(3) &&
                       grad_output.stride(1) == grad_output.size(2) * grad_output.size(3);
  const auto g = rows_ok ? grad_output : grad_output.contiguous();
  const auto x = a1.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), C1 = x.size(1), T1 = x.size(2), F = x.size(3), bs = g.stride(0);
  const int64_t C2 = w2.size(0), k = w2.size(2), T2 = T1 / 2, R = F * C2;
  const int64_t L = lanes_for(C2), L1 = lanes_for(C1), C1p = round_up(C1, L1), C2p = round_up(C2, L);
  TORCH_CHECK(g.size(0) == B && g.size(1) == C2 && g.size(2) == T2 && g.size(3) == F && code.numel() == B * T2 * R,
              "conv2_pool_relu_direct_backward: shapes do not match");
  const auto wt_flip = taps_layout(w2, true, L1);
  const std::vector<float> zeros(C1p + kMaxLanes, 0.0f);
  const int64_t NW = k * k * C1 * C2p, N = NW + C2p;  // per chunk: weight (k, k, C1, C2p), bias (C2p)
  const int64_t n_chunks = (B + kChunk - 1) / kChunk;
  std::vector<float> partial(n_chunks * N + kMaxLanes, 0.0f);
  auto grad_a1 = at::empty({B, C1, T1, F}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* gp = g.const_data_ptr<float>();
  const uint8_t* cp = code.const_data_ptr<uint8_t>();
  const float* xp = x.const_data_ptr<float>();
  float* ip = grad_a1.mutable_data_ptr<float>();
  const Padded ag{T1, F, C1, k / 2}, gg{T1, F, C2, k / 2};
  at::parallel_for(0, n_chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> apad(ag.size(), 0.0f), gpad(gg.size(), 0.0f), pre(2 * F * C1p), rows(T2 * R);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      float* gw = partial.data() + chunk * N;
      for (int64_t b = chunk * kChunk; b < std::min(B, (chunk + 1) * kChunk); ++b)
        conv2_backward_window(L, L1, gp + b * bs, cp + b * T2 * R, xp + b * T1 * F * C1, wt_flip.data(),
                              zeros.data(), apad.data(), gpad.data(), pre.data(), rows.data(), ip + b * T1 * F * C1,
                              gw, gw + NW, T1, F, C1, C2, k);
    }
  });
  for (int64_t chunk = 1; chunk < n_chunks; ++chunk)  // chunks in order: a fixed summation order
    for (int64_t j = 0; j < N; ++j) partial[j] += partial[chunk * N + j];
  auto grad_weight = at::empty({C2, C1, k, k}, x.options());
  auto grad_bias = at::empty({C2}, x.options());
  float* gw = grad_weight.mutable_data_ptr<float>();
  for (int64_t co = 0; co < C2; ++co)
    for (int64_t ci = 0; ci < C1; ++ci)
      for (int64_t t = 0; t < k * k; ++t) gw[(co * C1 + ci) * k * k + t] = partial[(t * C1 + ci) * C2p + co];
  std::copy_n(partial.data() + NW, C2, grad_bias.mutable_data_ptr<float>());
  return {grad_a1, grad_weight, grad_bias};
}

// ------------------------------------------------------------------ the whole feature block
//
// conv1 + pool + ReLU, conv2 + pool + ReLU, as one op each way, so that a training step crosses
// from Python into C++ once for the block, not once per layer. Returns the block's output
// (B, C2, T/4, F) in the default layout, and what the backward needs: conv2's input and the two
// pools' codes.

// Where conv2 runs: hpsearch's direct convolution, or oneDNN's both ways with the pool passes
// (HPSEARCH_CPU_KERNELS_ONEDNN=1), so that scripts/bench.py and the tests can compare them on any CPU.
bool conv2_onednn() {
  const char* onednn = std::getenv("HPSEARCH_CPU_KERNELS_ONEDNN");
  return onednn && *onednn && *onednn != '0';
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> features(const at::Tensor& x, const at::Tensor& w1,
                                                                    const at::Tensor& b1, const at::Tensor& w2,
                                                                    const at::Tensor& b2) {
  auto [a1, code1] = conv1_pool_relu(x, w1, b1);
  check_conv2(a1, w2, &b2, "features");
  if (!conv2_onednn()) {
    auto [out, code2] = conv2_pool_relu_direct(a1, w2, b2);
    return {out, a1, code1, code2};
  }
  const int64_t p = w2.size(2) / 2;
  auto z2 = at::convolution(a1, w2, b2, {1, 1}, {p, p}, {1, 1}, false, {0, 0}, 1);
  auto [out, code2] = pool_relu(z2);
  return {out, a1, code1, code2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> features_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& a1, const at::Tensor& code1,
    const at::Tensor& code2, const at::Tensor& w1, const at::Tensor& w2) {
  at::Tensor ga1, gw2, gb2;
  if (!conv2_onednn()) {
    std::tie(ga1, gw2, gb2) = conv2_pool_relu_direct_backward(grad, code2, a1, w2);
  } else {
    const auto gz2 = pool_relu_backward(grad, code2, a1.size(2));
    const int64_t p = w2.size(2) / 2;
    std::tie(ga1, gw2, gb2) = at::convolution_backward(gz2, a1, w2, at::IntArrayRef{w2.size(0)}, {1, 1}, {p, p},
                                                       {1, 1}, false, {0, 0}, 1, {true, true, true});
  }
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
  m.def("conv2_pool_relu_direct(Tensor a1, Tensor w2, Tensor b2) -> (Tensor, Tensor)", conv2_pool_relu_direct);
  m.def("conv2_pool_relu_direct_backward(Tensor grad, Tensor code, Tensor a1, Tensor w2) -> (Tensor, Tensor, Tensor)",
        conv2_pool_relu_direct_backward);
  m.def("pool_relu(Tensor x) -> (Tensor, Tensor)", pool_relu);
  m.def("pool_relu_backward(Tensor grad, Tensor code, int T) -> Tensor", pool_relu_backward);
  m.def("conv1_pool_relu(Tensor x, Tensor weight, Tensor bias) -> (Tensor, Tensor)", conv1_pool_relu);
  m.def("conv1_pool_relu_backward(Tensor grad, Tensor code, Tensor x, int k) -> (Tensor, Tensor)",
        conv1_pool_relu_backward);
}
