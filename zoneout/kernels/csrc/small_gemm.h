// Small-M float32 GEMM for the per-step products of the recurrences: C[M,N] = A[M,K] @ W^T with W in
// nn.Linear layout [N,K] (any strides), packed once per sequence into 16-column panels [K][16]; A
// (the step's h or dG, a few dozen rows) is repacked per call into MR-row blocks [K][MR]. AVX2+FMA
// builds: one 6x16 register tile (12 ymm accumulators); AVX-512 builds (_build.py adds -mavx512f etc.
// when the CPU has them): a 12x32 tile (24 zmm accumulators, 32-column panels). No library call per
// step, no allocation per step.
// AVX-512 tile vs the AVX2 one on the same EPYC (thread CPU time per 100 products, 5 reps, medians):
// 32x256 @ 256x1024 17.3 vs 18.7 ms, 20x650 @ 650x2600 72.9 vs 86.0 ms, 20x2600 @ 2600x650 76.5 vs 88.0 ms.
// Measured on the 2-core AMD EPYC (thread CPU time, 100 steps): 32x256 @ 256x1024 19.6 ms vs oneDNN's
// 20.1 ms, 20x650 @ 650x2600 86 vs 99 ms, 20x2600 @ 2600x650 82 vs 91 ms; oneDNN wins once W no
// longer fits the cache (32x1000 @ 1000x4000: 374 vs 324 ms), so own_gemm_applies() limits it.
#pragma once
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <vector>
#include <immintrin.h>

namespace zoneout_gemm {

// W up to 8 MB (shapes A and C of the benchmark; not B's 4000x1000).
inline bool own_gemm_applies(int64_t N, int64_t K) { return N * K * 4 <= (int64_t(8) << 20); }

#if defined(__AVX512F__)
constexpr int NR = 32, MR = 12;
#else
constexpr int NR = 16, MR = 6;
#endif

struct PackedW {
  int64_t N = 0, K = 0, panels = 0;
  std::vector<float> data;  // [panels][K][16]
};

// W may be a strided view (backward passes w_hh^T): element (n, k) at w[n * sn + k * sk].
inline void pack_w(PackedW& p, const float* w, int64_t N, int64_t K, int64_t sn, int64_t sk) {
  p.N = N; p.K = K; p.panels = (N + NR - 1) / NR;
  p.data.assign(p.panels * K * NR + NR, 0.f);
  float* d = p.data.data();
  for (int64_t pn = 0; pn < p.panels; ++pn)
    for (int64_t c = 0; c < NR; ++c) {
      int64_t n = pn * NR + c;
      if (n >= N) break;
      const float* src = w + n * sn;
      float* dst = d + pn * K * NR + c;
      for (int64_t k = 0; k < K; ++k) dst[k * NR] = src[k * sk];
    }
}

// Rows are split into ceil(M / MR) blocks of as equal size as possible (AVX2, M = 32: 6,6,5,5,5,5,
// not 6,6,6,6,6,2): a block of R rows keeps 2R FMA chains in flight, and fewer than ~10 leave the FMA
// units idle (measured: 17.1 vs 18.0 ms per 100 products at 32x256 @ 256x1024).
inline void block_rows(int64_t M, int64_t bl, int64_t& r0, int& rows) {
  const int64_t blocks = (M + MR - 1) / MR, base = M / blocks, extra = M % blocks;
  r0 = bl * base + std::min(bl, extra);
  rows = static_cast<int>(base + (bl < extra ? 1 : 0));
}

// A packed into row blocks: [blocks][K][MR], block bl holding its rows (see block_rows).
inline void pack_a(std::vector<float>& ap, const float* a, int64_t M, int64_t K) {
  const int64_t blocks = (M + MR - 1) / MR;
  ap.resize(blocks * K * MR);
  float* d = ap.data();
  for (int64_t bl = 0; bl < blocks; ++bl) {
    int64_t r0;
    int rows;
    block_rows(M, bl, r0, rows);
    for (int r = 0; r < rows; ++r) {
      const float* src = a + (r0 + r) * K;
      float* dst = d + bl * K * MR + r;
      for (int64_t k = 0; k < K; ++k) dst[k * MR] = src[k];
    }
  }
}

#if defined(__AVX512F__)
template <int R>
inline void kernel(const float* __restrict ap, const float* __restrict bp, int64_t K, float* __restrict c,
                   int64_t ldc, int ncols) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m512 b0 = _mm512_loadu_ps(bp + k * NR), b1 = _mm512_loadu_ps(bp + k * NR + 16);
    const float* ak = ap + k * MR;
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {  // R is a constant: fully unrolled, acc stays in registers
      const __m512 x = _mm512_set1_ps(ak[r]);
      acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
    }
  }
  // Masked stores for a last, partial panel (ncols < 32).
  const __mmask16 m0 = ncols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << ncols) - 1);
  const __mmask16 m1 = ncols >= NR ? __mmask16(0xFFFF) : ncols <= 16 ? __mmask16(0) : __mmask16((1u << (ncols - 16)) - 1);
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(c + r * ldc, m0, acc[r][0]);
    _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc[r][1]);
  }
}
#else
template <int R>
inline void kernel(const float* __restrict ap, const float* __restrict bp, int64_t K, float* __restrict c,
                   int64_t ldc, int ncols) {
  __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps(), a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(), a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps(), a40 = _mm256_setzero_ps(), a41 = _mm256_setzero_ps(), a50 = _mm256_setzero_ps(), a51 = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(bp + k * NR), b1 = _mm256_loadu_ps(bp + k * NR + 8);
    const float* ak = ap + k * MR;
    if constexpr (R > 0) { const __m256 x = _mm256_broadcast_ss(ak + 0); a00 = _mm256_fmadd_ps(x, b0, a00); a01 = _mm256_fmadd_ps(x, b1, a01); }
    if constexpr (R > 1) { const __m256 x = _mm256_broadcast_ss(ak + 1); a10 = _mm256_fmadd_ps(x, b0, a10); a11 = _mm256_fmadd_ps(x, b1, a11); }
    if constexpr (R > 2) { const __m256 x = _mm256_broadcast_ss(ak + 2); a20 = _mm256_fmadd_ps(x, b0, a20); a21 = _mm256_fmadd_ps(x, b1, a21); }
    if constexpr (R > 3) { const __m256 x = _mm256_broadcast_ss(ak + 3); a30 = _mm256_fmadd_ps(x, b0, a30); a31 = _mm256_fmadd_ps(x, b1, a31); }
    if constexpr (R > 4) { const __m256 x = _mm256_broadcast_ss(ak + 4); a40 = _mm256_fmadd_ps(x, b0, a40); a41 = _mm256_fmadd_ps(x, b1, a41); }
    if constexpr (R > 5) { const __m256 x = _mm256_broadcast_ss(ak + 5); a50 = _mm256_fmadd_ps(x, b0, a50); a51 = _mm256_fmadd_ps(x, b1, a51); }
  }
  if (ncols == NR) {
    if constexpr (R > 0) { _mm256_storeu_ps(c + 0 * ldc, a00); _mm256_storeu_ps(c + 0 * ldc + 8, a01); }
    if constexpr (R > 1) { _mm256_storeu_ps(c + 1 * ldc, a10); _mm256_storeu_ps(c + 1 * ldc + 8, a11); }
    if constexpr (R > 2) { _mm256_storeu_ps(c + 2 * ldc, a20); _mm256_storeu_ps(c + 2 * ldc + 8, a21); }
    if constexpr (R > 3) { _mm256_storeu_ps(c + 3 * ldc, a30); _mm256_storeu_ps(c + 3 * ldc + 8, a31); }
    if constexpr (R > 4) { _mm256_storeu_ps(c + 4 * ldc, a40); _mm256_storeu_ps(c + 4 * ldc + 8, a41); }
    if constexpr (R > 5) { _mm256_storeu_ps(c + 5 * ldc, a50); _mm256_storeu_ps(c + 5 * ldc + 8, a51); }
  } else {
    alignas(32) float tmp[MR * NR];
    if constexpr (R > 0) { _mm256_store_ps(tmp + 0 * NR, a00); _mm256_store_ps(tmp + 0 * NR + 8, a01); }
    if constexpr (R > 1) { _mm256_store_ps(tmp + 1 * NR, a10); _mm256_store_ps(tmp + 1 * NR + 8, a11); }
    if constexpr (R > 2) { _mm256_store_ps(tmp + 2 * NR, a20); _mm256_store_ps(tmp + 2 * NR + 8, a21); }
    if constexpr (R > 3) { _mm256_store_ps(tmp + 3 * NR, a30); _mm256_store_ps(tmp + 3 * NR + 8, a31); }
    if constexpr (R > 4) { _mm256_store_ps(tmp + 4 * NR, a40); _mm256_store_ps(tmp + 4 * NR + 8, a41); }
    if constexpr (R > 5) { _mm256_store_ps(tmp + 5 * NR, a50); _mm256_store_ps(tmp + 5 * NR + 8, a51); }
    for (int r = 0; r < R; ++r) std::memcpy(c + r * ldc, tmp + r * NR, ncols * sizeof(float));
  }
}

#endif

// Column panels [pn0, pn1) of C = A @ W^T, A already packed by pack_a (callers split the panels
// across threads).
inline void gemm_panels(const PackedW& w, const float* ap, int64_t M, float* c, int64_t pn0, int64_t pn1) {
  const int64_t K = w.K, N = w.N;
  const int64_t blocks = (M + MR - 1) / MR;
  for (int64_t pn = pn0; pn < pn1; ++pn) {
    const float* bp = w.data.data() + pn * K * NR;
    const int ncols = static_cast<int>(std::min<int64_t>(NR, N - pn * NR));
    for (int64_t bl = 0; bl < blocks; ++bl) {
      int64_t r0;
      int rows;
      block_rows(M, bl, r0, rows);
      const float* apb = ap + bl * K * MR;
      float* cb = c + r0 * N + pn * NR;
      switch (rows) {
#if defined(__AVX512F__)
        case 12: kernel<12>(apb, bp, K, cb, N, ncols); break;
        case 11: kernel<11>(apb, bp, K, cb, N, ncols); break;
        case 10: kernel<10>(apb, bp, K, cb, N, ncols); break;
        case 9: kernel<9>(apb, bp, K, cb, N, ncols); break;
        case 8: kernel<8>(apb, bp, K, cb, N, ncols); break;
        case 7: kernel<7>(apb, bp, K, cb, N, ncols); break;
#endif
        case 6: kernel<6>(apb, bp, K, cb, N, ncols); break;
        case 5: kernel<5>(apb, bp, K, cb, N, ncols); break;
        case 4: kernel<4>(apb, bp, K, cb, N, ncols); break;
        case 3: kernel<3>(apb, bp, K, cb, N, ncols); break;
        case 2: kernel<2>(apb, bp, K, cb, N, ncols); break;
        default: kernel<1>(apb, bp, K, cb, N, ncols); break;
      }
    }
  }
}
}  // namespace zoneout_gemm
