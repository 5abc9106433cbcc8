// What hpsearch's two kernel files (cnn2d_cpu.cpp, attention_cpu.cpp) share: how the generic
// code is compiled, and its vectors.
#pragma once

#include <cstdint>
#include <cstring>

// The generic code is compiled for AVX-512, AVX2 and baseline x86-64, picked at load time by the
// CPU (gcc's function multi-versioning), so the cached build runs on any x86-64 machine at its
// width (other compilers and CPUs: one baseline build).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define HPS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HPS_CLONES
#endif
#define HPS_INLINE inline __attribute__((always_inline))  // into the HPS_CLONES caller, at its ISA

namespace {

// The compilers' vector extension (gcc and clang): 8 floats, one AVX2 register, and 16, one
// AVX-512 register; a narrower ISA splits them (an AVX2 clone runs a 16-float operation as two).
// Comparisons give -1 / 0 lanes; a cast between vector types keeps the bits.
typedef float vf8 __attribute__((vector_size(32), aligned(4)));  // aligned(4): loads from any float
typedef int32_t vi8 __attribute__((vector_size(32), aligned(4)));
typedef float vf16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi16 __attribute__((vector_size(64), aligned(4)));

template <int L>
struct VecOf;
template <>
struct VecOf<8> {
  using V = vf8;
  using I = vi8;
};
template <>
struct VecOf<16> {
  using V = vf16;
  using I = vi16;
};

// Loads and stores from any float, and bcast: lane 0 to all (a vbroadcastss; V{} + s would not be
// one, and 0 + -0 is +0), with the shuffle in the member itself: one that called a helper for it
// compiled to 7 lane inserts in every clone (gcc 12.2), and the 8-float conv2 ran 5x slower.
template <int L>
struct Lanes {
  using V = typename VecOf<L>::V;
  static HPS_INLINE V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static HPS_INLINE void store(float* p, V v) { std::memcpy(p, &v, sizeof v); }
  static HPS_INLINE V bcast(float s) {
#if defined(__clang__)
    if constexpr (L == 8)
      return __builtin_shufflevector(V{s}, V{s}, 0, 0, 0, 0, 0, 0, 0, 0);
    else
      return __builtin_shufflevector(V{s}, V{s}, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
#else
    return __builtin_shuffle(V{s}, typename VecOf<L>::I{});
#endif
  }
};

}  // namespace
