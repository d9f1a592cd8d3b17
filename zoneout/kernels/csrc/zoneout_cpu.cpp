// Fused zoneout recurrences for CPU (Krueger et al., ICLR 2017, §3).
//
// One call runs a whole sequence of one layer/direction: the time loop lives here, each step is
// one matrix product (h_{t-1} @ W_hh^T) and one fused pointwise pass (input projection add,
// activations, cell update, zoneout mix). The per-step products (see StepProduct) run in our own
// small GEMM (small_gemm.h, float32, weight packed once per sequence, no library call per step)
// when the weight fits the cache, else in oneDNN with a weight the caller pre-packed once per
// sequence (torch.ops.mkldnn._reorder_linear_weight; 1.3-2x faster than the BLAS path for these
// small-M products on the machines measured), else at::mm. The backward pass is hand-written BPTT;
// the weight gradient dW_hh = sum_t dG_t^T h_{t-1} is ONE large GEMM over [T*B] after the loop.
//
// Zoneout factor per step ("a" below): the 0/1 keep mask in training, the keep rate p in eval
// (the expectation), 0 when there is no zoneout. state_t = a*prev + (1-a)*new, the same two-product
// form as zoneout.functional.mix, so a 0/1 mask is bit-exact.
//
// Layouts (all contiguous, row-major): xw [T,B,G*H], masks [T,B,H], w_hh [G*H,H], states [B,H].
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "pointwise.h"
#if defined(__AVX2__) && defined(__FMA__)
#include "small_gemm.h"
#define ZONEOUT_OWN_GEMM 1
#else
#define ZONEOUT_OWN_GEMM 0
#endif

namespace {

using namespace zoneout_pw;
using at::Tensor;
using c10::optional;

// Row source for the pointwise kernels: rows of a [T,B,H] mask, or one constant row (rate, 0 or 1)
// when there is no mask, so the kernels never branch on "is there a mask".
template <typename scalar_t>
struct Rows {
  const scalar_t* base = nullptr;
  std::vector<scalar_t> fill;
  int64_t B = 0, H = 0;
  inline const scalar_t* row(int64_t t, int64_t b) const { return base ? base + (t * B + b) * H : fill.data(); }
};

template <typename scalar_t>
Rows<scalar_t> make_rows(const optional<Tensor>& mask, double value, int64_t B, int64_t H) {
  Rows<scalar_t> r;
  r.B = B;
  r.H = H;
  if (mask.has_value() && mask->defined()) r.base = mask->data_ptr<scalar_t>();
  else r.fill.assign(H, static_cast<scalar_t>(value));
  return r;
}

// Zoneout factor: training uses the mask (no mask = no zoneout), eval the rate (the expectation).
template <typename scalar_t>
Rows<scalar_t> make_keep(const optional<Tensor>& mask, double p, bool training, int64_t B, int64_t H) {
  return training ? make_rows<scalar_t>(mask, 0.0, B, H) : make_rows<scalar_t>(optional<Tensor>(), p, B, H);
}

// Pointwise work per step is parallelised over batch rows only when it is big enough to pay for
// the fork/join (measured: ~32k elements per step on a 2-core EPYC).
inline int64_t grain_rows(int64_t H) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(H, 1)); }

// Per-step product x @ W^T (forward: W = w_hh) or x @ w_hh (backward: W = w_hh^T).
// float32 with W up to 8 MB (AVX2+FMA builds): small_gemm.h into a reused scratch buffer, W packed
// once per sequence. Else with a oneDNN-packed weight: mkldnn::_linear_pointwise (the op has no
// C++ header; called through the dispatcher), which returns a fresh tensor. Else at::mm into scratch.
using LinearFn = Tensor(const Tensor&, const Tensor&, const optional<Tensor>&, c10::string_view,
                        c10::List<optional<at::Scalar>>, optional<c10::string_view>);

struct StepProduct {
  Tensor w_view;   // [N, K] in nn.Linear layout: result = x @ w_view^T
  Tensor packed;   // undefined -> at::mm
  Tensor scratch;  // [B, N]
#if ZONEOUT_OWN_GEMM
  bool own = false;  // small_gemm.h (float32, W small enough): no per-step library call
  zoneout_gemm::PackedW pw;
  std::vector<float> ap;
#endif
  Tensor operator()(const Tensor& x) {
#if ZONEOUT_OWN_GEMM
    if (own) {
      const int64_t M = x.size(0);
      zoneout_gemm::pack_a(ap, x.data_ptr<float>(), M, pw.K);
      float* c = scratch.data_ptr<float>();
      const float* a = ap.data();
      // Column panels split across torch's threads (one thread: runs inline).
      const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(M * pw.K, 1));
      at::parallel_for(0, pw.panels, grain, [&](int64_t p0, int64_t p1) {
        zoneout_gemm::gemm_panels(pw, a, M, c, p0, p1);
      });
      return scratch;
    }
#endif
    if (packed.defined()) {
      static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
      // Unboxed call (no IValue stack per step) when this torch's C++ signature is the expected one.
      using Typed = c10::TypedOperatorHandle<LinearFn>;
      static const optional<Typed> typed = []() -> optional<Typed> {
        try {
          return op.typed<LinearFn>();
        } catch (const c10::Error&) {
          return c10::nullopt;
        }
      }();
      if (typed.has_value()) {
        return typed->call(x, packed, optional<Tensor>(), "none", c10::List<optional<at::Scalar>>(),
                           optional<c10::string_view>(""));
      }
      std::vector<c10::IValue> stack;
      stack.reserve(6);
      stack.emplace_back(x);
      stack.emplace_back(packed);
      stack.emplace_back(c10::IValue());
      stack.emplace_back(std::string("none"));
      stack.emplace_back(c10::List<std::optional<at::Scalar>>());
      stack.emplace_back(std::string(""));
      op.callBoxed(stack);
      return stack[0].toTensor();
    }
    at::mm_out(scratch, x, w_view.t());
    return scratch;
  }
};

StepProduct make_product(const Tensor& w_linear, const optional<Tensor>& packed, int64_t B) {
  // w_linear: the weight in nn.Linear layout [N, K] (result = x @ w_linear^T).
  StepProduct p;
  p.w_view = w_linear;
#if ZONEOUT_OWN_GEMM
  const int64_t N = w_linear.size(0), K = w_linear.size(1);
  if (w_linear.scalar_type() == at::kFloat && zoneout_gemm::own_gemm_applies(N, K)) {
    p.own = true;
    zoneout_gemm::pack_w(p.pw, w_linear.data_ptr<float>(), N, K, w_linear.stride(0), w_linear.stride(1));
    p.scratch = at::empty({B, N}, w_linear.options());
    return p;
  }
#endif
  if (packed.has_value() && packed->defined()) p.packed = *packed;
  else p.scratch = at::empty({B, w_linear.size(0)}, w_linear.options());
  return p;
}

// =============================================================================================
// LSTM
// =============================================================================================
// Returns {hs [T,B,H], cs [T,B,H], gates [T,B,4H] activated, tanh(c_new) [T,B,H]}; with
// save=false the last two are one-step scratch buffers and cs holds only the last two steps.
std::vector<Tensor> lstm_forward(const Tensor& xw, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                 const optional<Tensor>& keep_c, const optional<Tensor>& keep_h,
                                 const optional<Tensor>& update, double p_c, double p_h, bool training,
                                 bool save, const optional<Tensor>& w_packed, const optional<Tensor>& b_hh) {
  const int64_t T = xw.size(0), B = xw.size(1), H = h0.size(1);
  auto hs = at::empty({T, B, H}, xw.options());
  auto cs = at::empty({save ? T : 2, B, H}, xw.options());
  // Without save G and TC are one-step scratch (measured: the two-pass pointwise vectorises better
  // than keeping the gates in registers, 3.2 vs 3.9 ms per 100 steps at B32 H256).
  auto G = at::empty({save ? T : 1, B, 4 * H}, xw.options());
  auto TC = at::empty({save ? T : 1, B, H}, xw.options());
  auto prod = make_product(w_hh, w_packed, B);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "zoneout_lstm_forward", [&] {
    auto kc = make_keep<scalar_t>(keep_c, p_c, training, B, H);
    auto kh = make_keep<scalar_t>(keep_h, p_h, training, B, H);
    auto uu = make_rows<scalar_t>(update, 1.0, B, H);
    auto bias = make_rows<scalar_t>(b_hh, 0.0, 1, 4 * H);  // zeros when there is no b_hh
    const scalar_t* bp = bias.row(0, 0);
    scalar_t* hs0 = hs.data_ptr<scalar_t>();
    scalar_t* cs0 = cs.data_ptr<scalar_t>();
    const scalar_t* xw0 = xw.data_ptr<scalar_t>();
    scalar_t* G0 = G.data_ptr<scalar_t>();
    scalar_t* TC0 = TC.data_ptr<scalar_t>();
    const scalar_t* hpp = h0.data_ptr<scalar_t>();
    const scalar_t* cpp = c0.data_ptr<scalar_t>();
    const int64_t BH = B * H, BG = B * 4 * H;
    for (int64_t t = 0; t < T; ++t) {
      Tensor m = prod(t == 0 ? h0 : hs.select(0, t - 1));
      const scalar_t* mp = m.data_ptr<scalar_t>();
      const scalar_t* xp = xw0 + t * BG;
      scalar_t* cop = cs0 + (save ? t : (t & 1)) * BH;
      scalar_t* hop = hs0 + t * BH;
      scalar_t* gp = G0 + (save ? t : 0) * BG;
      scalar_t* tcp = TC0 + (save ? t : 0) * BH;
      at::parallel_for(0, B, grain_rows(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          lstm_fwd_point<scalar_t>(gp + b * 4 * H, mp + b * 4 * H, xp + b * 4 * H, bp, cpp + b * H, cop + b * H,
                                   hpp + b * H, hop + b * H, tcp + b * H, kc.row(t, b), kh.row(t, b),
                                   uu.row(t, b), H);
        }
      });
      hpp = hop;
      cpp = cop;
    }
  });
  return {hs, cs, G, TC};
}

// dW = sum_t dG_t^T h_{t-1}: one GEMM over the T*B rows (h_{-1} = h0).
Tensor weight_grad(const Tensor& dG, const Tensor& h0, const Tensor& hs) {
  const int64_t T = dG.size(0), B = dG.size(1), N = dG.size(2), H = h0.size(1);
  auto dG2 = dG.view({T * B, N});
  auto dw = at::mm(dG2.narrow(0, 0, B).t(), h0);
  if (T > 1) dw.addmm_(dG2.narrow(0, B, (T - 1) * B).t(), hs.view({T * B, H}).narrow(0, 0, (T - 1) * B));
  return dw;
}

// Returns {dxw [T,B,4H], dh0, dc0, dw_hh [4H,H]}. wt_packed: oneDNN-packed w_hh^T (or none).
std::vector<Tensor> lstm_backward(const Tensor& dhs, const Tensor& dhT, const Tensor& dcT, const Tensor& h0,
                                  const Tensor& c0, const Tensor& w_hh, const Tensor& hs, const Tensor& cs,
                                  const Tensor& G, const Tensor& TC, const optional<Tensor>& keep_c,
                                  const optional<Tensor>& keep_h, const optional<Tensor>& update, double p_c,
                                  double p_h, bool training, const optional<Tensor>& wt_packed,
                                  const optional<Tensor>& dcs) {
  const int64_t T = G.size(0), B = G.size(1), H = h0.size(1);
  auto dG = at::empty({T, B, 4 * H}, G.options());
  auto dh = dhT.clone();  // zoneout carry a*dh_t; the recurrent share dG_{t+1} @ W_hh arrives in r
  auto dc = dcT.clone();
  Tensor r = at::zeros_like(dh);
  auto prod = make_product(w_hh.t(), wt_packed, B);
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "zoneout_lstm_backward", [&] {
    auto kc = make_keep<scalar_t>(keep_c, p_c, training, B, H);
    auto kh = make_keep<scalar_t>(keep_h, p_h, training, B, H);
    auto uu = make_rows<scalar_t>(update, 1.0, B, H);
    auto dd = make_rows<scalar_t>(dcs, 0.0, B, H);  // gradient of the returned cell sequence, or zeros
    scalar_t* dhp = dh.data_ptr<scalar_t>();
    scalar_t* dcp = dc.data_ptr<scalar_t>();
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* gp = G[t].data_ptr<scalar_t>();
      const scalar_t* tcp = TC[t].data_ptr<scalar_t>();
      const scalar_t* cpp = (t > 0 ? cs[t - 1] : c0).data_ptr<scalar_t>();
      const scalar_t* dhsp = dhs[t].data_ptr<scalar_t>();
      const scalar_t* rp = r.data_ptr<scalar_t>();
      Tensor dG_t = dG[t];
      scalar_t* dGp = dG_t.data_ptr<scalar_t>();
      at::parallel_for(0, B, grain_rows(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          lstm_bwd_point<scalar_t>(gp + b * 4 * H, tcp + b * H, cpp + b * H, dhsp + b * H, rp + b * H, dhp + b * H,
                                   dcp + b * H, dGp + b * 4 * H, kc.row(t, b), kh.row(t, b), uu.row(t, b),
                                   dd.row(t, b), H);
        }
      });
      r = prod(dG_t);
    }
  });
  dh.add_(r);
  return {dG, dh, dc, weight_grad(dG, h0, hs)};
}

// =============================================================================================
// GRU (torch's: n = tanh(xn + r * (W_hn h + b_hn)), h_new = (1-z)*n + z*h)
// =============================================================================================
// Returns {hs [T,B,H], HH [T,B,3H] = (r, z, W_hn h + b_hn), N [T,B,H] = n before update mask}.
std::vector<Tensor> gru_forward(const Tensor& xw, const Tensor& h0, const Tensor& w_hh, const optional<Tensor>& b_hh,
                                const optional<Tensor>& keep_h, const optional<Tensor>& update, double p_h,
                                bool training, bool save, const optional<Tensor>& w_packed) {
  const int64_t T = xw.size(0), B = xw.size(1), H = h0.size(1);
  auto hs = at::empty({T, B, H}, xw.options());
  auto HH = at::empty({save ? T : 1, B, 3 * H}, xw.options());
  auto N = at::empty({save ? T : 1, B, H}, xw.options());
  auto prod = make_product(w_hh, w_packed, B);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "zoneout_gru_forward", [&] {
    auto kh = make_keep<scalar_t>(keep_h, p_h, training, B, H);
    auto uu = make_rows<scalar_t>(update, 1.0, B, H);
    auto bias = make_rows<scalar_t>(b_hh, 0.0, 1, 3 * H);  // zeros when there is no b_hh
    const scalar_t* bp = bias.row(0, 0);
    Tensor h_prev = h0;
    for (int64_t t = 0; t < T; ++t) {
      Tensor m = prod(h_prev);
      Tensor h_t = hs[t];
      const scalar_t* xp = xw[t].data_ptr<scalar_t>();
      const scalar_t* mp = m.data_ptr<scalar_t>();
      scalar_t* hhp = HH[save ? t : 0].data_ptr<scalar_t>();
      scalar_t* np_ = N[save ? t : 0].data_ptr<scalar_t>();
      const scalar_t* hpp = h_prev.data_ptr<scalar_t>();
      scalar_t* hop = h_t.data_ptr<scalar_t>();
      at::parallel_for(0, B, grain_rows(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          gru_fwd_point<scalar_t>(xp + b * 3 * H, mp + b * 3 * H, hhp + b * 3 * H, bp, np_ + b * H, hpp + b * H,
                                  hop + b * H, kh.row(t, b), uu.row(t, b), H);
        }
      });
      h_prev = h_t;
    }
  });
  return {hs, HH, N};
}

// Returns {dxw [T,B,3H], dh0, dw_hh [3H,H], db_hh [3H]}.
std::vector<Tensor> gru_backward(const Tensor& dhs, const Tensor& dhT, const Tensor& h0, const Tensor& w_hh,
                                 const Tensor& hs, const Tensor& HH, const Tensor& N,
                                 const optional<Tensor>& keep_h, const optional<Tensor>& update, double p_h,
                                 bool training, const optional<Tensor>& wt_packed) {
  const int64_t T = HH.size(0), B = HH.size(1), H = h0.size(1);
  auto dX = at::empty({T, B, 3 * H}, HH.options());
  auto dHH = at::empty({T, B, 3 * H}, HH.options());
  auto dh = dhT.clone();
  Tensor r = at::zeros_like(dh);
  auto prod = make_product(w_hh.t(), wt_packed, B);
  AT_DISPATCH_FLOATING_TYPES(HH.scalar_type(), "zoneout_gru_backward", [&] {
    auto kh = make_keep<scalar_t>(keep_h, p_h, training, B, H);
    auto uu = make_rows<scalar_t>(update, 1.0, B, H);
    scalar_t* dhp = dh.data_ptr<scalar_t>();
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* hhp = HH[t].data_ptr<scalar_t>();
      const scalar_t* np_ = N[t].data_ptr<scalar_t>();
      const scalar_t* hpp = (t > 0 ? hs[t - 1] : h0).data_ptr<scalar_t>();
      const scalar_t* dhsp = dhs[t].data_ptr<scalar_t>();
      const scalar_t* rp = r.data_ptr<scalar_t>();
      scalar_t* dxp = dX[t].data_ptr<scalar_t>();
      Tensor dhh_t = dHH[t];
      scalar_t* dhhp = dhh_t.data_ptr<scalar_t>();
      at::parallel_for(0, B, grain_rows(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          gru_bwd_point<scalar_t>(hhp + b * 3 * H, np_ + b * H, hpp + b * H, dhsp + b * H, rp + b * H, dhp + b * H,
                                  dxp + b * 3 * H, dhhp + b * 3 * H, kh.row(t, b), uu.row(t, b), H);
        }
      });
      r = prod(dhh_t);
    }
  });
  dh.add_(r);
  auto db = dHH.view({T * B, 3 * H}).sum(0);
  return {dX, dh, weight_grad(dHH, h0, hs), db};
}

// =============================================================================================
// Elman RNN: h_new = act(xw + W_hh h) * update
// =============================================================================================
// Returns {hs [T,B,H], A [T,B,H] = act(pre)}.
std::vector<Tensor> rnn_forward(const Tensor& xw, const Tensor& h0, const Tensor& w_hh,
                                const optional<Tensor>& keep_h, const optional<Tensor>& update, double p_h,
                                bool training, bool relu, bool save, const optional<Tensor>& w_packed,
                                const optional<Tensor>& b_hh) {
  const int64_t T = xw.size(0), B = xw.size(1), H = h0.size(1);
  auto hs = at::empty({T, B, H}, xw.options());
  auto A = at::empty({save ? T : 1, B, H}, xw.options());
  auto prod = make_product(w_hh, w_packed, B);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "zoneout_rnn_forward", [&] {
    auto kh = make_keep<scalar_t>(keep_h, p_h, training, B, H);
    auto uu = make_rows<scalar_t>(update, 1.0, B, H);
    auto fwd = relu ? rnn_fwd_point<scalar_t, true> : rnn_fwd_point<scalar_t, false>;
    auto bias = make_rows<scalar_t>(b_hh, 0.0, 1, H);
    const scalar_t* bp = bias.row(0, 0);
    Tensor h_prev = h0;
    for (int64_t t = 0; t < T; ++t) {
      Tensor m = prod(h_prev);
      Tensor h_t = hs[t];
      scalar_t* ap = A[save ? t : 0].data_ptr<scalar_t>();
      const scalar_t* mp = m.data_ptr<scalar_t>();
      const scalar_t* xp = xw[t].data_ptr<scalar_t>();
      const scalar_t* hpp = h_prev.data_ptr<scalar_t>();
      scalar_t* hop = h_t.data_ptr<scalar_t>();
      at::parallel_for(0, B, grain_rows(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          fwd(ap + b * H, mp + b * H, xp + b * H, bp, hpp + b * H, hop + b * H, kh.row(t, b), uu.row(t, b), H);
        }
      });
      h_prev = h_t;
    }
  });
  return {hs, A};
}

// Returns {dxw [T,B,H], dh0, dw_hh [H,H]}.
std::vector<Tensor> rnn_backward(const Tensor& dhs, const Tensor& dhT, const Tensor& h0, const Tensor& w_hh,
                                 const Tensor& hs, const Tensor& A, const optional<Tensor>& keep_h,
                                 const optional<Tensor>& update, double p_h, bool training, bool relu,
                                 const optional<Tensor>& wt_packed) {
  const int64_t T = A.size(0), B = A.size(1), H = h0.size(1);
  auto dP = at::empty({T, B, H}, A.options());
  auto dh = dhT.clone();
  Tensor r = at::zeros_like(dh);
  auto prod = make_product(w_hh.t(), wt_packed, B);
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "zoneout_rnn_backward", [&] {
    auto kh = make_keep<scalar_t>(keep_h, p_h, training, B, H);
    auto uu = make_rows<scalar_t>(update, 1.0, B, H);
    auto bwd = relu ? rnn_bwd_point<scalar_t, true> : rnn_bwd_point<scalar_t, false>;
    scalar_t* dhp = dh.data_ptr<scalar_t>();
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* ap = A[t].data_ptr<scalar_t>();
      const scalar_t* dhsp = dhs[t].data_ptr<scalar_t>();
      const scalar_t* rp = r.data_ptr<scalar_t>();
      Tensor dp_t = dP[t];
      scalar_t* dpp = dp_t.data_ptr<scalar_t>();
      at::parallel_for(0, B, grain_rows(H), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          bwd(ap + b * H, dhsp + b * H, rp + b * H, dhp + b * H, dpp + b * H, kh.row(t, b), uu.row(t, b), H);
        }
      });
      r = prod(dp_t);
    }
  });
  dh.add_(r);
  return {dP, dh, weight_grad(dP, h0, hs)};
}

// =============================================================================================
// Keep masks: Bernoulli(p) as float 0/1, from a counter-based hash (two rounds of Wellons'
// lowbias32) keyed by a 64-bit seed that the caller draws from torch's global generator. ~20x
// faster than bernoulli_ and the hash loop vectorises; same seed -> same mask.
// =============================================================================================
inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

template <typename scalar_t>
void fill_keep(scalar_t* __restrict out, int64_t begin, int64_t end, uint32_t s1, uint32_t s2, uint32_t thr) {
  for (int64_t i = begin; i < end; ++i) {
    uint32_t h = lowbias32(lowbias32(static_cast<uint32_t>(i) ^ s1) + s2);
    out[i] = static_cast<int32_t>(h >> 8) < static_cast<int32_t>(thr) ? scalar_t(1) : scalar_t(0);
  }
}

Tensor keep_mask(at::IntArrayRef shape, double p, int64_t seed, const Tensor& like) {
  auto out = at::empty(shape, like.options());
  const int64_t n = out.numel();
  TORCH_CHECK(n < (int64_t(1) << 32), "zoneout keep_mask: at most 2^32 elements per call");
  // P(keep) = thr / 2^24 with thr = round(p * 2^24): exact for p in {0, 1}, else within 3e-8.
  const uint32_t thr = static_cast<uint32_t>(std::llround(p * 16777216.0));
  const uint64_t useed = static_cast<uint64_t>(seed);
  const uint32_t s1 = static_cast<uint32_t>(useed), s2 = static_cast<uint32_t>(useed >> 32);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "zoneout_keep_mask", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 65536, [&](int64_t b, int64_t e) { fill_keep<scalar_t>(o, b, e, s1, s2, thr); });
  });
  return out;
}

// True when the per-step products of a float32 weight [N, K] use small_gemm.h (then the caller
// need not pack the weight for oneDNN).
bool own_gemm(int64_t N, int64_t K) {
#if ZONEOUT_OWN_GEMM
  return zoneout_gemm::own_gemm_applies(N, K);
#else
  (void)N;
  (void)K;
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("own_gemm", &own_gemm);
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
  m.def("rnn_forward", &rnn_forward);
  m.def("rnn_backward", &rnn_backward);
  m.def("keep_mask", &keep_mask);
}
