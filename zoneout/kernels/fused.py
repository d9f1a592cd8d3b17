"""Whole-sequence zoneout recurrences with hand-written BPTT (Krueger et al., ICLR 2017, §3).

Layering (as lmnt-com/haste): reference math (``zoneout.cells`` step functions) → these fused
recurrences → ``torch.autograd.Function`` → the ``nn.Module`` layers in ``zoneout.rnn``.

Each ``*_recurrence`` runs ONE layer/direction over a whole sequence, given the input projection
for all steps. The autograd graph holds one node per sequence instead of ~15 per step; the backward
pass walks the sequence once, and the recurrent weight gradient is a single GEMM over all ``T*B``
rows after the loop. The time loop and the pointwise math run in the C++ extension
(``csrc/zoneout_cpu.cpp``) when it builds, else in the pure-PyTorch twin below (same algorithm,
same saved tensors, slower: ~15 dispatched ops per step instead of one fused pass). In float32 the
per-step products run in the extension's own small GEMM (``csrc/small_gemm.h``, weight packed once
per sequence, no library call per step) while the weight fits the cache, else through oneDNN with
the weight packed once per sequence (:func:`_pack`); on the measured AMD EPYC both are 1.3-2x
faster than the default BLAS path. :func:`input_projection` is the matching oneDNN product for the
input projection of all steps (the layer computes ``xw``).

Zoneout factor per step: the 0/1 keep mask in training (None = no zoneout), the keep rate ``p`` in
eval (the expectation ``p*prev + (1-p)*new``); masks are ignored in eval, rates in training.
``update_mask`` (recurrent dropout, already scaled by ``1/(1-p)``) multiplies the LSTM cell input
``g`` / the GRU candidate ``n`` / the RNN candidate whenever it is given.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _build

__all__ = ["lstm_recurrence", "lstm_sequence", "gru_recurrence", "rnn_recurrence", "input_projection", "available",
           "use_extension"]

# None = decide on first use (build the extension if possible); True/False forces the choice.
_USE_EXT: Optional[bool] = None
# oneDNN for the per-step products (float32 CPU, C++ path): None = when torch has mkldnn.
_USE_ONEDNN: Optional[bool] = None


def use_extension(flag: Optional[bool]) -> None:
    """Force the C++ extension on/off (None = automatic). Tests use this to cover both paths."""
    global _USE_EXT
    _USE_EXT = flag


def _ext():
    if _USE_EXT is False:
        return None
    return _build.load()


def available() -> bool:
    """True when the fused recurrences can run (always on CPU: the pure-PyTorch twin is the floor).

    Whether the compiled kernels are in use: ``zoneout.kernels.extension_loaded()``.
    """
    return True


# ------------------------------------------------------------------------------------------------
# argument preparation
# ------------------------------------------------------------------------------------------------
def _mask(m: Optional[Tensor], like: Tensor, T: int, B: int, H: int) -> Optional[Tensor]:
    """Masks as contiguous [T, B, H] in ``like``'s dtype (accepts broadcastable shapes)."""
    if m is None:
        return None
    m = m.to(dtype=like.dtype, device=like.device)
    if m.shape != (T, B, H):
        m = m.expand(T, B, H)
    return m.contiguous()


def _pack(w_linear: Tensor, batch: int) -> Optional[Tensor]:
    """``w_linear`` ([N, K], nn.Linear layout) packed for oneDNN's ``x @ w^T``, or None (use at::mm).

    Packing costs about one step's product and is done once per sequence (forward) and once per
    backward; oneDNN then runs the small per-step products 1.3-2x faster than the BLAS path here.
    """
    if _USE_ONEDNN is False or w_linear.dtype != torch.float32 or w_linear.device.type != "cpu":
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(w_linear.detach().contiguous(), batch)
    except (RuntimeError, AttributeError):  # op missing in this torch build
        return None


def _step_pack(w_linear: Tensor, batch: int) -> Optional[Tensor]:
    """:func:`_pack` for the per-step products of the C++ recurrences, or None when the extension
    runs them with its own small GEMM (``csrc/small_gemm.h``: float32, weight up to 8 MB), which
    needs no oneDNN packing and makes no library call per step."""
    ext = _build.load()
    if ext is not None and w_linear.dtype == torch.float32 and ext.own_gemm(*w_linear.shape):
        return None
    return _pack(w_linear, batch)


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _cpu(t: Tensor) -> bool:
    return t.device.type == "cpu"


# ------------------------------------------------------------------------------------------------
# pure-PyTorch twins of the C++ kernels (same outputs, same saved tensors)
# ------------------------------------------------------------------------------------------------
def _factor(keep: Optional[Tensor], p: float, training: bool, t: int):
    if training:
        return None if keep is None else keep[t]
    return p if p != 0.0 else None


def _mix(a, prev: Tensor, new: Tensor) -> Tensor:
    return new if a is None else a * prev + (1 - a) * new


def _lstm_forward_py(xw, h0, c0, w_hh, keep_c, keep_h, update, p_c, p_h, training, save):
    T, B, H4 = xw.shape
    H = H4 // 4
    hs = xw.new_empty(T, B, H)
    cs = xw.new_empty(T, B, H)
    G = xw.new_empty(T if save else 1, B, H4)
    TC = xw.new_empty(T, B, H) if save else None
    wT = w_hh.t()
    h, c = h0, c0
    for t in range(T):
        g = G[t if save else 0]
        torch.addmm(xw[t], h, wT, out=g)
        g[:, : 2 * H].sigmoid_()
        g[:, 2 * H : 3 * H].tanh_()
        g[:, 3 * H :].sigmoid_()
        i, f, gg, o = g.split(H, 1)
        if update is not None:
            gg = gg * update[t]
        cn = f * c + i * gg
        tc = torch.tanh(cn)
        hn = o * tc
        if save:
            TC[t] = tc
        cs[t] = _mix(_factor(keep_c, p_c, training, t), c, cn)
        hs[t] = _mix(_factor(keep_h, p_h, training, t), h, hn)
        h, c = hs[t], cs[t]
    return hs, cs, G, TC


def _lstm_backward_py(dhs, dhT, dcT, h0, c0, w_hh, hs, cs, G, TC, keep_c, keep_h, update, p_c, p_h, training,
                      dcs=None):
    T, B, H4 = G.shape
    H = H4 // 4
    dG = torch.empty_like(G)
    dh, dc = dhT.clone(), dcT.clone()
    for t in range(T - 1, -1, -1):
        if dcs is not None:  # gradient of the returned cell sequence at this step's zoned cell
            dc = dc + dcs[t]
        i, f, g, o = G[t].split(H, 1)
        tc = TC[t]
        c_prev = cs[t - 1] if t > 0 else c0
        ah = _factor(keep_h, p_h, training, t)
        ac = _factor(keep_c, p_c, training, t)
        dht = dh + dhs[t]
        dhn = dht if ah is None else (1 - ah) * dht
        dcn = (dc if ac is None else (1 - ac) * dc) + dhn * o * (1 - tc * tc)
        u = 1.0 if update is None else update[t]
        dGt = dG[t]
        dGt[:, :H] = dcn * (g * u) * i * (1 - i)
        dGt[:, H : 2 * H] = dcn * c_prev * f * (1 - f)
        dGt[:, 2 * H : 3 * H] = dcn * i * u * (1 - g * g)
        dGt[:, 3 * H :] = dhn * tc * o * (1 - o)
        dh = (torch.zeros_like(dht) if ah is None else ah * dht).addmm_(dGt, w_hh)
        dc = dcn * f if ac is None else ac * dc + dcn * f
    dG2 = dG.view(T * B, H4)
    dw = dG2[:B].t() @ h0
    if T > 1:
        dw.addmm_(dG2[B:].t(), hs.view(T * B, H)[: (T - 1) * B])
    return dG, dh, dc, dw


def _gru_forward_py(xw, h0, w_hh, b_hh, keep_h, update, p_h, training, save):
    T, B, H3 = xw.shape
    H = H3 // 3
    hs = xw.new_empty(T, B, H)
    HH = xw.new_empty(T if save else 1, B, H3)
    N = xw.new_empty(T if save else 1, B, H)
    wT = w_hh.t()
    h = h0
    for t in range(T):
        hh = HH[t if save else 0]
        if b_hh is None:
            torch.mm(h, wT, out=hh)
        else:
            torch.addmm(b_hh, h, wT, out=hh)
        xr, xz, xn = xw[t].split(H, 1)
        r = torch.sigmoid(xr + hh[:, :H])
        z = torch.sigmoid(xz + hh[:, H : 2 * H])
        n = torch.tanh(xn + r * hh[:, 2 * H :])
        hh[:, :H] = r
        hh[:, H : 2 * H] = z
        N[t if save else 0] = n
        nu = n if update is None else n * update[t]
        hnew = (1 - z) * nu + z * h
        hs[t] = _mix(_factor(keep_h, p_h, training, t), h, hnew)
        h = hs[t]
    return hs, HH, N


def _gru_backward_py(dhs, dhT, h0, w_hh, hs, HH, N, keep_h, update, p_h, training):
    T, B, H3 = HH.shape
    H = H3 // 3
    dX = torch.empty_like(HH)
    dHH = torch.empty_like(HH)
    dh = dhT.clone()
    for t in range(T - 1, -1, -1):
        r, z, hn = HH[t].split(H, 1)
        n = N[t]
        h_prev = hs[t - 1] if t > 0 else h0
        ah = _factor(keep_h, p_h, training, t)
        u = 1.0 if update is None else update[t]
        dht = dh + dhs[t]
        dnew = dht if ah is None else (1 - ah) * dht
        dgz = dnew * (h_prev - n * u) * z * (1 - z)
        dgn = dnew * (1 - z) * u * (1 - n * n)
        dgr = dgn * hn * r * (1 - r)
        dX[t] = torch.cat([dgr, dgz, dgn], 1)
        dHH[t] = torch.cat([dgr, dgz, dgn * r], 1)
        dh = (dnew * z if ah is None else ah * dht + dnew * z).addmm_(dHH[t], w_hh)
    d2 = dHH.view(T * B, H3)
    dw = d2[:B].t() @ h0
    if T > 1:
        dw.addmm_(d2[B:].t(), hs.view(T * B, H)[: (T - 1) * B])
    return dX, dh, dw, d2.sum(0)


def _rnn_forward_py(xw, h0, w_hh, keep_h, update, p_h, training, relu, save):
    T, B, H = xw.shape
    hs = xw.new_empty(T, B, H)
    A = xw.new_empty(T if save else 1, B, H)
    wT = w_hh.t()
    h = h0
    for t in range(T):
        a = A[t if save else 0]
        torch.addmm(xw[t], h, wT, out=a)
        a.relu_() if relu else a.tanh_()
        hn = a if update is None else a * update[t]
        hs[t] = _mix(_factor(keep_h, p_h, training, t), h, hn)
        h = hs[t]
    return hs, A


def _rnn_backward_py(dhs, dhT, h0, w_hh, hs, A, keep_h, update, p_h, training, relu):
    T, B, H = A.shape
    dP = torch.empty_like(A)
    dh = dhT.clone()
    for t in range(T - 1, -1, -1):
        ah = _factor(keep_h, p_h, training, t)
        dht = dh + dhs[t]
        dnew = dht if ah is None else (1 - ah) * dht
        if update is not None:
            dnew = dnew * update[t]
        a = A[t]
        dP[t] = dnew * (a > 0) if relu else dnew * (1 - a * a)
        dh = (torch.zeros_like(dht) if ah is None else ah * dht).addmm_(dP[t], w_hh)
    d2 = dP.view(T * B, H)
    dw = d2[:B].t() @ h0
    if T > 1:
        dw.addmm_(d2[B:].t(), hs.view(T * B, H)[: (T - 1) * B])
    return dP, dh, dw


# ------------------------------------------------------------------------------------------------
# autograd Functions (one node per sequence)
# ------------------------------------------------------------------------------------------------
def _no_double_backward(name: str) -> None:
    """The hand-written BPTT below is not itself differentiable: under ``create_graph=True`` (a gradient of a
    gradient) its results would silently carry no graph. Refuse instead, naming the way out."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"Zoneout{name}: the fused backend does not support double backward "
                           "(backward/autograd.grad with create_graph=True, e.g. a gradient penalty); build the layer "
                           "with backend='reference', whose Python loop autograd differentiates twice")

class _LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xw, h0, c0, w_hh, b_hh, keep_c, keep_h, update, p_c, p_h, training, cells):
        ext = _ext() if _cpu(xw) else None
        if ext is not None:
            hs, cs, G, TC = ext.lstm_forward(xw, h0, c0, w_hh, keep_c, keep_h, update, p_c, p_h, training, True,
                                             _step_pack(w_hh, xw.shape[1]), b_hh)
        else:
            xb = xw if b_hh is None else xw + b_hh
            hs, cs, G, TC = _lstm_forward_py(xb, h0, c0, w_hh, keep_c, keep_h, update, p_c, p_h, training, True)
        ctx.save_for_backward(h0, c0, w_hh, hs, cs, G, TC, keep_c, keep_h, update)
        ctx.args = (p_c, p_h, training, ext is not None, b_hh is not None)
        if cells:  # the zoned cell sequence as a fourth output (its gradient enters backward as dcs)
            return hs, hs[-1].clone(), cs[-1].clone(), cs
        return hs, hs[-1].clone(), cs[-1].clone()

    @staticmethod
    def backward(ctx, dhs, dhT, dcT, *dcells):
        _no_double_backward("LSTM")
        h0, c0, w_hh, hs, cs, G, TC, keep_c, keep_h, update = ctx.saved_tensors
        p_c, p_h, training, with_ext, has_b = ctx.args
        dcs = dcells[0].contiguous() if dcells and dcells[0] is not None else None
        dhs = dhs.contiguous()
        args = (dhs, dhT.contiguous(), dcT.contiguous(), h0, c0, w_hh, hs, cs, G, TC,
                keep_c, keep_h, update, p_c, p_h, training)
        if with_ext:
            dxw, dh0, dc0, dw = _build.load().lstm_backward(*args, _step_pack(w_hh.t(), G.shape[1]), dcs)
        else:
            dxw, dh0, dc0, dw = _lstm_backward_py(*args, dcs=dcs)
        db = dxw.view(-1, dxw.shape[-1]).sum(0) if has_b else None
        return dxw, dh0, dc0, dw, db, None, None, None, None, None, None, None


class _GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xw, h0, w_hh, b_hh, keep_h, update, p_h, training):
        ext = _ext() if _cpu(xw) else None
        if ext is not None:
            hs, HH, N = ext.gru_forward(xw, h0, w_hh, b_hh, keep_h, update, p_h, training, True,
                                        _step_pack(w_hh, xw.shape[1]))
        else:
            hs, HH, N = _gru_forward_py(xw, h0, w_hh, b_hh, keep_h, update, p_h, training, True)
        ctx.save_for_backward(h0, w_hh, hs, HH, N, keep_h, update)
        ctx.args = (p_h, training, ext is not None, b_hh is not None)
        return hs, hs[-1].clone()

    @staticmethod
    def backward(ctx, dhs, dhT):
        _no_double_backward("GRU")
        h0, w_hh, hs, HH, N, keep_h, update = ctx.saved_tensors
        p_h, training, with_ext, has_b = ctx.args
        args = (dhs.contiguous(), dhT.contiguous(), h0, w_hh, hs, HH, N, keep_h, update, p_h, training)
        if with_ext:
            dxw, dh0, dw, db = _build.load().gru_backward(*args, _step_pack(w_hh.t(), HH.shape[1]))
        else:
            dxw, dh0, dw, db = _gru_backward_py(*args)
        return dxw, dh0, dw, (db if has_b else None), None, None, None, None


class _RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xw, h0, w_hh, b_hh, keep_h, update, p_h, training, relu):
        ext = _ext() if _cpu(xw) else None
        if ext is not None:
            hs, A = ext.rnn_forward(xw, h0, w_hh, keep_h, update, p_h, training, relu, True,
                                    _step_pack(w_hh, xw.shape[1]), b_hh)
        else:
            xb = xw if b_hh is None else xw + b_hh
            hs, A = _rnn_forward_py(xb, h0, w_hh, keep_h, update, p_h, training, relu, True)
        ctx.save_for_backward(h0, w_hh, hs, A, keep_h, update)
        ctx.args = (p_h, training, relu, ext is not None, b_hh is not None)
        return hs, hs[-1].clone()

    @staticmethod
    def backward(ctx, dhs, dhT):
        _no_double_backward("RNN")
        h0, w_hh, hs, A, keep_h, update = ctx.saved_tensors
        p_h, training, relu, with_ext, has_b = ctx.args
        args = (dhs.contiguous(), dhT.contiguous(), h0, w_hh, hs, A, keep_h, update, p_h, training, relu)
        if with_ext:
            dxw, dh0, dw = _build.load().rnn_backward(*args, _step_pack(w_hh.t(), A.shape[1]))
        else:
            dxw, dh0, dw = _rnn_backward_py(*args)
        db = dxw.view(-1, dxw.shape[-1]).sum(0) if has_b else None
        return dxw, dh0, dw, db, None, None, None, None, None


# ------------------------------------------------------------------------------------------------
# input projection (all timesteps in one product)
# ------------------------------------------------------------------------------------------------
def _dnnl_linear(x2: Tensor, w: Tensor, b: Optional[Tensor]) -> Optional[Tensor]:
    """``x2 @ w^T + b`` through oneDNN with ``w`` packed for this call, or None when unavailable."""
    packed = _pack(w, x2.shape[0])
    if packed is None:
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise(x2, packed, b, "none", [], "")
    except RuntimeError:
        return None


class _ProjectionFunction(torch.autograd.Function):
    """``x @ w^T + b`` with the forward and the input gradient through oneDNN (the weight gradient
    ``dy^T x`` and the bias gradient as torch's own linear computes them)."""

    @staticmethod
    def forward(ctx, x2, w, b):
        ctx.save_for_backward(x2, w)
        ctx.has_b = b is not None
        return _dnnl_linear(x2, w, b)

    @staticmethod
    def backward(ctx, dy):
        x2, w = ctx.saved_tensors
        dy = dy.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _dnnl_linear(dy, w.t().contiguous(), None)
            if dx is None:
                dx = dy @ w
        if ctx.needs_input_grad[1]:
            dw = dy.t() @ x2
        if ctx.has_b and ctx.needs_input_grad[2]:
            db = dy.sum(0)
        return dx, dw, db


def input_projection(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, w_ih, b_ih)`` for the input projection of all timesteps (``xw`` of the recurrences).

    float32 on CPU: one oneDNN product with the weight packed for the call (about 1.5x faster than
    the default BLAS path for these tall-skinny products on the measured AMD EPYC; the weight is
    small, packing costs well under 1% of the product); the input gradient goes through oneDNN too.
    Anything else (float64, other devices, no mkldnn): ``F.linear``. Same values up to float32
    rounding of a different summation order.
    """
    use = (_USE_ONEDNN is not False and x.dtype == torch.float32 and w_ih.dtype == torch.float32
           and _cpu(x) and x.dim() >= 2 and x.numel() > 0 and torch.backends.mkldnn.is_available()
           and (b_ih is None or b_ih.dtype == torch.float32))
    if not use:
        return torch.nn.functional.linear(x, w_ih, b_ih)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    x2 = x2 if x2.is_contiguous() else x2.contiguous()
    w = w_ih.contiguous()
    b = None if b_ih is None else b_ih.contiguous()
    if _needs_grad(x2, w, b):
        y = _ProjectionFunction.apply(x2, w, b)
    else:
        with torch.no_grad():
            y = _dnnl_linear(x2, w, b)
    if y is None:
        return torch.nn.functional.linear(x, w_ih, b_ih)
    return y.view(*lead, y.shape[-1])


# ------------------------------------------------------------------------------------------------
# public recurrences (the kernel interface of the spec)
# ------------------------------------------------------------------------------------------------
def lstm_recurrence(
    xw: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    keep_c: Optional[Tensor] = None,
    keep_h: Optional[Tensor] = None,
    update_mask: Optional[Tensor] = None,
    p_c: float = 0.0,
    p_h: float = 0.0,
    training: bool = True,
    b_hh: Optional[Tensor] = None,
    return_cells: bool = False,
):
    """Zoneout LSTM over a whole sequence (one layer, one direction).

    Args:
        xw: ``[T, B, 4H]`` input projection ``x @ W_ih^T + b_ih (+ b_hh)``, gate order i, f, g, o.
        h0, c0: ``[B, H]``. w_hh: ``[4H, H]``.
        keep_c, keep_h: ``[T, B, H]`` (or broadcastable) 0/1 keep masks used in training, or None.
        update_mask: ``[T, B, H]`` multiplier on g (recurrent dropout, pre-scaled) or None.
        p_c, p_h: keep rates, used in eval only (expectation).
        training: mask (True) or expectation (False).
        b_hh: optional ``[4H]`` hidden bias, if it was not folded into ``xw``.
        return_cells: also return the zoned cell state of every step (differentiable), for the
            norm stabilizer's cell option.

    Returns:
        ``(hs [T, B, H], h_T [B, H], c_T [B, H])``; hs are the zoned h per step. With
        ``return_cells``: ``(hs, h_T, c_T, cs [T, B, H])``.
    """
    T, B, H4 = xw.shape
    H = H4 // 4
    if T == 0:
        empty = xw.new_empty(0, B, H)
        return (empty, h0, c0, xw.new_empty(0, B, H)) if return_cells else (empty, h0, c0)
    xw, h0, c0, w_hh = xw.contiguous(), h0.contiguous(), c0.contiguous(), w_hh.contiguous()
    b_hh = None if b_hh is None else b_hh.contiguous()  # added inside the pointwise pass
    keep_c = _mask(keep_c, xw, T, B, H) if training else None
    keep_h = _mask(keep_h, xw, T, B, H) if training else None
    update_mask = _mask(update_mask, xw, T, B, H)
    p_c, p_h, training = float(p_c), float(p_h), bool(training)
    return_cells = bool(return_cells)
    if _needs_grad(xw, h0, c0, w_hh, b_hh):
        return _LSTMFunction.apply(xw, h0, c0, w_hh, b_hh, keep_c, keep_h, update_mask, p_c, p_h, training,
                                   return_cells)
    ext = _ext() if _cpu(xw) else None
    if ext is not None:  # save=True keeps every step's cell (only needed for return_cells)
        hs, cs, _, _ = ext.lstm_forward(xw, h0, c0, w_hh, keep_c, keep_h, update_mask, p_c, p_h, training,
                                        return_cells, _step_pack(w_hh, B), b_hh)
    else:
        xb = xw if b_hh is None else xw + b_hh
        hs, cs, _, _ = _lstm_forward_py(xb, h0, c0, w_hh, keep_c, keep_h, update_mask, p_c, p_h, training, False)
    c_T = cs[(T - 1) % cs.shape[0]]
    return (hs, hs[-1], c_T, cs) if return_cells else (hs, hs[-1], c_T)


def gru_recurrence(
    xw: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    keep_h: Optional[Tensor] = None,
    update_mask: Optional[Tensor] = None,
    p_h: float = 0.0,
    training: bool = True,
    b_hh: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Zoneout GRU over a whole sequence (torch's GRU: ``n = tanh(xn + r * (W_hn h + b_hn))``).

    Args:
        xw: ``[T, B, 3H]`` = ``x @ W_ih^T + b_ih`` (gate order r, z, n). ``b_hh`` must stay separate
            because ``b_hn`` sits inside ``r * (...)``.
        h0: ``[B, H]``; w_hh: ``[3H, H]``; b_hh: ``[3H]`` or None.
        keep_h, update_mask, p_h, training: as :func:`lstm_recurrence` (update multiplies n).

    Returns:
        ``(hs [T, B, H], h_T [B, H])``.
    """
    T, B, H3 = xw.shape
    H = H3 // 3
    if T == 0:
        return xw.new_empty(0, B, H), h0
    xw, h0, w_hh = xw.contiguous(), h0.contiguous(), w_hh.contiguous()
    b_hh = None if b_hh is None else b_hh.contiguous()
    keep_h = _mask(keep_h, xw, T, B, H) if training else None
    update_mask = _mask(update_mask, xw, T, B, H)
    p_h, training = float(p_h), bool(training)
    if _needs_grad(xw, h0, w_hh, b_hh):
        return _GRUFunction.apply(xw, h0, w_hh, b_hh, keep_h, update_mask, p_h, training)
    ext = _ext() if _cpu(xw) else None
    if ext is not None:
        hs, _, _ = ext.gru_forward(xw, h0, w_hh, b_hh, keep_h, update_mask, p_h, training, False,
                                   _step_pack(w_hh, B))
    else:
        hs, _, _ = _gru_forward_py(xw, h0, w_hh, b_hh, keep_h, update_mask, p_h, training, False)
    return hs, hs[-1]


def rnn_recurrence(
    xw: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    keep_h: Optional[Tensor] = None,
    update_mask: Optional[Tensor] = None,
    p_h: float = 0.0,
    training: bool = True,
    nonlinearity: str = "tanh",
    b_hh: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Zoneout Elman RNN: ``h_t = zoneout(h_{t-1}, act(xw_t + W_hh h_{t-1}) * update_t)``.

    Args:
        xw: ``[T, B, H]`` = ``x @ W_ih^T + b_ih (+ b_hh)``; h0 ``[B, H]``; w_hh ``[H, H]``.
        nonlinearity: "tanh" or "relu". Others as :func:`gru_recurrence`.

    Returns:
        ``(hs [T, B, H], h_T [B, H])``.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    T, B, H = xw.shape
    if T == 0:
        return xw.new_empty(0, B, H), h0
    xw, h0, w_hh = xw.contiguous(), h0.contiguous(), w_hh.contiguous()
    b_hh = None if b_hh is None else b_hh.contiguous()  # added inside the pointwise pass
    keep_h = _mask(keep_h, xw, T, B, H) if training else None
    update_mask = _mask(update_mask, xw, T, B, H)
    p_h, training, relu = float(p_h), bool(training), nonlinearity == "relu"
    if _needs_grad(xw, h0, w_hh, b_hh):
        return _RNNFunction.apply(xw, h0, w_hh, b_hh, keep_h, update_mask, p_h, training, relu)
    ext = _ext() if _cpu(xw) else None
    if ext is not None:
        hs, _ = ext.rnn_forward(xw, h0, w_hh, keep_h, update_mask, p_h, training, relu, False,
                                _step_pack(w_hh, B), b_hh)
    else:
        xb = xw if b_hh is None else xw + b_hh
        hs, _ = _rnn_forward_py(xb, h0, w_hh, keep_h, update_mask, p_h, training, relu, False)
    return hs, hs[-1]


# ------------------------------------------------------------------------------------------------
# the layers' sequence signature (zoneout.rnn picks ``lstm_sequence`` up when present)
# ------------------------------------------------------------------------------------------------
from ..rnn import _split_keep  # noqa: E402 - one rule for tensor/float keep masks (no import cycle: rnn
                                 # reaches the kernels only at call time)


def lstm_sequence(x_proj: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
                  keep_c=0.0, keep_h=0.0, update: Optional[Tensor] = None, return_cells: bool = False):
    """``zoneout.rnn.lstm_sequence_reference``'s signature and results on the fused recurrence,
    including the zoned cell sequence (``return_cells``, differentiable) so that the layer's
    ``record_cells`` (norm stabilizer on cells) stays on the fused path.

    Returns:
        ``(output [T, B, H], h_n [B, H], c_n [B, H], cells [T, B, H] or None)``.
    """
    T, B, H = x_proj.shape[0], x_proj.shape[1], h0.shape[-1]
    training, [(kc, pc), (kh, ph)] = _split_keep((keep_c, keep_h), T, B, H, x_proj)
    res = lstm_recurrence(x_proj, h0, c0, w_hh, keep_c=kc, keep_h=kh, update_mask=update, p_c=pc, p_h=ph,
                          training=training, b_hh=b_hh, return_cells=return_cells)
    if return_cells:
        return res
    out, h, c = res
    return out, h, c, None
