"""Zoneout LSTM / GRU / tanh-RNN cells and the per-step math (Krueger et al., ICLR 2017, §3).

Paper-exact LSTM zoneout (§3, eq. for c_t and h_t)::

    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid  of  (W_ih x + b_ih + W_hh h_{t-1} + b_hh)
    c_new = f * c_{t-1} + i * g
    c_t   = d_c * c_{t-1} + (1 - d_c) * c_new
    h_t   = d_h * h_{t-1} + (1 - d_h) * (o * tanh(c_new))   # candidate h uses the UN-zoned c_new

GRU and RNN apply the same rule to h. ``d`` is a 0/1 keep mask in training (Bernoulli(rate))
and the constant rate in eval (the expectation). Gate layout and parameter names are torch's:
LSTM rows of ``weight_ih``/``weight_hh`` are ``[i | f | g | o]``, GRU ``[r | z | n]``.

The step functions here (``lstm_step``, ``gru_step``, ``rnn_step``) are the single source of the
cell math; ``zoneout.rnn`` loops them over a sequence.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import Mask, check_rate, keep_mask, mix

__all__ = [
    "ZoneoutLSTMCell",
    "ZoneoutGRUCell",
    "ZoneoutRNNCell",
    "lstm_step",
    "gru_step",
    "rnn_step",
]


def _scale(t: Tensor, update: Optional[Tensor]) -> Tensor:
    return t if update is None else t * update


def lstm_step(
    gx: Tensor,
    h: Tensor,
    c: Tensor,
    w_hh: Tensor,
    b_hh: Optional[Tensor],
    keep_c: Optional[Mask] = None,
    keep_h: Optional[Mask] = None,
    update: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """One zoneout LSTM step.

    Args:
        gx: input projection ``W_ih x_t + b_ih``, ``[B, 4H]`` (gates ``i, f, g, o``).
        h, c: previous states ``[B, H]``.
        w_hh: ``[4H, H]``; b_hh: ``[4H]`` or None.
        keep_c, keep_h: keep masks ``[B, H]`` of 0/1, or a float (eval expectation; 0 = off).
        update: recurrent-dropout multiplier on ``g`` (values 0 or 1/(1-p)), ``[B, H]``, or None.

    Returns:
        ``(h_t, c_t)``, both ``[B, H]``, zoned.
    """
    gates = gx + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, 1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * _scale(torch.tanh(g), update)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return mix(h, h_new, keep_h), mix(c, c_new, keep_c)


def gru_step(
    gx: Tensor,
    h: Tensor,
    w_hh: Tensor,
    b_hh: Optional[Tensor],
    keep_h: Optional[Mask] = None,
    update: Optional[Tensor] = None,
) -> Tensor:
    """One zoneout GRU step (torch's GRU: ``n = tanh(gx_n + r * (W_hn h + b_hn))``).

    Args:
        gx: ``W_ih x_t + b_ih``, ``[B, 3H]`` (gates ``r, z, n``); h: ``[B, H]``;
        w_hh: ``[3H, H]``; b_hh: ``[3H]`` or None.
        keep_h: keep mask ``[B, H]`` (0/1) or float. update: recurrent-dropout multiplier on ``n``.

    Returns:
        ``h_t`` ``[B, H]``.
    """
    gh = F.linear(h, w_hh, b_hh)
    xr, xz, xn = gx.chunk(3, 1)
    hr, hz, hn = gh.chunk(3, 1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = _scale(torch.tanh(xn + r * hn), update)
    h_new = (1 - z) * n + z * h
    return mix(h, h_new, keep_h)


def rnn_step(
    gx: Tensor,
    h: Tensor,
    w_hh: Tensor,
    b_hh: Optional[Tensor],
    keep_h: Optional[Mask] = None,
    update: Optional[Tensor] = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """One zoneout Elman RNN step: ``h_t = zoneout(h, act(gx + W_hh h + b_hh) * update)``.

    Shapes: gx ``[B, H]``, h ``[B, H]``, w_hh ``[H, H]``; masks as in :func:`lstm_step`.
    """
    pre = gx + F.linear(h, w_hh, b_hh)
    h_new = torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)
    return mix(h, _scale(h_new, update), keep_h)


class _CellBase(nn.Module):
    """Parameters and init exactly as ``torch.nn.RNNCellBase`` (uniform ±1/sqrt(hidden_size))."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.weight_ih = nn.Parameter(torch.empty(num_chunks * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(num_chunks * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(num_chunks * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(num_chunks * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def _mask(self, p: float, like: Tensor) -> Mask:
        """Keep mask for one step: 0/1 tensor in training, the rate itself in eval."""
        if not self.training or p in (0.0, 1.0):
            return p
        return keep_mask(like.shape, p, like)

    def _prepare(self, input: Tensor, hx: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor], bool]:
        if input.dim() not in (1, 2):
            raise ValueError(f"{type(self).__name__}: expected input of 1 or 2 dimensions, got {input.dim()}")
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
            if hx is not None:
                hx = hx.unsqueeze(0)
        return input, hx, batched

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        for name in ("nonlinearity", "zoneout_c", "zoneout_h"):
            if hasattr(self, name):
                s += f", {name}={getattr(self, name)!r}"
        return s


class ZoneoutLSTMCell(_CellBase):
    """``torch.nn.LSTMCell`` with zoneout on ``c`` and ``h`` (paper §3).

    Args:
        input_size, hidden_size, bias: as ``torch.nn.LSTMCell``.
        zoneout_c, zoneout_h: probability in [0, 1] that a unit of c / h keeps its previous value.

    Shapes: input ``[B, input_size]`` or ``[input_size]``; hx = ``(h, c)`` each ``[B, H]`` or None
    (zeros). Returns ``(h_1, c_1)`` like torch. Parameters: ``weight_ih [4H, in]``,
    ``weight_hh [4H, H]``, ``bias_ih``, ``bias_hh [4H]``, gate rows ``[i | f | g | o]``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, zoneout_c: float = 0.0,
                 zoneout_h: float = 0.0, device=None, dtype=None):
        self.zoneout_c = check_rate("zoneout_c", zoneout_c)
        self.zoneout_h = check_rate("zoneout_h", zoneout_h)
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        h0, c0 = (None, None) if hx is None else hx
        input, h0, batched = self._prepare(input, h0)
        if c0 is not None and not batched:
            c0 = c0.unsqueeze(0)
        if h0 is None:
            h0 = input.new_zeros(input.shape[0], self.hidden_size)
            c0 = torch.zeros_like(h0)
        gx = F.linear(input, self.weight_ih, self.bias_ih)
        h1, c1 = lstm_step(gx, h0, c0, self.weight_hh, self.bias_hh,
                           self._mask(self.zoneout_c, c0), self._mask(self.zoneout_h, h0))
        if not batched:
            h1, c1 = h1.squeeze(0), c1.squeeze(0)
        return h1, c1


class ZoneoutGRUCell(_CellBase):
    """``torch.nn.GRUCell`` with zoneout on ``h``.

    Shapes: input ``[B, in]`` or ``[in]``, hx ``[B, H]`` or None; returns ``h_1``. Gate rows
    ``[r | z | n]``, parameters as torch.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, zoneout_h: float = 0.0,
                 device=None, dtype=None):
        self.zoneout_h = check_rate("zoneout_h", zoneout_h)
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        input, hx, batched = self._prepare(input, hx)
        if hx is None:
            hx = input.new_zeros(input.shape[0], self.hidden_size)
        gx = F.linear(input, self.weight_ih, self.bias_ih)
        h1 = gru_step(gx, hx, self.weight_hh, self.bias_hh, self._mask(self.zoneout_h, hx))
        return h1 if batched else h1.squeeze(0)


class ZoneoutRNNCell(_CellBase):
    """``torch.nn.RNNCell`` (``nonlinearity`` "tanh" or "relu") with zoneout on ``h``.

    Shapes as :class:`ZoneoutGRUCell`; ``weight_ih [H, in]``, ``weight_hh [H, H]``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 zoneout_h: float = 0.0, device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        self.zoneout_h = check_rate("zoneout_h", zoneout_h)
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        input, hx, batched = self._prepare(input, hx)
        if hx is None:
            hx = input.new_zeros(input.shape[0], self.hidden_size)
        gx = F.linear(input, self.weight_ih, self.bias_ih)
        h1 = rnn_step(gx, hx, self.weight_hh, self.bias_hh, self._mask(self.zoneout_h, hx),
                      nonlinearity=self.nonlinearity)
        return h1 if batched else h1.squeeze(0)
