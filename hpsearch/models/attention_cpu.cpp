// CPU kernels of the Transformer: multi-head scaled dot-product attention forward and backward,
// and the dropout mask. Built with cnn2d_cpu.cpp into one extension by
// hpsearch/models/cpu_kernels.py; the model runs torch's own modules where it cannot be built.
//
// Why hand-written: at the Transformer's sizes (head width d_model / n_heads = 8, T = 96) torch's
// CPU attention is far below matmul speed. Its flash kernel tiles for wide heads, and with
// 8-float heads its overhead dominates: measured 5.5 ms forward and 16 ms forward + backward for
// one (64, 4, 96, 8) self-attention on 2 cores, about 60 % of a training step; the math path
// (two bmm and a softmax through memory) is no faster. Here one (window, head) at a time keeps
// its score rows in registers and L1: q·k, softmax and p·v in one pass over the keys, and the
// backward recomputes the probabilities from the saved log-sum-exp (as flash attention does)
// instead of storing the (T, T) matrix. q, k and v are read where the input projection wrote them,
// (B, T, E) rows with heads side by side, and the output is written the same way, so that no
// transpose to (B, H, T, D) and back is copied.
//
// torch's CPU generator (mt19937) draws ~10 ns per element: nn.Dropout cost ~1.5-2 ms per
// (64, 96, 32) activation, 11 of them per step, about 20 % of a training step. `dropout_mask`
// turns 21 random bits per element, drawn by that same generator as int64 words (3 elements per
// word, ~0.2 ms), into the keep-and-scale mask. The drop rate is then a multiple of 2^-21
// (0.1 -> 209715 / 2097152 = 0.0999999) and the scale is 1 / (1 - that rate), so the mask's
// expectation is still exactly 1.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "cpu_simd.h"

namespace {

// 16-float vectors (cpu_simd.h) over keys: every loop below runs over 16 keys at a time, so the
// head width D is a plain runtime loop bound. One zmm register in the AVX-512 clone; the AVX2
// clone runs each operation as two ymm ones, a baseline or ARM build as four, which gives every
// row two or four independent chains (measured on a 2-core AVX-512 EPYC, forward + backward of
// the encoder's attention: 16.7 ms at 8 floats, 11.0 at 16, one thread).
constexpr int64_t kVec = 16;
using vf = VecOf<kVec>::V;
using vi = VecOf<kVec>::I;
constexpr int64_t kMask21 = (int64_t{1} << 21) - 1;  // a dropout draw: 21 of a word's 63 random bits

// Vec::load, Vec::store, Vec::bcast are called directly: a helper of this file wrapping bcast
// compiled to slow code again (the trap cpu_simd.h describes; measured 2.2x slower kernels).
using Vec = Lanes<kVec>;
HPS_INLINE float hsum(vf v) {
  float s = 0.0f;
  for (int l = 0; l < kVec; ++l) s += v[l];  // a fixed order: the same sum on every CPU
  return s;
}
HPS_INLINE float hmax(vf v) {
  float m = v[0];
  for (int l = 1; l < kVec; ++l) m = v[l] > m ? v[l] : m;
  return m;
}
HPS_INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }

// exp of 16 floats <= 0 (softmax's shifted scores). Cephes' expf: x = n ln 2 + r with |r| <= ln2/2,
// a degree-6 polynomial for e^r, 2^n put into the exponent bits; about 1 ulp from std::exp.
// Below -87.3 the result would be subnormal: it is flushed to +0 (std::exp gives < 1.2e-38).
HPS_INLINE vf vexp(vf x) {
  const vi tiny = x < Vec::bcast(-87.3f);
  x = x < Vec::bcast(-87.3f) ? Vec::bcast(-87.3f) : x;
  const vf big = Vec::bcast(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer (round to even)
  vf n = x * Vec::bcast(1.44269504088896341f) + big;
  n = n - big;
  vf r = x - n * Vec::bcast(0.693359375f);
  r = r - n * Vec::bcast(-2.12194440e-4f);
  vf p = Vec::bcast(1.9875691500e-4f);
  p = p * r + Vec::bcast(1.3981999507e-3f);
  p = p * r + Vec::bcast(8.3334519073e-3f);
  p = p * r + Vec::bcast(4.1665795894e-2f);
  p = p * r + Vec::bcast(1.6666665459e-1f);
  p = p * r + Vec::bcast(5.0000001201e-1f);
  p = p * (r * r) + r + Vec::bcast(1.0f);
  const vi e = __builtin_convertvector(n, vi) << 23;
  const vi bits = (vi)p + e;
  return (vf)(bits & ~tiny);
}

// One (window, head): Tq query rows against Tk keys (Tkp: rounded up to whole vectors), head
// width D. q, k, v and o point at the head's first element; a row is `qs`, `ks`, `vs`, `os` floats
// apart (the (B, T, E) layout). Causal: query i sees keys 0..i only (Tq == Tk).
struct Head {
  int64_t Tq, Tk, Tkp, D;
  bool causal;
  float scale;
  int64_t keys(int64_t i) const { return causal ? std::min(Tk, i + 1) : Tk; }
  static int64_t vectors(int64_t n) { return (n + kVec - 1) / kVec; }  // vectors holding n keys
};

// K and V transposed into (D, Tkp) with zeros in the padding, so that each row loop runs over
// whole vectors of keys.
HPS_INLINE void transpose_in(const float* src, int64_t ss, const Head& h, float* dst) {
  for (int64_t j = 0; j < h.Tk; ++j)  // row by row: gcc vectorizes the other order into lane inserts
    for (int64_t d = 0; d < h.D; ++d) dst[d * h.Tkp + j] = src[j * ss + d];
  for (int64_t d = 0; d < h.D; ++d)
    for (int64_t j = h.Tk; j < h.Tkp; ++j) dst[d * h.Tkp + j] = 0.0f;
}

// The two products of a row, with 4 independent sums in flight: one running sum per output
// waits 4 cycles on every multiply-add (measured: the first version spent 3/4 of its time so).
// out[jv] = scale * sum_d a[d] * M[d][jv], for the nv vectors of keys jv (M's rows Tkp apart).
HPS_INLINE void row_times(const float* a, const float* M, const Head& h, int64_t nv, float scale, float* out) {
  int64_t jv = 0;
  for (; jv + 4 <= nv; jv += 4) {
    vf s0 = Vec::bcast(0.0f), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t d = 0; d < h.D; ++d) {
      const vf ad = Vec::bcast(a[d]);
      const float* m = M + d * h.Tkp + jv * kVec;
      s0 += ad * Vec::load(m);
      s1 += ad * Vec::load(m + kVec);
      s2 += ad * Vec::load(m + 2 * kVec);
      s3 += ad * Vec::load(m + 3 * kVec);
    }
    Vec::store(out + jv * kVec, s0 * Vec::bcast(scale));
    Vec::store(out + (jv + 1) * kVec, s1 * Vec::bcast(scale));
    Vec::store(out + (jv + 2) * kVec, s2 * Vec::bcast(scale));
    Vec::store(out + (jv + 3) * kVec, s3 * Vec::bcast(scale));
  }
  for (; jv < nv; ++jv) {
    vf s0 = Vec::bcast(0.0f);
    for (int64_t d = 0; d < h.D; ++d) s0 += Vec::bcast(a[d]) * Vec::load(M + d * h.Tkp + jv * kVec);
    Vec::store(out + jv * kVec, s0 * Vec::bcast(scale));
  }
}

// out[d] = scale * sum_j p[j] * M[d][j] over the nv vectors of keys.
HPS_INLINE void dots(const float* p, const float* M, const Head& h, int64_t nv, float scale, float* out) {
  int64_t d = 0;
  for (; d + 4 <= h.D; d += 4) {
    vf s0 = Vec::bcast(0.0f), s1 = s0, s2 = s0, s3 = s0;
    const float* m = M + d * h.Tkp;
    for (int64_t jv = 0; jv < nv; ++jv) {
      const vf pj = Vec::load(p + jv * kVec);
      s0 += pj * Vec::load(m + jv * kVec);
      s1 += pj * Vec::load(m + h.Tkp + jv * kVec);
      s2 += pj * Vec::load(m + 2 * h.Tkp + jv * kVec);
      s3 += pj * Vec::load(m + 3 * h.Tkp + jv * kVec);
    }
    out[d] = hsum(s0) * scale;
    out[d + 1] = hsum(s1) * scale;
    out[d + 2] = hsum(s2) * scale;
    out[d + 3] = hsum(s3) * scale;
  }
  for (; d < h.D; ++d) {
    vf s0 = Vec::bcast(0.0f);
    for (int64_t jv = 0; jv < nv; ++jv) s0 += Vec::load(p + jv * kVec) * Vec::load(M + d * h.Tkp + jv * kVec);
    out[d] = hsum(s0) * scale;
  }
}

// M[d][j] += a[d] * p[j] over the nv vectors of keys (independent updates: no chain to wait on).
HPS_INLINE void add_outer(const float* a, const float* p, const Head& h, int64_t nv, float* M) {
  for (int64_t d = 0; d < h.D; ++d) {
    const vf ad = Vec::bcast(a[d]);
    float* m = M + d * h.Tkp;
    for (int64_t jv = 0; jv < nv; ++jv)
      Vec::store(m + jv * kVec, Vec::load(m + jv * kVec) + ad * Vec::load(p + jv * kVec));
  }
}

// Row i's probabilities in place of its scores: exp(s - shift), +0 past its last key.
HPS_INLINE void probabilities(float* s, int64_t n, int64_t nv, float shift) {
  for (int64_t jv = 0; jv < nv; ++jv) Vec::store(s + jv * kVec, vexp(Vec::load(s + jv * kVec) - Vec::bcast(shift)));
  for (int64_t j = n; j < nv * kVec; ++j) s[j] = 0.0f;
}

// Each step runs over all of the head's rows before the next one starts, so that the rows'
// chains (scores, max, exp, sum, products), each sequential, are independent work side by side
// for the core (measured at 8 floats, one thread: forward 5.1 -> 4.6 ms). S holds Tq * Tkp floats.
HPS_CLONES void attention_head(const float* __restrict__ q, int64_t qs, const float* __restrict__ k, int64_t ks,
                               const float* __restrict__ v, int64_t vs, float* __restrict__ o, int64_t os,
                               float* __restrict__ lse, const Head& h, float* Kt, float* Vt, float* S,
                               float* inv) {
  transpose_in(k, ks, h, Kt);
  transpose_in(v, vs, h, Vt);
  for (int64_t i = 0; i < h.Tq; ++i) {
    const int64_t n = h.keys(i), nv = Head::vectors(n);
    float* s = S + i * h.Tkp;
    row_times(q + i * qs, Kt, h, nv, h.scale, s);
    for (int64_t j = n; j < nv * kVec; ++j) s[j] = -std::numeric_limits<float>::infinity();
  }
  for (int64_t i = 0; i < h.Tq; ++i) {
    const int64_t n = h.keys(i), nv = Head::vectors(n);
    float* s = S + i * h.Tkp;
    vf mv = Vec::load(s);
    for (int64_t jv = 1; jv < nv; ++jv) mv = vmax(mv, Vec::load(s + jv * kVec));
    const float m = hmax(mv);
    probabilities(s, n, nv, m);
    vf lv = Vec::bcast(0.0f);
    for (int64_t jv = 0; jv < nv; ++jv) lv += Vec::load(s + jv * kVec);
    const float l = hsum(lv);
    inv[i] = 1.0f / l;
    lse[i] = m + std::log(l);
  }
  for (int64_t i = 0; i < h.Tq; ++i) {
    const int64_t n = h.keys(i), nv = Head::vectors(n);
    dots(S + i * h.Tkp, Vt, h, nv, inv[i], o + i * os);
  }
}

// The gradients of one (window, head). go and o rows are `os` apart, dq rows `dqs`, dk and dv rows
// `dks`. The probabilities are recomputed from lse (as flash attention does), step by step over
// all rows as in the forward; P and dS hold Tq * Tkp floats; dKt and dVt accumulate over rows in
// (D, Tkp) scratch and are transposed out at the end.
HPS_CLONES void attention_head_backward(const float* __restrict__ go, const float* __restrict__ q, int64_t qs,
                                        const float* __restrict__ k, int64_t ks, const float* __restrict__ v,
                                        int64_t vs, const float* __restrict__ o, int64_t os,
                                        const float* __restrict__ lse, float* __restrict__ dq, int64_t dqs,
                                        float* __restrict__ dk, float* __restrict__ dv, int64_t dks, const Head& h,
                                        float* Kt, float* Vt, float* dKt, float* dVt, float* P, float* dS) {
  transpose_in(k, ks, h, Kt);
  transpose_in(v, vs, h, Vt);
  std::fill_n(dKt, h.D * h.Tkp, 0.0f);
  std::fill_n(dVt, h.D * h.Tkp, 0.0f);
  for (int64_t i = 0; i < h.Tq; ++i) {
    const int64_t n = h.keys(i), nv = Head::vectors(n);
    float* p = P + i * h.Tkp;
    row_times(q + i * qs, Kt, h, nv, h.scale, p);
    probabilities(p, n, nv, lse[i]);
  }
  for (int64_t i = 0; i < h.Tq; ++i) {
    const int64_t n = h.keys(i), nv = Head::vectors(n);
    const float* gi = go + i * os;
    float* ds = dS + i * h.Tkp;
    row_times(gi, Vt, h, nv, 1.0f, ds);  // dP_ij = dO_i . v_j
    float delta = 0.0f;                  // sum_d dO_i,d O_i,d = sum_j P_ij dP_ij
    for (int64_t d = 0; d < h.D; ++d) delta += gi[d] * o[i * os + d];
    // scale * dS_ij = scale * P_ij (dP_ij - delta_i): the gradient of the raw products q_i . k_j,
    // from which q's and k's follow.
    const vf dl = Vec::bcast(delta), sc = Vec::bcast(h.scale);
    const float* p = P + i * h.Tkp;
    for (int64_t jv = 0; jv < nv; ++jv)
      Vec::store(ds + jv * kVec, Vec::load(p + jv * kVec) * (Vec::load(ds + jv * kVec) - dl) * sc);
  }
  for (int64_t i = 0; i < h.Tq; ++i) {
    const int64_t n = h.keys(i), nv = Head::vectors(n);
    dots(dS + i * h.Tkp, Kt, h, nv, 1.0f, dq + i * dqs);  // dQ_i = sum_j scale dS_ij k_j
    add_outer(go + i * os, P + i * h.Tkp, h, nv, dVt);       // dV_j += P_ij dO_i
    add_outer(q + i * qs, dS + i * h.Tkp, h, nv, dKt);       // dK_j += scale dS_ij q_i
  }
  for (int64_t j = 0; j < h.Tk; ++j)
    for (int64_t d = 0; d < h.D; ++d) {
      dk[j * dks + d] = dKt[d * h.Tkp + j];
      dv[j * dks + d] = dVt[d * h.Tkp + j];
    }
}

// q (B, Tq, E), k and v (B, Tk, E): float32 CPU, rows of E floats with heads side by side
// (h * D .. h * D + D), any row stride; typically slices of the input projection's output.
void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads, bool causal,
               const char* what) {
  for (const at::Tensor* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 3, what,
                ": (B, T, E) float32 CPU tensors expected");
    TORCH_CHECK(t->stride(2) == 1, what, ": the last dimension must be contiguous");
  }
  TORCH_CHECK(k.sizes() == v.sizes() && q.size(0) == k.size(0) && q.size(2) == k.size(2), what,
              ": q (B, Tq, E), k and v (B, Tk, E) expected");
  TORCH_CHECK(heads > 0 && q.size(2) % heads == 0, what, ": heads must divide E");
  TORCH_CHECK(k.size(1) > 0, what, ": at least one key expected");
  TORCH_CHECK(!causal || q.size(1) == k.size(1), what, ": a causal attention needs Tq == Tk");
}

Head head_of(const at::Tensor& q, const at::Tensor& k, int64_t heads, bool causal) {
  const int64_t D = q.size(2) / heads, Tk = k.size(1);
  return Head{q.size(1), Tk, Head::vectors(Tk) * kVec, D, causal, 1.0f / std::sqrt(static_cast<float>(D))};
}

// Returns o (B, Tq, E) and the log-sum-exp of each query's scores, (B, H, Tq).
std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                             int64_t heads, bool causal) {
  check_qkv(q, k, v, heads, causal, "attention");
  const Head h = head_of(q, k, heads, causal);
  const int64_t B = q.size(0), E = q.size(2);
  auto o = at::empty({B, h.Tq, E}, q.options());
  auto lse = at::empty({B, heads, h.Tq}, q.options());
  const float *qp = q.const_data_ptr<float>(), *kp = k.const_data_ptr<float>(), *vp = v.const_data_ptr<float>();
  float *op = o.mutable_data_ptr<float>(), *lp = lse.mutable_data_ptr<float>();
  at::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> Kt(h.D * h.Tkp), Vt(h.D * h.Tkp), S(h.Tq * h.Tkp), inv(h.Tq);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, c = bh % heads * h.D;
      attention_head(qp + b * q.stride(0) + c, q.stride(1), kp + b * k.stride(0) + c, k.stride(1),
                     vp + b * v.stride(0) + c, v.stride(1), op + b * h.Tq * E + c, E, lp + bh * h.Tq, h, Kt.data(),
                     Vt.data(), S.data(), inv.data());
    }
  });
  return {o, lse};
}

// The gradients of q, k and v, each (B, T, E) contiguous, from the output's gradient and what
// the forward returned.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(const at::Tensor& grad, const at::Tensor& q,
                                                                  const at::Tensor& k, const at::Tensor& v,
                                                                  const at::Tensor& o, const at::Tensor& lse,
                                                                  int64_t heads, bool causal) {
  check_qkv(q, k, v, heads, causal, "attention_backward");
  const Head h = head_of(q, k, heads, causal);
  const int64_t B = q.size(0), E = q.size(2);
  TORCH_CHECK(o.is_contiguous() && o.sizes() == q.sizes() && lse.is_contiguous() && lse.numel() == B * heads * h.Tq,
              "attention_backward: o and lse as the forward returned them expected");
  const auto g = grad.contiguous();
  TORCH_CHECK(g.sizes() == o.sizes() && g.scalar_type() == at::kFloat,
              "attention_backward: grad shaped like o expected");
  auto dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options()),
       dv = at::empty(v.sizes(), v.options());
  const float *gp = g.const_data_ptr<float>(), *qp = q.const_data_ptr<float>(), *kp = k.const_data_ptr<float>(),
              *vp = v.const_data_ptr<float>(), *op = o.const_data_ptr<float>(), *lp = lse.const_data_ptr<float>();
  float *dqp = dq.mutable_data_ptr<float>(), *dkp = dk.mutable_data_ptr<float>(), *dvp = dv.mutable_data_ptr<float>();
  at::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> Kt(h.D * h.Tkp), Vt(h.D * h.Tkp), dKt(h.D * h.Tkp), dVt(h.D * h.Tkp), P(h.Tq * h.Tkp),
        dS(h.Tq * h.Tkp);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, c = bh % heads * h.D;
      attention_head_backward(gp + b * h.Tq * E + c, qp + b * q.stride(0) + c, q.stride(1), kp + b * k.stride(0) + c,
                              k.stride(1), vp + b * v.stride(0) + c, v.stride(1), op + b * h.Tq * E + c, E,
                              lp + bh * h.Tq, dqp + b * h.Tq * E + c, E, dkp + b * h.Tk * E + c,
                              dvp + b * h.Tk * E + c, E, h, Kt.data(), Vt.data(), dKt.data(), dVt.data(), P.data(),
                              dS.data());
    }
  });
  return {dq, dk, dv};
}

// bits: int64 words drawn by torch's generator (Tensor.random_(): 63 uniform bits each), at least
// ceil(numel / 3). Element i = part * W + t (W = ceil(numel / 3)) takes bits 21 part .. 21 part + 20
// of word t: three passes over the words at a fixed shift, each vectorized. Returns float32
// values: 0 where those 21 bits are < cut (the element is dropped), else scale.
HPS_CLONES void mask_from_bits(const int64_t* __restrict__ bits, int64_t words, int64_t numel, int64_t cut,
                               float scale, float* __restrict__ out) {
  for (int64_t part = 0; part < 3; ++part) {
    const int64_t first = part * words, n = std::min(words, numel - first);
    for (int64_t t = 0; t < n; ++t) out[first + t] = ((bits[t] >> (21 * part)) & kMask21) < cut ? 0.0f : scale;
  }
}

at::Tensor dropout_mask(const at::Tensor& bits, int64_t numel, int64_t cut, double scale) {
  const int64_t words = (numel + 2) / 3;
  TORCH_CHECK(bits.device().is_cpu() && bits.scalar_type() == at::kLong && bits.is_contiguous() &&
                  bits.numel() >= words,
              "dropout_mask: contiguous int64 CPU bits, one word per 3 elements, expected");
  TORCH_CHECK(cut >= 0 && cut <= kMask21 + 1, "dropout_mask: 0 <= cut <= 2^21 expected");
  auto out = at::empty({numel}, bits.options().dtype(at::kFloat));
  mask_from_bits(bits.const_data_ptr<int64_t>(), words, numel, cut, static_cast<float>(scale),
                 out.mutable_data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hpsearch, m) {
  m.def("attention(Tensor q, Tensor k, Tensor v, int heads, bool causal) -> (Tensor, Tensor)", attention);
  m.def(
      "attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, int heads, bool causal) "
      "-> (Tensor, Tensor, Tensor)",
      attention_backward);
  m.def("dropout_mask(Tensor bits, int numel, int cut, float scale) -> Tensor", dropout_mask);
}
