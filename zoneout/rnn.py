"""Multi-layer, (bi)directional zoneout LSTM / GRU / RNN layers (Krueger et al., ICLR 2017, §3).

Drop-in replacements for ``torch.nn.LSTM`` / ``GRU`` / ``RNN``: same constructor arguments and
defaults, same parameter names, shapes, gate order ([i|f|g|o] LSTM, [r|z|n] GRU) and init, same
``forward(input, hx=None)`` return values, so ``state_dict`` moves both ways. With every rate 0
they compute what torch's layers compute.

Layering (haste-style), from the inside out:

1. cell math — :mod:`zoneout.cells` (``lstm_step`` etc.);
2. sequence functions — ``lstm_sequence_reference`` / ``gru_sequence_reference`` /
   ``rnn_sequence_reference`` below: one direction of one layer over a whole sequence, given the
   precomputed input projection and ALL masks of the sequence. A fused kernel
   (``zoneout.kernels``) implements the same signatures and must return the same values;
3. masks — :func:`sample_masks` draws every mask of a sequence up front (one call per
   layer/direction, global torch RNG) as a :class:`SequenceMasks`;
4. the ``nn.Module`` layers, which project the input for all timesteps in one matmul, pick the
   backend, handle directions, layers, inter-layer dropout, ``batch_first`` and unbatched input.

Regularizers that live inside the recurrence (paper §2.3 and §4.1 baselines):

- ``zoneout_c`` / ``zoneout_h``: probability a unit KEEPS its previous value (fresh Bernoulli
  per unit, example and timestep in training; expectation ``p*prev + (1-p)*new`` in eval).
- ``zoneout_shared_mask``: c and h share one mask drawn at rate ``zoneout_c`` (LSTM).
- ``recurrent_dropout`` (Semeniuta et al. 2016): DROP probability on the cell update ``g``
  (LSTM) / candidate ``n`` (GRU) / candidate ``h`` (RNN), inverted scaling ``m/(1-p)`` in training,
  nothing in eval.
- ``stochastic_depth`` (recurrent adaptation, paper §2.3): one Bernoulli(z) per example per
  timestep, mask shape ``[T, B, 1]``, shared by all units of c and h; a skipped step keeps the whole
  previous state. It composes with zoneout as a unit keeps its value if EITHER keeps it, so it is
  folded into the zoneout keep masks: ``keep = 1 - (1 - s)(1 - d)`` in training and the effective
  rate ``1 - (1 - z)(1 - p)`` in eval. The sequence functions therefore only see keep masks.
"""
from __future__ import annotations

import functools
import importlib
import warnings
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cells import gru_step, lstm_step, rnn_step
from .functional import Mask, check_rate, keep_mask

__all__ = [
    "ZoneoutLSTM",
    "ZoneoutGRU",
    "ZoneoutRNN",
    "SequenceMasks",
    "sample_masks",
    "lstm_sequence_reference",
    "gru_sequence_reference",
    "rnn_sequence_reference",
]

BACKENDS = ("auto", "reference", "fused")


class SequenceMasks(NamedTuple):
    """Every mask one layer direction uses over one sequence.

    Time order: the layer API (``_sample_masks`` / ``_forward(masks=...)``) holds them in the
    input's time order (mask[t] acts at the step reading x[t], also for the reverse direction);
    the layer flips reverse-direction masks (:meth:`flip`) together with ``x_proj``, so a sequence
    function always receives them in its own processing order.

    keep_h, keep_c: keep masks, float tensors of 0/1, shape ``[T, B, H]``, contiguous, dtype and
        device of the input (training) — or a Python float in [0, 1] used at every step (eval
        expectation; 0.0 = off; also used in training when the rate is exactly 0 or 1).
        ``keep_c`` is unused (0.0) by GRU and RNN.
    update: recurrent-dropout multiplier ``[T, B, H]`` with values in ``{0, 1/(1-p)}``, or None.
    """

    keep_h: Mask = 0.0
    keep_c: Mask = 0.0
    update: Optional[Tensor] = None

    def flip(self) -> "SequenceMasks":
        """The same masks in reversed time order (for the reverse direction)."""
        return SequenceMasks(*(m.flip(0) if isinstance(m, Tensor) else m for m in self))


def sample_masks(
    T: int,
    B: int,
    H: int,
    like: Tensor,
    *,
    training: bool,
    zoneout_h: float = 0.0,
    zoneout_c: float = 0.0,
    shared_mask: bool = False,
    recurrent_dropout: float = 0.0,
    stochastic_depth: float = 0.0,
    draw_mask: Callable = keep_mask,
) -> SequenceMasks:
    """Draw all masks of one layer direction for a ``[T, B, *]`` sequence (see module docstring).

    Args:
        T, B, H: sequence length, batch, hidden size. like: tensor giving dtype and device.
        training: False returns the eval expectation rates as floats and no dropout mask.
        zoneout_h, zoneout_c: keep rates. shared_mask: h uses c's mask (rate ``zoneout_c``).
        recurrent_dropout: drop probability of the update. stochastic_depth: per-step skip rate.
        draw_mask: ``(shape, p, like) -> 0/1 tensor``; the layers pass the fused kernels' faster
            generator when they run the fused path (same distribution, different random stream).

    Returns:
        :class:`SequenceMasks` with tensors ``[T, B, H]`` (train) or floats (eval / constant rates).
    """
    if shared_mask:
        zoneout_h = zoneout_c
    if not training:
        z = stochastic_depth
        if z > 0.0:
            zoneout_c = 1.0 - (1.0 - z) * (1.0 - zoneout_c)
            zoneout_h = 1.0 - (1.0 - z) * (1.0 - zoneout_h)
        return SequenceMasks(keep_h=zoneout_h, keep_c=zoneout_c, update=None)

    def draw(p: float) -> Mask:
        return draw_mask((T, B, H), p, like) if 0.0 < p < 1.0 else p

    keep_c = draw(zoneout_c)
    keep_h = keep_c if shared_mask else draw(zoneout_h)
    if stochastic_depth > 0.0:
        skip = draw_mask((T, B, 1), stochastic_depth, like) if stochastic_depth < 1.0 else 1.0
        keep_c = _fold_skip(keep_c, skip, T, B, H, like)
        keep_h = keep_c if shared_mask else _fold_skip(keep_h, skip, T, B, H, like)
    update = None
    if recurrent_dropout > 0.0:
        update = draw_mask((T, B, H), 1.0 - recurrent_dropout, like).mul_(1.0 / (1.0 - recurrent_dropout))
    return SequenceMasks(keep_h=keep_h, keep_c=keep_c, update=update)


def _fold_skip(keep: Mask, skip: Union[Tensor, float], T: int, B: int, H: int, like: Tensor) -> Mask:
    """A unit keeps its value if the step is skipped OR zoneout keeps it: ``1 - (1-s)(1-d)``."""
    if not isinstance(skip, Tensor):  # stochastic_depth == 1: every step skipped
        return 1.0
    out = 1 - (1 - skip) * (1 - keep)
    return out.expand(T, B, H).contiguous()


def _per_step(mask, T: int) -> Sequence:
    return mask.unbind(0) if isinstance(mask, Tensor) else [mask] * T


# ---------------------------------------------------------------------------------------------
# Reference sequence functions: the specification a fused kernel must match under the same masks.
# ---------------------------------------------------------------------------------------------

def lstm_sequence_reference(
    x_proj: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    b_hh: Optional[Tensor],
    keep_c: Mask = 0.0,
    keep_h: Mask = 0.0,
    update: Optional[Tensor] = None,
    return_cells: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Run one direction of one zoneout LSTM layer over a sequence (python loop, autograd).

    Args:
        x_proj: ``x @ W_ih^T + b_ih`` for all steps, ``[T, B, 4H]`` in processing order, gate
            columns ``[i | f | g | o]``.
        h0, c0: ``[B, H]``. w_hh: ``[4H, H]``. b_hh: ``[4H]`` or None.
        keep_c, keep_h: ``[T, B, H]`` 0/1 float tensors or floats (see :class:`SequenceMasks`).
        update: ``[T, B, H]`` recurrent-dropout multiplier on g, or None.
        return_cells: also return the zoned cell states of every step.

    Returns:
        ``(output [T, B, H] (zoned h_t), h_n [B, H], c_n [B, H], cells [T, B, H] or None)``.
    """
    T = x_proj.shape[0]
    h, c = h0, c0
    hs, cs = [], []
    for gx, kc, kh, u in zip(x_proj.unbind(0), _per_step(keep_c, T), _per_step(keep_h, T), _per_step(update, T)):
        h, c = lstm_step(gx, h, c, w_hh, b_hh, kc, kh, u)
        hs.append(h)
        cs.append(c)
    output = torch.stack(hs) if hs else x_proj.new_zeros(0, *h0.shape)
    cells = (torch.stack(cs) if cs else x_proj.new_zeros(0, *c0.shape)) if return_cells else None
    return output, h, c, cells


def gru_sequence_reference(
    x_proj: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hh: Optional[Tensor],
    keep_h: Mask = 0.0,
    update: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """One direction of one zoneout GRU layer. x_proj ``[T, B, 3H]`` (``[r | z | n]``, b_ih
    included, b_hh NOT included since ``r`` multiplies ``W_hn h + b_hn``); h0 ``[B, H]``;
    w_hh ``[3H, H]``; b_hh ``[3H]`` or None; keep_h/update as :class:`SequenceMasks`.

    Returns ``(output [T, B, H], h_n [B, H])``.
    """
    T = x_proj.shape[0]
    h = h0
    hs = []
    for gx, kh, u in zip(x_proj.unbind(0), _per_step(keep_h, T), _per_step(update, T)):
        h = gru_step(gx, h, w_hh, b_hh, kh, u)
        hs.append(h)
    output = torch.stack(hs) if hs else x_proj.new_zeros(0, *h0.shape)
    return output, h


def rnn_sequence_reference(
    x_proj: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hh: Optional[Tensor],
    keep_h: Mask = 0.0,
    update: Optional[Tensor] = None,
    nonlinearity: str = "tanh",
) -> Tuple[Tensor, Tensor]:
    """One direction of one zoneout Elman RNN layer. x_proj ``[T, B, H]`` (b_ih included);
    h0 ``[B, H]``; w_hh ``[H, H]``; nonlinearity "tanh" | "relu".

    Returns ``(output [T, B, H], h_n [B, H])``.
    """
    T = x_proj.shape[0]
    h = h0
    hs = []
    for gx, kh, u in zip(x_proj.unbind(0), _per_step(keep_h, T), _per_step(update, T)):
        h = rnn_step(gx, h, w_hh, b_hh, kh, u, nonlinearity)
        hs.append(h)
    output = torch.stack(hs) if hs else x_proj.new_zeros(0, *h0.shape)
    return output, h


_REFERENCE = {
    "lstm": lstm_sequence_reference,
    "gru": gru_sequence_reference,
    "rnn": rnn_sequence_reference,
}


def _kernel_fn(kind: str, backend: str) -> Optional[Callable]:
    """The fused sequence function for ``kind`` if usable for ``backend``, else None.

    Contract for ``zoneout.kernels`` (either form is picked up, no edit here needed):

    - ``lstm_sequence`` / ``gru_sequence`` / ``rnn_sequence`` with exactly the reference signatures
      above (masks as :class:`SequenceMasks` fields: tensor or float), or
    - ``lstm_recurrence`` / ``gru_recurrence`` / ``rnn_recurrence`` with the kernels' own signature
      ``(xw, h0, [c0,] w_hh, keep_[c|h]=Tensor|None, ..., update_mask, p_[c|h], training, b_hh)``,
      adapted by ``_lstm_via_recurrence`` etc.

    ``"auto"`` uses them only when the module sets ``AUTO = True`` (until then auto = reference);
    any failure to import is swallowed for ``"auto"`` and reported for ``"fused"``.
    """
    try:
        kernels = importlib.import_module("zoneout.kernels")
    except Exception:  # noqa: BLE001 - a broken optional fast path must not break the layers
        if backend == "fused":
            raise
        return None
    if backend == "auto" and not getattr(kernels, "AUTO", False):
        return None
    fn = getattr(kernels, f"{kind}_sequence", None)
    if fn is None and getattr(kernels, f"{kind}_recurrence", None) is not None:
        fn = functools.partial(_ADAPTERS[kind], getattr(kernels, f"{kind}_recurrence"))
    return fn


_KERNEL_DTYPES = (torch.float32, torch.float64)


def _kernels_attr(name: str, default: Callable) -> Callable:
    """``zoneout.kernels.<name>`` when the kernels import, else ``default``."""
    try:
        return getattr(importlib.import_module("zoneout.kernels"), name, default)
    except Exception:  # noqa: BLE001 - same fallback rule as _kernel_fn
        return default


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def _mask_drawer(backend: str) -> Callable:
    """The mask generator matching ``backend``: the kernels' hashed-bits ``keep_mask`` (about 30x
    faster than ``bernoulli_`` on CPU, seeded from the torch RNG) when the fused path is in use,
    else :func:`zoneout.functional.keep_mask`."""
    if backend == "reference":
        return keep_mask
    try:
        kernels = importlib.import_module("zoneout.kernels")
    except Exception:  # noqa: BLE001 - same fallback rule as _kernel_fn
        return keep_mask
    if backend == "auto" and not getattr(kernels, "AUTO", False):
        return keep_mask
    return getattr(kernels, "keep_mask", keep_mask)


def _split_keep(keeps, T: int, B: int, H: int, like: Tensor):
    """SequenceMasks keeps -> (training, [(mask or None, rate)]) for the kernels' recurrence API:
    any tensor -> training mode with 0/1 masks (constant 0 -> None, constant 1 -> ones);
    all floats -> eval mode with the floats as expectation rates."""
    if any(isinstance(k, Tensor) for k in keeps):
        out = []
        for k in keeps:
            if isinstance(k, Tensor):
                out.append((k, 0.0))
            elif k == 0.0:
                out.append((None, 0.0))
            else:  # a constant keep of 1 (rate 1) or any constant: a broadcast mask is exact
                out.append((like.new_full((1, 1, 1), float(k)).expand(T, B, H), 0.0))
        return True, out
    return False, [(None, float(k)) for k in keeps]


def _lstm_via_recurrence(rec, x_proj, h0, c0, w_hh, b_hh, keep_c=0.0, keep_h=0.0, update=None,
                         return_cells=False):
    """``lstm_sequence_reference``'s signature on top of ``zoneout.kernels.lstm_recurrence``."""
    if return_cells:  # the kernels return no cell sequence: the reference records it
        return lstm_sequence_reference(x_proj, h0, c0, w_hh, b_hh, keep_c, keep_h, update, True)
    T, B, H = x_proj.shape[0], x_proj.shape[1], h0.shape[-1]
    training, [(kc, pc), (kh, ph)] = _split_keep((keep_c, keep_h), T, B, H, x_proj)
    out, h, c = rec(x_proj, h0, c0, w_hh, keep_c=kc, keep_h=kh, update_mask=update,
                    p_c=pc, p_h=ph, training=training, b_hh=b_hh)
    return out, h, c, None


def _gru_via_recurrence(rec, x_proj, h0, w_hh, b_hh, keep_h=0.0, update=None):
    """``gru_sequence_reference``'s signature on top of ``zoneout.kernels.gru_recurrence``."""
    T, B, H = x_proj.shape[0], x_proj.shape[1], h0.shape[-1]
    training, [(kh, ph)] = _split_keep((keep_h,), T, B, H, x_proj)
    return rec(x_proj, h0, w_hh, keep_h=kh, update_mask=update, p_h=ph, training=training, b_hh=b_hh)


def _rnn_via_recurrence(rec, x_proj, h0, w_hh, b_hh, keep_h=0.0, update=None, nonlinearity="tanh"):
    """``rnn_sequence_reference``'s signature on top of ``zoneout.kernels.rnn_recurrence``."""
    T, B, H = x_proj.shape[0], x_proj.shape[1], h0.shape[-1]
    training, [(kh, ph)] = _split_keep((keep_h,), T, B, H, x_proj)
    return rec(x_proj, h0, w_hh, keep_h=kh, update_mask=update, p_h=ph, training=training,
               nonlinearity=nonlinearity, b_hh=b_hh)


_ADAPTERS = {"lstm": _lstm_via_recurrence, "gru": _gru_via_recurrence, "rnn": _rnn_via_recurrence}


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------

class _ZoneoutRNNBase(nn.Module):
    _kind = ""  # "lstm" | "gru" | "rnn"
    _gates = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        zoneout_c: float = 0.0,
        zoneout_h: float = 0.0,
        zoneout_shared_mask: bool = False,
        recurrent_dropout: float = 0.0,
        stochastic_depth: float = 0.0,
        backend: str = "auto",
        nonlinearity: str = "tanh",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not isinstance(input_size, int) or isinstance(input_size, bool):
            raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
        if input_size <= 0:
            raise ValueError("input_size must be greater than zero")
        if not isinstance(hidden_size, int) or isinstance(hidden_size, bool):
            raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        self.dropout = check_rate("dropout", dropout)
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}"
            )
        self.zoneout_c = check_rate("zoneout_c", zoneout_c)
        self.zoneout_h = check_rate("zoneout_h", zoneout_h)
        self.recurrent_dropout = check_rate("recurrent_dropout", recurrent_dropout, allow_one=False)
        self.stochastic_depth = check_rate("stochastic_depth", stochastic_depth)
        self.zoneout_shared_mask = bool(zoneout_shared_mask)
        if self._kind != "lstm" and self.zoneout_shared_mask:
            raise ValueError(
                f"zoneout_shared_mask=True shares one mask between an LSTM's c and h; {type(self).__name__} has "
                "only h, so it would do nothing. Drop it (zoneout_h alone sets the rate)."
            )
        if self._kind == "lstm" and self.zoneout_shared_mask and self.zoneout_h not in (0.0, self.zoneout_c):
            raise ValueError(
                f"zoneout_shared_mask=True draws one mask at rate zoneout_c={self.zoneout_c} for c and h; "
                f"zoneout_h={self.zoneout_h} would be ignored. Set zoneout_h=0 or equal to zoneout_c."
            )
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "fused":
            try:
                fused = _kernel_fn(self._kind, "fused")
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"backend='fused': zoneout.kernels failed to import ({exc})") from exc
            if fused is None:
                raise ValueError(f"backend='fused' needs zoneout.kernels.{self._kind}_sequence "
                                 f"(or {self._kind}_recurrence), which is not available")
        self.backend = backend
        self.nonlinearity = nonlinearity
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.bidirectional = bidirectional
        self.proj_size = 0
        #: set True to keep the top layer's per-step cell states (LSTM) in ``last_cell_sequence``
        self.record_cells = False
        self.last_cell_sequence: Optional[Tensor] = None

        factory = {"device": device, "dtype": dtype}
        gate_size = self._gates * hidden_size
        num_directions = 2 if bidirectional else 1
        self._all_weights: List[List[str]] = []
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input = input_size if layer == 0 else hidden_size * num_directions
                suffix = "_reverse" if direction == 1 else ""
                names = [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
                shapes = [(gate_size, layer_input), (gate_size, hidden_size)]
                if bias:
                    names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
                    shapes += [(gate_size,), (gate_size,)]
                for name, shape in zip(names, shapes):
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                self._all_weights.append(names)
        self.reset_parameters()

    # -- torch compatibility ----------------------------------------------------------------
    def reset_parameters(self) -> None:
        """torch's init: every parameter uniform in ±1/sqrt(hidden_size), in registration order."""
        stdv = 1.0 / self.hidden_size ** 0.5
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op, for code written against ``torch.nn.RNNBase``."""

    @property
    def all_weights(self) -> List[List[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self._kind == "rnn" and self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        names = ["zoneout_h"] if self._kind != "lstm" else ["zoneout_c", "zoneout_h"]
        for name in names + ["recurrent_dropout", "stochastic_depth"]:
            if getattr(self, name):
                s += f", {name}={getattr(self, name)}"
        if self.zoneout_shared_mask:
            s += ", zoneout_shared_mask=True"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    # -- masks ------------------------------------------------------------------------------
    def _sample_masks(self, T: int, B: int, like: Tensor) -> List[SequenceMasks]:
        """All masks of one forward call: ``num_layers * num_directions`` :class:`SequenceMasks`,
        index ``layer * num_directions + direction``, each in ORIGINAL time order (mask[t] is used
        at the step that reads input t, also for the reverse direction). Tests and kernels draw
        these, edit them and pass them to :meth:`_forward` as ``masks=``."""
        draw = _mask_drawer(self._backend_now()) if self.training else keep_mask
        return [
            sample_masks(
                T, B, self.hidden_size, like, training=self.training,
                zoneout_h=self.zoneout_h, zoneout_c=self.zoneout_c if self._kind == "lstm" else 0.0,
                shared_mask=self.zoneout_shared_mask and self._kind == "lstm",
                recurrent_dropout=self.recurrent_dropout, stochastic_depth=self.stochastic_depth,
                draw_mask=draw,
            )
            for _ in range(self.num_layers * self.num_directions)
        ]

    # -- forward ----------------------------------------------------------------------------
    def _backend_now(self) -> str:
        """``self.backend``, except "reference" while ``torch.compile`` traces the layer: the C++ kernels are
        opaque to Dynamo/Inductor, the reference loop compiles (and equals them under the same masks)."""
        if self.backend != "reference" and _compiling():
            return "reference"
        return self.backend

    def _sequence_fn(self) -> Callable:
        backend = self._backend_now()
        fn = _kernel_fn(self._kind, backend) if backend != "reference" else None
        return fn if fn is not None else _REFERENCE[self._kind]

    def forward(self, input: Tensor, hx=None):
        """See the class docstring; identical to the torch layer's ``forward``."""
        return self._forward(input, hx)

    def _forward(self, input: Tensor, hx=None, masks: Optional[Sequence[SequenceMasks]] = None):
        """``forward`` with optional injected masks (see :meth:`_sample_masks` for the layout)."""
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise TypeError(f"{type(self).__name__} does not support PackedSequence input; pad the batch instead")
        is_lstm = self._kind == "lstm"
        if input.dim() not in (2, 3):
            raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        if input.size(-1) != self.input_size:
            raise ValueError(f"{type(self).__name__}: input.size(-1) must be equal to input_size. "
                             f"Expected {self.input_size}, got {input.size(-1)}")
        if input.dtype != self.weight_ih_l0.dtype:
            raise TypeError(f"{type(self).__name__}: input is {input.dtype} but the layer's parameters are "
                            f"{self.weight_ih_l0.dtype}; convert one of them (input.to(...) or layer.to(...))")
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        T, B = input.shape[0], input.shape[1]
        L, D, H = self.num_layers, self.num_directions, self.hidden_size

        if hx is None:
            h0 = input.new_zeros(L * D, B, H)
            c0 = torch.zeros_like(h0) if is_lstm else None
        else:
            if is_lstm and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"{type(self).__name__}: hx must be a tuple (h_0, c_0) of two tensors, got "
                                f"{type(hx).__name__}{f' of length {len(hx)}' if isinstance(hx, (tuple, list)) else ''}")
            if not is_lstm and not isinstance(hx, Tensor):
                raise TypeError(f"{type(self).__name__}: hx must be one tensor h_0 of shape "
                                f"(num_layers * num_directions, batch, hidden_size), got {type(hx).__name__}")
            h0, c0 = hx if is_lstm else (hx, None)
            if not batched:
                if h0.dim() != 2 or (is_lstm and c0.dim() != 2):
                    raise RuntimeError("For unbatched 2-D input, hx should also be 2-D")
                h0 = h0.unsqueeze(1)
                c0 = c0.unsqueeze(1) if is_lstm else None
            for name, t in (("hx[0]" if is_lstm else "hx", h0), ("hx[1]", c0)):
                if t is not None and tuple(t.shape) != (L * D, B, H):
                    raise RuntimeError(f"Expected hidden size {(L * D, B, H)}, got {tuple(t.shape)} for {name}")

        if masks is None:
            masks = self._sample_masks(T, B, input)
        elif len(masks) != L * D:
            raise ValueError(f"expected {L * D} SequenceMasks (num_layers * num_directions), got {len(masks)}")

        fn = self._sequence_fn()
        if fn is not _REFERENCE[self._kind] and input.dtype not in _KERNEL_DTYPES:
            if self.backend == "fused":
                raise TypeError(f"{type(self).__name__}(backend='fused') supports "
                                f"{', '.join(map(str, _KERNEL_DTYPES))}, not {input.dtype}; use backend='auto' "
                                f"or 'reference'")
            fn = _REFERENCE[self._kind]   # auto: half precision runs the reference loop
        project = F.linear if fn is _REFERENCE[self._kind] else _kernels_attr("input_projection", F.linear)
        layer_input = input
        h_n, c_n, cells_top = [], [], None
        for layer in range(L):
            outs, cells = [], []
            for direction in range(D):
                idx = layer * D + direction
                w = [getattr(self, n) for n in self._all_weights[idx]]
                w_ih, w_hh = w[0], w[1]
                b_ih, b_hh = (w[2], w[3]) if self.bias else (None, None)
                x_proj = project(layer_input, w_ih, b_ih)  # all timesteps in one matmul
                m = masks[idx]
                if direction == 1:
                    x_proj, m = x_proj.flip(0), m.flip()
                if is_lstm:
                    record = self.record_cells and layer == L - 1
                    out, h, c, cs = fn(x_proj, h0[idx], c0[idx], w_hh, b_hh, m.keep_c, m.keep_h, m.update, record)
                    c_n.append(c)
                else:
                    extra = (self.nonlinearity,) if self._kind == "rnn" else ()
                    out, h = fn(x_proj, h0[idx], w_hh, b_hh, m.keep_h, m.update, *extra)
                    cs = None
                if direction == 1:
                    out = out.flip(0)
                    cs = cs.flip(0) if cs is not None else None
                outs.append(out)
                cells.append(cs)
                h_n.append(h)
            layer_input = outs[0] if D == 1 else torch.cat(outs, 2)
            if layer == L - 1 and is_lstm and self.record_cells:
                cells_top = cells[0] if D == 1 else torch.cat(cells, 2)
            if layer < L - 1 and self.dropout > 0 and self.training:
                layer_input = F.dropout(layer_input, self.dropout, True)

        output = layer_input
        h_n = torch.stack(h_n)
        c_n = torch.stack(c_n) if is_lstm else None
        if not batched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = c_n.squeeze(1) if is_lstm else None
            cells_top = cells_top.squeeze(1) if cells_top is not None else None
        elif self.batch_first:
            output = output.transpose(0, 1)
            cells_top = cells_top.transpose(0, 1) if cells_top is not None else None
        self.last_cell_sequence = cells_top
        return (output, (h_n, c_n)) if is_lstm else (output, h_n)


_LAYER_DOC = """
    Args (torch's, same order and defaults):
        input_size, hidden_size, num_layers, {extra}bias, batch_first, dropout (between layers,
        training only), bidirectional{proj}.
    Keyword-only (zoneout and the recurrent baselines, see the module docstring):
        {rates}recurrent_dropout (drop probability of the update, [0, 1)),
        stochastic_depth (per-example per-step skip rate){shared},
        backend: "auto" (fused kernel when ``zoneout.kernels`` enables it, else reference),
        "reference" (python loop) or "fused". device, dtype: as torch.

    Shapes (L = num_layers, D = 2 if bidirectional else 1):
        input ``[T, B, input_size]`` (``[B, T, input_size]`` if batch_first, ``[T, input_size]`` unbatched).
        {hx}
        output ``[T, B, D*H]`` (batch_first: ``[B, T, D*H]``): the zoned h of the top layer, with
        directions concatenated ``[forward | reverse]``.

    Parameters ``weight_ih_l{{k}}[_reverse] [{g}H, in]``, ``weight_hh_l{{k}}[_reverse] [{g}H, H]``,
    ``bias_ih_l{{k}}[_reverse]``, ``bias_hh_l{{k}}[_reverse] [{g}H]``; gate rows {layout}.
"""


class ZoneoutLSTM(_ZoneoutRNNBase):
    _kind = "lstm"
    _gates = 4
    __doc__ = (
        """``torch.nn.LSTM`` with zoneout on c and h (paper §3) and the recurrent baselines.

    ``forward(input, hx=None) -> (output, (h_n, c_n))``. Set ``record_cells = True`` to keep the
    top layer's zoned cells ``[T, B, D*H]`` (same layout as output) in ``last_cell_sequence``.
"""
        + _LAYER_DOC.format(
            extra="", proj=", proj_size (must be 0)",
            rates="zoneout_c, zoneout_h (keep probabilities of c and h), ",
            shared=", zoneout_shared_mask (one mask at rate zoneout_c for c and h)",
            hx="hx ``(h_0, c_0)`` each ``[L*D, B, H]`` or None; h_n, c_n likewise.",
            g=4, layout="``[i | f | g | o]``",
        )
    )

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, *, zoneout_c: float = 0.0, zoneout_h: float = 0.0,
                 zoneout_shared_mask: bool = False, recurrent_dropout: float = 0.0,
                 stochastic_depth: float = 0.0, backend: str = "auto", device=None, dtype=None):
        if proj_size != 0:
            raise ValueError(
                f"ZoneoutLSTM does not support proj_size (got proj_size={proj_size}); "
                "use proj_size=0 and add a nn.Linear on the output if you need a projection"
            )
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         zoneout_c=zoneout_c, zoneout_h=zoneout_h, zoneout_shared_mask=zoneout_shared_mask,
                         recurrent_dropout=recurrent_dropout, stochastic_depth=stochastic_depth,
                         backend=backend, device=device, dtype=dtype)


class ZoneoutGRU(_ZoneoutRNNBase):
    _kind = "gru"
    _gates = 3
    __doc__ = (
        """``torch.nn.GRU`` with zoneout on h and the recurrent baselines.

    ``forward(input, hx=None) -> (output, h_n)``.
"""
        + _LAYER_DOC.format(
            extra="", proj="", rates="zoneout_h (keep probability of h), ", shared="",
            hx="hx ``[L*D, B, H]`` or None; h_n likewise.", g=3, layout="``[r | z | n]``",
        )
    )

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *,
                 zoneout_h: float = 0.0, zoneout_shared_mask: bool = False, recurrent_dropout: float = 0.0,
                 stochastic_depth: float = 0.0, backend: str = "auto", device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         zoneout_h=zoneout_h, zoneout_shared_mask=zoneout_shared_mask,
                         recurrent_dropout=recurrent_dropout, stochastic_depth=stochastic_depth,
                         backend=backend, device=device, dtype=dtype)


class ZoneoutRNN(_ZoneoutRNNBase):
    _kind = "rnn"
    _gates = 1
    __doc__ = (
        """``torch.nn.RNN`` (Elman, tanh or relu) with zoneout on h and the recurrent baselines.

    ``forward(input, hx=None) -> (output, h_n)``. ``recurrent_dropout`` drops the new candidate h.
"""
        + _LAYER_DOC.format(
            extra="nonlinearity (\"tanh\" | \"relu\", 4th like torch), ", proj="",
            rates="zoneout_h (keep probability of h), ", shared="",
            hx="hx ``[L*D, B, H]`` or None; h_n likewise.", g="", layout="``[h]``",
        )
    )

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, zoneout_h: float = 0.0, zoneout_shared_mask: bool = False,
                 recurrent_dropout: float = 0.0, stochastic_depth: float = 0.0, backend: str = "auto",
                 device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         zoneout_h=zoneout_h, zoneout_shared_mask=zoneout_shared_mask,
                         recurrent_dropout=recurrent_dropout, stochastic_depth=stochastic_depth,
                         backend=backend, nonlinearity=nonlinearity, device=device, dtype=dtype)
