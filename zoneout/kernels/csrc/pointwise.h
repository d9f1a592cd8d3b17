// Pointwise math of the fused zoneout recurrences, one batch row at a time (no torch headers, so
// it can be compiled and inspected on its own: g++ -O3 -mavx2 -mfma -fopt-info-vec).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace zoneout_pw {

// ---------------------------------------------------------------------------------------------
// Every pointer is non-null: absent masks are passed as rows filled with the constant factor (rate,
// 0 or 1), which keeps the loops branch-free so GCC vectorises them.
//
// Activations. float: a Cephes-style exp polynomial that GCC auto-vectorises (std::exp calls do
// not vectorise without -ffast-math); |rel err| ~1e-7. double: libm, so float64 gradcheck tests
// the exact math.
inline float exp_approx(float x) {
  // Branch-free clamp and round-to-nearest (the 1.5*2^23 trick) instead of fmin/floor, which
  // GCC only vectorises under -ffast-math-like flags.
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  float fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - fx * 0.693359375f + fx * 2.12194440e-4f;
  float r2 = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r2 + r + 1.0f;
  int32_t e = (static_cast<int32_t>(fx) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return y * scale;
}
inline float sigmoid_(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline float tanh_(float x) {
  // tanh(x) = 2*sigmoid(2x) - 1, but evaluated on |x| so e in (0, 1] never overflows.
  float ax = std::fabs(x);
  float e = exp_approx(-2.0f * ax);
  float t = (1.0f - e) / (1.0f + e);
  return std::copysign(t, x);
}
inline double sigmoid_(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

// m: the step's matrix product h_{t-1} @ W_hh^T (from BLAS or oneDNN, a scratch buffer);
// x: the input projection row. Outputs never alias inputs.
// b: the b_hh row (zeros when there is none); x + (m + b) is the reference's association.
template <typename scalar_t>
inline void act_range(scalar_t* __restrict out, const scalar_t* __restrict x, const scalar_t* __restrict m,
                      const scalar_t* __restrict b, int64_t n, bool is_tanh) {
  if (is_tanh) {
    for (int64_t j = 0; j < n; ++j) out[j] = tanh_(x[j] + (m[j] + b[j]));
  } else {
    for (int64_t j = 0; j < n; ++j) out[j] = sigmoid_(x[j] + (m[j] + b[j]));
  }
}

template <typename scalar_t>
inline void lstm_state_row(const scalar_t* __restrict gi, const scalar_t* __restrict gf,
                           const scalar_t* __restrict gg, const scalar_t* __restrict go,
                           const scalar_t* __restrict cp, scalar_t* __restrict c_out,
                           const scalar_t* __restrict hp, scalar_t* __restrict h_out, scalar_t* __restrict tc_out,
                           const scalar_t* __restrict kc, const scalar_t* __restrict kh,
                           const scalar_t* __restrict u, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    scalar_t i = gi[j], f = gf[j], gt = gg[j], o = go[j];
    scalar_t gu = gt * u[j];
    scalar_t c_prev = cp[j];
    scalar_t cn = f * c_prev + i * gu;
    scalar_t t = tanh_(cn);
    scalar_t hn = o * t;
    scalar_t ac = kc[j];
    scalar_t ah = kh[j];
    c_out[j] = ac * c_prev + (scalar_t(1) - ac) * cn;
    h_out[j] = ah * hp[j] + (scalar_t(1) - ah) * hn;
    tc_out[j] = t;
  }
}

// g: activated gates out [4H] (i, f, g, o); then the zoneout state update reads them.
template <typename scalar_t>
void lstm_fwd_point(scalar_t* g, const scalar_t* m, const scalar_t* x, const scalar_t* b, const scalar_t* cp, scalar_t* c_out,
                    const scalar_t* hp, scalar_t* h_out, scalar_t* tc_out, const scalar_t* kc, const scalar_t* kh,
                    const scalar_t* u, int64_t H) {
  act_range<scalar_t>(g, x, m, b, 2 * H, false);
  act_range<scalar_t>(g + 2 * H, x + 2 * H, m + 2 * H, b + 2 * H, H, true);
  act_range<scalar_t>(g + 3 * H, x + 3 * H, m + 3 * H, b + 3 * H, H, false);
  lstm_state_row<scalar_t>(g, g + H, g + 2 * H, g + 3 * H, cp, c_out, hp, h_out, tc_out, kc, kh, u, H);
}

// The gate blocks of one row are passed as separate __restrict pointers: GCC cannot prove that
// writes to g + k*H (runtime H) do not overlap, and would not vectorise otherwise.
// r: dG_{t+1} @ W_hh (this step's share of the recurrent gradient), dh: the zoneout carry.
template <typename scalar_t>
inline void lstm_bwd_row(const scalar_t* __restrict gi, const scalar_t* __restrict gf,
                         const scalar_t* __restrict gg, const scalar_t* __restrict go,
                         const scalar_t* __restrict tc, const scalar_t* __restrict cp,
                         const scalar_t* __restrict dhs, const scalar_t* __restrict r, scalar_t* __restrict dh,
                         scalar_t* __restrict dc, scalar_t* __restrict dgi, scalar_t* __restrict dgf,
                         scalar_t* __restrict dgg, scalar_t* __restrict dgo, const scalar_t* __restrict kc,
                         const scalar_t* __restrict kh, const scalar_t* __restrict u,
                         const scalar_t* __restrict dcs, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    scalar_t ah = kh[j];
    scalar_t ac = kc[j];
    scalar_t dht = dh[j] + r[j] + dhs[j];
    scalar_t dct = dc[j] + dcs[j];
    scalar_t dhn = (scalar_t(1) - ah) * dht;
    scalar_t i = gi[j], f = gf[j], gt = gg[j], o = go[j], t = tc[j];
    scalar_t dcn = (scalar_t(1) - ac) * dct + dhn * o * (scalar_t(1) - t * t);
    scalar_t uj = u[j];
    dgi[j] = dcn * gt * uj * i * (scalar_t(1) - i);
    dgf[j] = dcn * cp[j] * f * (scalar_t(1) - f);
    dgg[j] = dcn * i * uj * (scalar_t(1) - gt * gt);
    dgo[j] = dhn * t * o * (scalar_t(1) - o);
    dh[j] = ah * dht;
    dc[j] = ac * dct + dcn * f;
  }
}

template <typename scalar_t>
// dcs: the gradient arriving at this step's zoned cell from outside (the returned cell sequence),
// a zeros row when the cells are not an output.
void lstm_bwd_point(const scalar_t* g, const scalar_t* tc, const scalar_t* cp, const scalar_t* dhs, const scalar_t* r,
                    scalar_t* dh, scalar_t* dc, scalar_t* dG, const scalar_t* kc, const scalar_t* kh,
                    const scalar_t* u, const scalar_t* dcs, int64_t H) {
  lstm_bwd_row<scalar_t>(g, g + H, g + 2 * H, g + 3 * H, tc, cp, dhs, r, dh, dc, dG, dG + H, dG + 2 * H,
                         dG + 3 * H, kc, kh, u, dcs, H);
}

template <typename scalar_t>
inline void gru_fwd_row(const scalar_t* __restrict xr, const scalar_t* __restrict xz,
                        const scalar_t* __restrict xn, const scalar_t* __restrict mr,
                        const scalar_t* __restrict mz, const scalar_t* __restrict mn,
                        const scalar_t* __restrict br, const scalar_t* __restrict bz,
                        const scalar_t* __restrict bn, scalar_t* __restrict r_out, scalar_t* __restrict z_out,
                        scalar_t* __restrict hn_out, scalar_t* __restrict n_out, const scalar_t* __restrict hp,
                        scalar_t* __restrict h_out, const scalar_t* __restrict kh, const scalar_t* __restrict u,
                        int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    scalar_t r = sigmoid_(xr[j] + (mr[j] + br[j]));
    scalar_t z = sigmoid_(xz[j] + (mz[j] + bz[j]));
    scalar_t hn = mn[j] + bn[j];
    scalar_t n = tanh_(xn[j] + r * hn);
    r_out[j] = r; z_out[j] = z; hn_out[j] = hn;  // (r, z, W_hn h + b_hn) are what backward needs
    n_out[j] = n;
    scalar_t nu = n * u[j];
    scalar_t h_prev = hp[j];
    scalar_t hnew = (scalar_t(1) - z) * nu + z * h_prev;
    scalar_t ah = kh[j];
    h_out[j] = ah * h_prev + (scalar_t(1) - ah) * hnew;
  }
}

// m: h_{t-1} @ W_hh^T (no bias); hh out: (r, z, W_hn h + b_hn); b: b_hh row [3H] (zeros if none).
template <typename scalar_t>
void gru_fwd_point(const scalar_t* x, const scalar_t* m, scalar_t* hh, const scalar_t* b, scalar_t* n_out,
                   const scalar_t* hp, scalar_t* h_out, const scalar_t* kh, const scalar_t* u, int64_t H) {
  gru_fwd_row<scalar_t>(x, x + H, x + 2 * H, m, m + H, m + 2 * H, b, b + H, b + 2 * H, hh, hh + H, hh + 2 * H, n_out,
                        hp, h_out, kh, u, H);
}

template <typename scalar_t>
inline void gru_bwd_row(const scalar_t* __restrict rr, const scalar_t* __restrict zz,
                        const scalar_t* __restrict hn_, const scalar_t* __restrict n_,
                        const scalar_t* __restrict hp, const scalar_t* __restrict dhs, const scalar_t* __restrict rm,
                        scalar_t* __restrict dh, scalar_t* __restrict dxr, scalar_t* __restrict dxz,
                        scalar_t* __restrict dxn, scalar_t* __restrict dhr, scalar_t* __restrict dhz,
                        scalar_t* __restrict dhn, const scalar_t* __restrict kh, const scalar_t* __restrict u,
                        int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    scalar_t r = rr[j], z = zz[j], hn = hn_[j], n = n_[j];
    scalar_t ah = kh[j];
    scalar_t uj = u[j];
    scalar_t dht = dh[j] + rm[j] + dhs[j];
    scalar_t dnew = (scalar_t(1) - ah) * dht;
    scalar_t h_prev = hp[j];
    scalar_t dgz = dnew * (h_prev - n * uj) * z * (scalar_t(1) - z);
    scalar_t dgn = dnew * (scalar_t(1) - z) * uj * (scalar_t(1) - n * n);
    scalar_t dgr = dgn * hn * r * (scalar_t(1) - r);
    dxr[j] = dgr; dxz[j] = dgz; dxn[j] = dgn;
    dhr[j] = dgr; dhz[j] = dgz; dhn[j] = dgn * r;
    dh[j] = ah * dht + dnew * z;
  }
}

template <typename scalar_t>
void gru_bwd_point(const scalar_t* hh, const scalar_t* n_, const scalar_t* hp, const scalar_t* dhs, const scalar_t* r,
                   scalar_t* dh, scalar_t* dx, scalar_t* dhh, const scalar_t* kh, const scalar_t* u, int64_t H) {
  gru_bwd_row<scalar_t>(hh, hh + H, hh + 2 * H, n_, hp, dhs, r, dh, dx, dx + H, dx + 2 * H, dhh, dhh + H,
                        dhh + 2 * H, kh, u, H);
}

template <typename scalar_t, bool relu>
void rnn_fwd_point(scalar_t* __restrict a_out, const scalar_t* __restrict m, const scalar_t* __restrict x,
                   const scalar_t* __restrict bias, const scalar_t* __restrict hp, scalar_t* __restrict h_out, const scalar_t* __restrict kh,
                   const scalar_t* __restrict u, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    scalar_t p = x[j] + (m[j] + bias[j]);
    scalar_t a = relu ? (p > scalar_t(0) ? p : scalar_t(0)) : tanh_(p);
    a_out[j] = a;
    scalar_t hn = a * u[j];
    scalar_t ah = kh[j];
    h_out[j] = ah * hp[j] + (scalar_t(1) - ah) * hn;
  }
}

template <typename scalar_t, bool relu>
void rnn_bwd_point(const scalar_t* __restrict a, const scalar_t* __restrict dhs, const scalar_t* __restrict r,
                   scalar_t* __restrict dh, scalar_t* __restrict dpre, const scalar_t* __restrict kh,
                   const scalar_t* __restrict u, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    scalar_t ah = kh[j];
    scalar_t dht = dh[j] + r[j] + dhs[j];
    scalar_t dnew = (scalar_t(1) - ah) * dht * u[j];
    scalar_t act = a[j];
    dpre[j] = relu ? (act > scalar_t(0) ? dnew : scalar_t(0)) : dnew * (scalar_t(1) - act * act);
    dh[j] = ah * dht;
  }
}

}  // namespace zoneout_pw
