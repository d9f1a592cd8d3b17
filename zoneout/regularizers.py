"""The baselines of the Zoneout paper (Krueger et al., ICLR 2017, Section 4 and Tables 1-2), one small piece each.

Everything here is plain PyTorch (no Hydra), usable from a notebook:

====================================  ==========================================================================
piece                                 paper / where
====================================  ==========================================================================
:func:`keep_to_drop`                  the authors' scripts pass keep probabilities (their README: "zoneout
                                      probabilities are (1-zoneout_probability)"); this names the conversion
:func:`weight_noise`                  weight noise, Graves (2011); Zoneout §4.1 (char-PTB, text8, σ = 0.075)
:func:`norm_stabilizer_loss`          norm stabilizer, Krueger & Memisevic (2016); Zoneout §4.1 (β = 50)
:class:`SequenceDropout`              non-recurrent dropout, Zaremba et al. (2014) (word-PTB, §4.1.2) and
                                      variational dropout, Gal (2016) (one mask per sequence; extension row)
:class:`BNLSTM`                       recurrent batch normalization, Cooijmans et al. (2017); Zoneout §4.2,
                                      Table 2 (pMNIST), combinable with zoneout (shared c/h mask in that row)
====================================  ==========================================================================

Recurrent dropout (Semeniuta et al., 2016), stochastic depth (Zoneout §2.3 / §4.1.1) and the zoneout variants
live inside the recurrence and are keyword arguments of :class:`zoneout.ZoneoutLSTM` (``recurrent_dropout``,
``stochastic_depth``, ``zoneout_shared_mask``); :class:`BNLSTM` accepts the same keywords with the same meaning.

Conventions: sequences are time-major ``[T, B, F]`` unless ``batch_first``; ``zoneout_c`` / ``zoneout_h`` are the
probability that a unit KEEPS its previous value; ``recurrent_dropout`` and ``SequenceDropout.p`` are DROP
probabilities.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .functional import mix
from .rnn import SequenceMasks, sample_masks

__all__ = [
    "keep_to_drop",
    "noisy_parameters",
    "weight_noise",
    "norm_stabilizer_loss",
    "SequenceDropout",
    "TimestepBatchNorm",
    "BNLSTMCell",
    "BNLSTM",
]


# ---------------------------------------------------------------------------------------------------------------
# conventions
# ---------------------------------------------------------------------------------------------------------------
def keep_to_drop(p_keep: float) -> float:
    """Convert the authors' keep probability into this repository's drop probability: ``1 - p_keep``.

    The original Theano scripts (github.com/teganmaharaj/zoneout) name every rate ``drop_prob_*`` but use it as
    the probability of UPDATING (keeping the new value of) a unit, e.g. ``--drop_prob_igates=0.7`` is recurrent
    dropout that keeps 70 % of the cell updates, i.e. ``recurrent_dropout=keep_to_drop(0.7) == 0.3`` here.
    The same complement maps their zoneout flags (``--drop_prob_cells=0.95`` = update probability 0.95) to this
    repository's keep rates (``zoneout_c = 0.05``). The conversion is symmetric
    (``keep_to_drop(keep_to_drop(p)) == p``) and rounded to 12 decimals so that ``keep_to_drop(0.7)`` prints as 0.3.
    """
    p_keep = float(p_keep)
    if not 0.0 <= p_keep <= 1.0:
        raise ValueError(f"a probability must lie in [0, 1], got {p_keep}")
    return round(1.0 - p_keep, 12)


# ---------------------------------------------------------------------------------------------------------------
# weight noise
# ---------------------------------------------------------------------------------------------------------------
def noisy_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """The parameters weight noise perturbs: every weight MATRIX (``ndim >= 2``) that requires grad.

    That is the input-to-hidden, hidden-to-hidden and decoder weights and the embedding table (with one-hot
    inputs, as in the authors' char-PTB model, the embedding *is* the input-to-hidden matrix), but no biases,
    no batch-norm gains/shifts and no initial states (all 1-D). Tied weights appear once.
    """
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]


@contextmanager
def weight_noise(
    model: nn.Module,
    std: float,
    generator: Optional[torch.Generator] = None,
    parameters: Optional[Iterable[nn.Parameter]] = None,
) -> Iterator[List[Tensor]]:
    """Additive Gaussian weight noise ``W + ε, ε ~ N(0, std²)`` for one minibatch (Graves 2011; Zoneout §4.1).

    Use it around forward AND backward; step the optimizer after the block::

        with weight_noise(model, std=0.075):
            loss = criterion(model(x), y)
            loss.backward()          # gradient taken at the noisy point W + ε
        optimizer.step()             # ... and applied to the clean weights W

    On entry, fresh noise is added in place to every tensor of :func:`noisy_parameters` (or ``parameters``);
    on exit -- also when an exception is raised -- the exact original values are copied back (bit-exact), so
    the optimizer updates the clean weights with ∇L(W + ε), which is the standard (Graves 2011 / Blocks
    ``apply_noise``, used by the authors) weight-noise estimator. Why in place rather than
    ``torch.nn.utils.parametrize``: parameter names, ``state_dict`` keys and fused kernels that read
    ``weight_hh_l0`` directly stay untouched, and no torch internals are patched.

    It is a no-op (yields ``[]``) when ``std == 0`` or ``model.training`` is False, so evaluation always sees the
    clean weights. Exiting before ``backward`` makes autograd raise ("modified by an inplace operation"),
    which is the intended guard against computing a gradient at the wrong point.
    Yields the list of noise tensors (handy for tests).
    """
    if std < 0:
        raise ValueError(f"weight_noise std must be >= 0, got {std}")
    if std == 0 or not model.training:
        yield []
        return
    params = [p for _, p in noisy_parameters(model)] if parameters is None else list(parameters)
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        noises = []
        for p in params:
            eps = torch.randn(p.shape, generator=generator, dtype=p.dtype, device=p.device) * std
            p.add_(eps)
            noises.append(eps)
    try:
        yield noises
    finally:
        with torch.no_grad():
            for p, clean in zip(params, saved):
                p.copy_(clean)


# ---------------------------------------------------------------------------------------------------------------
# norm stabilizer
# ---------------------------------------------------------------------------------------------------------------
def norm_stabilizer_loss(
    states: Union[Tensor, Sequence[Tensor]], beta: float, batch_first: bool = False
) -> Tensor:
    """Norm stabilizer (Krueger & Memisevic 2016; Zoneout §4.1, char-PTB/text8 β = 50).

    ``β · mean_b [ Σ_{t=2..T} (‖h_t^b‖₂ − ‖h_{t−1}^b‖₂)² / (T − 1) ]``

    states: ``[T, B, H]`` (``[B, T, H]`` if ``batch_first``) -- the hidden states ``h`` (the layer's output), or
    the cell sequence ``c`` (``layer.last_cell_sequence`` with ``layer.record_cells = True``) for the paper's
    "on cells" option; or a list of such tensors (one per layer), whose penalties are summed as in the
    authors' code. Returns a scalar; 0 when ``beta == 0`` or ``T < 2``. The norm is floored at the smallest
    positive float before the square root's gradient is taken (as the authors do), so all-zero states don't
    produce NaN gradients. The step between two truncated-BPTT windows is not penalized (the authors divide by
    ``seq_len − 1`` too).
    """
    if isinstance(states, (list, tuple)):
        if not states:
            raise ValueError("norm_stabilizer_loss needs at least one state sequence")
        return sum(norm_stabilizer_loss(s, beta, batch_first) for s in states)
    if states.dim() != 3:
        raise ValueError(f"expected a [T, B, H] sequence, got shape {tuple(states.shape)}")
    h = states.transpose(0, 1) if batch_first else states
    T = h.shape[0]
    if beta == 0 or T < 2:
        return h.new_zeros(())
    tiny = torch.finfo(h.dtype).tiny
    norms = h.pow(2).sum(-1).clamp_min(tiny).sqrt()  # [T, B]
    per_example = (norms[1:] - norms[:-1]).pow(2).sum(0) / (T - 1)  # [B]
    return beta * per_example.mean()


# ---------------------------------------------------------------------------------------------------------------
# non-recurrent and variational dropout
# ---------------------------------------------------------------------------------------------------------------
class SequenceDropout(nn.Module):
    """Dropout for ``[T, B, F]`` sequences (``[B, T, F]`` if ``batch_first``), inverted scaling ``1/(1−p)``.

    * ``variational=False`` -- Zaremba et al. (2014): a fresh mask per element, time step and example; used on
      embeddings, between layers and before the decoder, never on the recurrent connection (word-PTB, §4.1.2).
    * ``variational=True``  -- Gal (2016): ONE mask per sequence (shape ``[1, B, F]``) shared by all time steps.

    Eval: identity. ``p`` is the DROP probability. A 2-D ``[B, F]`` input is treated as a single step.
    """

    def __init__(self, p: float = 0.0, variational: bool = False, batch_first: bool = False):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must lie in [0, 1), got {p}")
        self.p = float(p)
        self.variational = bool(variational)
        self.batch_first = bool(batch_first)

    def mask(self, x: Tensor) -> Tensor:
        """The scaled keep mask for ``x`` (0 or ``1/(1−p)``), broadcastable to ``x``."""
        shape = list(x.shape)
        if self.variational and x.dim() >= 3:
            shape[1 if self.batch_first else 0] = 1
        keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.p)
        return keep / (1.0 - self.p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * self.mask(x)

    def extra_repr(self) -> str:
        return f"p={self.p}, variational={self.variational}"


# ---------------------------------------------------------------------------------------------------------------
# recurrent batch normalization
# ---------------------------------------------------------------------------------------------------------------
def _per_step(mask, T: int) -> Sequence:
    """A [T, ...] mask as T per-step tensors; a float or None as the same value at every step."""
    return mask.unbind(0) if isinstance(mask, Tensor) else [mask] * T


class TimestepBatchNorm(nn.Module):
    """Batch normalization with separate population statistics per time step (Cooijmans et al. 2017, §3).

    ``forward(x, t)`` with ``x: [B, F]``. Train: normalize with the minibatch mean and (biased) variance and
    update ``running_mean[t]`` / ``running_var[t]`` (unbiased, exponential average with ``momentum`` like
    ``nn.BatchNorm1d``). Eval: normalize with the statistics of step ``min(t, max_length − 1)`` -- steps beyond
    the longest training length reuse the last one, as the paper prescribes. γ is initialised to
    ``gamma_init`` (0.1 in the paper: keeps tanh/sigmoid out of saturation); β to 0 (``bias=False`` drops it,
    e.g. where a separate LSTM bias makes it redundant).
    """

    def __init__(self, num_features: int, max_length: int, gamma_init: float = 0.1, bias: bool = True,
                 eps: float = 1e-5, momentum: float = 0.1, device=None, dtype=None):
        super().__init__()
        if max_length < 1:
            raise ValueError("max_length must be >= 1")
        fk = {"device": device, "dtype": dtype}
        self.num_features, self.max_length = num_features, max_length
        self.gamma_init, self.eps, self.momentum = gamma_init, eps, momentum
        self.weight = nn.Parameter(torch.empty(num_features, **fk))
        self.bias = nn.Parameter(torch.empty(num_features, **fk)) if bias else None
        self.register_buffer("running_mean", torch.zeros(max_length, num_features, **fk))
        self.register_buffer("running_var", torch.ones(max_length, num_features, **fk))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.gamma_init)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self.running_mean.zero_()
        self.running_var.fill_(1.0)

    def forward(self, x: Tensor, t: int) -> Tensor:
        t = min(int(t), self.max_length - 1)
        if self.training:
            mean = x.mean(0)
            var = x.var(0, unbiased=False)
            with torch.no_grad():
                n = x.shape[0]
                unbiased = var * (n / (n - 1)) if n > 1 else var
                self.running_mean[t].lerp_(mean.detach(), self.momentum)
                self.running_var[t].lerp_(unbiased.detach(), self.momentum)
        else:
            mean, var = self.running_mean[t], self.running_var[t]
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"{self.num_features}, max_length={self.max_length}, gamma_init={self.gamma_init}"


class BNLSTMCell(nn.Module):
    """One step of the batch-normalized LSTM (Cooijmans et al. 2017, eqs. 6-8), gate order i, f, g, o as torch::

        [i f g o] = BN_h(W_hh h_{t−1}; γ_h) + BN_x(W_ih x_t; γ_x) + b
        c_t = σ(f) ⊙ c_{t−1} + σ(i) ⊙ tanh(g)
        h_t = σ(o) ⊙ tanh(BN_c(c_t; γ_c, β_c))

    The two pre-activation BNs have no β (the shared bias ``b`` plays that role). Parameters: ``weight_ih``
    [4H, I], ``weight_hh`` [4H, H] (orthogonal per gate block), ``bias`` [4H] (forget gate 1, others 0),
    ``bn_ih``, ``bn_hh``, ``bn_c`` (:class:`TimestepBatchNorm`).
    """

    def __init__(self, input_size: int, hidden_size: int, max_length: int = 1000, batchnorm_gamma_init: float = 0.1,
                 bias: bool = True, eps: float = 1e-5, momentum: float = 0.1, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **fk))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **fk))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size, **fk)) if bias else None
        bn = dict(max_length=max_length, gamma_init=batchnorm_gamma_init, eps=eps, momentum=momentum, **fk)
        self.bn_ih = TimestepBatchNorm(4 * hidden_size, bias=False, **bn)
        self.bn_hh = TimestepBatchNorm(4 * hidden_size, bias=False, **bn)
        self.bn_c = TimestepBatchNorm(hidden_size, bias=True, **bn)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        H = self.hidden_size
        bound = 1.0 / math.sqrt(H)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        with torch.no_grad():
            for k in range(4):  # orthogonal recurrent blocks, as Cooijmans et al. and the authors' pMNIST code
                nn.init.orthogonal_(self.weight_hh[k * H:(k + 1) * H])
            if self.bias is not None:
                self.bias.zero_()
                self.bias[H:2 * H] = 1.0
        for bn in (self.bn_ih, self.bn_hh, self.bn_c):
            bn.reset_parameters()

    def forward(self, x: Tensor, state: Tuple[Tensor, Tensor], t: int,
                update_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """x: [B, I]; state (h, c): [B, H] each; t: time index for the BN statistics; update_mask: [B, H]
        multiplier on the cell update (recurrent dropout, already scaled). Returns the new (h, c), unzoned."""
        return self.step_projected(x @ self.weight_ih.t(), state, t, update_mask)

    def step_projected(self, xw: Tensor, state: Tuple[Tensor, Tensor], t: int,
                       update_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """:meth:`forward` given the input projection ``xw = x @ weight_ih.T`` ([B, 4H]), so a layer can
        project all timesteps in one matmul."""
        h, c = state
        gates = self.bn_hh(h @ self.weight_hh.t(), t) + self.bn_ih(xw, t)
        if self.bias is not None:
            gates = gates + self.bias
        i, f, g, o = gates.chunk(4, dim=1)
        update = torch.sigmoid(i) * torch.tanh(g)
        if update_mask is not None:
            update = update * update_mask
        c_new = torch.sigmoid(f) * c + update
        h_new = torch.sigmoid(o) * torch.tanh(self.bn_c(c_new, t))
        return h_new, c_new


class BNLSTM(nn.Module):
    """Multi-layer batch-normalized LSTM with an ``nn.LSTM``-like interface (Cooijmans et al. 2017; Zoneout §4.2).

    ``forward(input, hx=None) -> output, (h_n, c_n)``; input ``[T, B, I]`` (``[B, T, I]`` if ``batch_first``),
    ``hx = (h_0, c_0)`` each ``[num_layers, B, H]``; output ``[T, B, H]`` (top layer).
    Time index ``t`` of the per-step BN statistics restarts at 0 on every call (one call = one sequence, as in
    pMNIST); steps ``t >= max_length`` share the statistics of ``max_length − 1``.

    Regularizers, same meaning as in :class:`zoneout.ZoneoutLSTM`:
      * ``zoneout_c``, ``zoneout_h``: probability of KEEPING the previous value (train: per unit/example/step
        Bernoulli mask, no rescaling; eval: ``p·prev + (1−p)·new``). The cell that is zoned out is the
        un-normalized ``c_t``; ``h_t`` is computed from the fresh ``c_t`` and then zoned out, as in the authors'
        pMNIST code.
      * ``zoneout_shared_mask``: one mask for c and h (rate ``zoneout_c``; ``zoneout_h`` must be 0 or equal) --
        the paper's recurrent BN + zoneout row (the authors' script passes the states mask for both).
      * ``recurrent_dropout``: DROP probability on the cell update σ(i)⊙tanh(g), inverted scaling in train.
      * ``stochastic_depth``: probability that a whole step is skipped (one Bernoulli per example and step,
        shared by all units of c and h), folded into the keep masks; eval rate ``1 − (1−p)(1−z)``.
      * ``dropout``: non-recurrent dropout on the outputs of every layer except the last (torch semantics).
    ``record_cells = True`` keeps the top layer's per-step cell sequence ``[T, B, H]`` in ``last_cell_sequence``
    (for :func:`norm_stabilizer_loss` on cells). ``backend`` is accepted for interface parity and ignored.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, *, zoneout_c: float = 0.0, zoneout_h: float = 0.0,
                 zoneout_shared_mask: bool = False, recurrent_dropout: float = 0.0, stochastic_depth: float = 0.0,
                 batchnorm_gamma_init: float = 0.1, max_length: int = 1000, eps: float = 1e-5,
                 momentum: float = 0.1, backend: str = "reference", device=None, dtype=None):
        super().__init__()
        for name, v in (("zoneout_c", zoneout_c), ("zoneout_h", zoneout_h), ("stochastic_depth", stochastic_depth),
                        ("dropout", dropout)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {v}")
        if not 0.0 <= recurrent_dropout < 1.0:
            raise ValueError(f"recurrent_dropout must lie in [0, 1), got {recurrent_dropout}")
        if zoneout_shared_mask and zoneout_h not in (0.0, zoneout_c):
            raise ValueError(f"zoneout_shared_mask=True draws one mask at rate zoneout_c={zoneout_c} for c and h; "
                             f"zoneout_h={zoneout_h} would be ignored. Set zoneout_h=0 or equal to zoneout_c.")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.dropout = batch_first, float(dropout)
        self.zoneout_c, self.zoneout_h = float(zoneout_c), float(zoneout_h)
        self.zoneout_shared_mask = bool(zoneout_shared_mask)
        self.recurrent_dropout, self.stochastic_depth = float(recurrent_dropout), float(stochastic_depth)
        self.backend = backend
        self.record_cells = False
        self.last_cell_sequence: Optional[Tensor] = None
        self.cells = nn.ModuleList(
            BNLSTMCell(input_size if l == 0 else hidden_size, hidden_size, max_length=max_length,
                       batchnorm_gamma_init=batchnorm_gamma_init, bias=bias, eps=eps, momentum=momentum,
                       device=device, dtype=dtype)
            for l in range(num_layers))

    def _sample_masks(self, T: int, B: int, like: Tensor) -> List[SequenceMasks]:
        """All masks of one forward call, one :class:`zoneout.rnn.SequenceMasks` per layer, drawn up front by
        :func:`zoneout.rnn.sample_masks` exactly as :class:`zoneout.ZoneoutLSTM` draws them: keep masks
        ``[T, B, H]`` in training (stochastic depth folded in), the expectation rates as floats in eval."""
        return [
            sample_masks(T, B, self.hidden_size, like, training=self.training, zoneout_h=self.zoneout_h,
                         zoneout_c=self.zoneout_c, shared_mask=self.zoneout_shared_mask,
                         recurrent_dropout=self.recurrent_dropout, stochastic_depth=self.stochastic_depth)
            for _ in range(self.num_layers)
        ]

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None,
                _masks: Optional[Sequence[SequenceMasks]] = None):
        """``_masks`` (tests): one :class:`zoneout.rnn.SequenceMasks` per layer replacing the random draws."""
        x = input.transpose(0, 1) if self.batch_first else input
        T, B, _ = x.shape
        H = self.hidden_size
        if hx is None:
            z = x.new_zeros(self.num_layers, B, H)
            hx = (z, z)
        h0, c0 = hx
        masks = self._sample_masks(T, B, x) if _masks is None else _masks
        if len(masks) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} SequenceMasks (one per layer), got {len(masks)}")
        h_n, c_n = [], []
        cells_seq = None
        for l, cell in enumerate(self.cells):
            keep_h, keep_c, update = masks[l]
            keep_h, keep_c = _per_step(keep_h, T), _per_step(keep_c, T)
            upd = _per_step(update, T)
            h, c = h0[l], c0[l]
            outs, cs = [], []
            xw = x @ cell.weight_ih.t()  # all timesteps in one matmul; BN still per step
            for t, xw_t in enumerate(xw.unbind(0)):
                h_new, c_new = cell.step_projected(xw_t, (h, c), t, upd[t])
                # the fresh (unzoned) c feeds h_new; the zoned c is carried (authors' pMNIST code)
                h, c = mix(h, h_new, keep_h[t]), mix(c, c_new, keep_c[t])
                outs.append(h)
                cs.append(c)
            x = torch.stack(outs, 0)
            if self.record_cells and l == self.num_layers - 1:
                cells_seq = torch.stack(cs, 0)
            h_n.append(h)
            c_n.append(c)
            if self.dropout > 0 and self.training and l < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        self.last_cell_sequence = cells_seq if not self.batch_first or cells_seq is None else cells_seq.transpose(0, 1)
        out = x.transpose(0, 1) if self.batch_first else x
        return out, (torch.stack(h_n, 0), torch.stack(c_n, 0))

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        for k in ("zoneout_c", "zoneout_h", "recurrent_dropout", "stochastic_depth", "dropout"):
            if getattr(self, k):
                s += f", {k}={getattr(self, k)}"
        if self.zoneout_shared_mask:
            s += ", zoneout_shared_mask=True"
        return s
