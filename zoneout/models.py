"""The networks of the paper's experiments (Krueger et al. 2017, §4), built from plain keyword arguments
(the same names as the ``model`` config group):

* :class:`LanguageModel` (§4.1, char/word PTB, text8): embedding or one-hot -> stacked zoneout LSTM/GRU/RNN
  (or recurrent batch-norm LSTM) -> linear decoder over the vocabulary.
* :class:`SequenceClassifier` (§4.2, sequential/permuted MNIST): a zoneout LSTM reads one pixel per step
  (input size 1); a linear classifier reads the last hidden state.

Regularizers come from :mod:`zoneout.regularizers` (weight noise, norm stabilizer, sequence/variational dropout,
BNLSTM) and are imported only when their key is set, so a missing piece fails with a message naming the key.
Layers are kept one per depth level so non-recurrent (and variational) dropout can sit between them.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Hidden = List[Any]  # one entry per layer: (h, c) for LSTM cells, h for GRU/RNN; each [1, B, H]


def _import(module: str, attr: str, key: str):
    """Import ``module.attr`` for the feature behind config ``key``; fail loudly if it does not exist yet."""
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise RuntimeError(f"config key {key} needs {module}.{attr}, which is not available ({e})") from e


def make_recurrent_layer(cell: str, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh",
                         zoneout_c: float = 0.0, zoneout_h: float = 0.0, zoneout_shared_mask: bool = False,
                         recurrent_dropout: float = 0.0, stochastic_depth: float = 0.0,
                         batchnorm_gamma_init: float = 0.1, max_length: int = 1000,
                         backend: str = "auto") -> nn.Module:
    """One single-layer, time-major recurrent module with the ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` interface."""
    # Regularizer keywords are passed only when set, so a layer without that feature still builds unregularized.
    extra = {k: v for k, v in (("zoneout_shared_mask", zoneout_shared_mask), ("recurrent_dropout", recurrent_dropout),
                               ("stochastic_depth", stochastic_depth)) if v}
    if cell == "lstm":
        cls = _import("zoneout.rnn", "ZoneoutLSTM", "model.cell=lstm")
        return cls(input_size, hidden_size, 1, zoneout_c=zoneout_c, zoneout_h=zoneout_h, backend=backend, **extra)
    if cell == "gru":
        cls = _import("zoneout.rnn", "ZoneoutGRU", "model.cell=gru")
        return cls(input_size, hidden_size, 1, zoneout_h=zoneout_h, backend=backend, **extra)
    if cell == "rnn":
        cls = _import("zoneout.rnn", "ZoneoutRNN", "model.cell=rnn")
        return cls(input_size, hidden_size, 1, nonlinearity=nonlinearity, zoneout_h=zoneout_h, backend=backend,
                   **extra)
    if cell == "bnlstm":
        cls = _import("zoneout.regularizers", "BNLSTM", "model.cell=bnlstm")
        return cls(input_size, hidden_size, 1, zoneout_c=zoneout_c, zoneout_h=zoneout_h,
                   batchnorm_gamma_init=batchnorm_gamma_init, max_length=max_length, **extra)
    raise ValueError(f"unknown cell {cell!r}; allowed: lstm, gru, rnn, bnlstm")


def _dropout(p: float, variational: bool) -> nn.Module:
    if p == 0.0:
        return nn.Identity()
    return _import("zoneout.regularizers", "SequenceDropout", "model.dropout")(p, variational=variational)


def detach_hidden(hidden):
    """Cut the graph at a truncated-BPTT window boundary, keeping the values."""
    if hidden is None:
        return None
    if isinstance(hidden, Tensor):
        return hidden.detach()
    return type(hidden)(detach_hidden(h) for h in hidden) if isinstance(hidden, tuple) else \
        [detach_hidden(h) for h in hidden]


class _RecurrentStack(nn.Module):
    """Shared by both models: layers, dropout between them, the norm-stabilizer penalty, weight noise."""

    def _build_stack(self, input_size: int, cell: str, hidden_size: int, num_layers: int, dropout: float,
                     variational_dropout: bool, weight_noise_std: float, norm_stabilizer_beta: float,
                     norm_stabilizer_on_cells: bool, **layer_kwargs) -> None:
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.weight_noise_std = float(weight_noise_std)
        self.norm_stabilizer_beta = float(norm_stabilizer_beta)
        self.norm_stabilizer_on_cells = bool(norm_stabilizer_on_cells)
        if self.weight_noise_std > 0:
            _import("zoneout.regularizers", "weight_noise", "model.weight_noise_std")
        if self.norm_stabilizer_beta > 0:
            _import("zoneout.regularizers", "norm_stabilizer_loss", "model.norm_stabilizer_beta")
        self.rnns = nn.ModuleList(
            make_recurrent_layer(cell, input_size if l == 0 else hidden_size, hidden_size, **layer_kwargs)
            for l in range(num_layers))
        if self.norm_stabilizer_on_cells:
            for layer in self.rnns:
                layer.record_cells = True
        self.drop_between = _dropout(dropout, variational_dropout)
        self._penalty: Optional[Tensor] = None

    def _run_stack(self, x: Tensor, hidden: Optional[Hidden]) -> Tuple[Tensor, Hidden]:
        """x [T, B, F] -> top output [T, B, H], new hidden (list per layer)."""
        new_hidden, states = [], []
        for l, rnn in enumerate(self.rnns):
            if l > 0:
                x = self.drop_between(x)
            x, h = rnn(x, None if hidden is None else hidden[l])
            new_hidden.append(h)
            if self.norm_stabilizer_beta > 0 and self.training:
                states.append(rnn.last_cell_sequence if self.norm_stabilizer_on_cells else x)
        self._penalty = None
        if states:
            loss_fn = _import("zoneout.regularizers", "norm_stabilizer_loss", "model.norm_stabilizer_beta")
            self._penalty = loss_fn(states, self.norm_stabilizer_beta)
        return x, new_hidden

    def regularization_loss(self) -> Optional[Tensor]:
        """The norm-stabilizer penalty of the last training forward pass (None when off)."""
        return self._penalty

    def weight_noise(self):
        """Context manager around forward + backward of one minibatch: fresh Gaussian weight noise (training)."""
        if self.weight_noise_std == 0 or not self.training:
            return contextlib.nullcontext()
        return _import("zoneout.regularizers", "weight_noise", "model.weight_noise_std")(self, self.weight_noise_std)

    @staticmethod
    def _init_uniform(module: nn.Module, init_range: Optional[float]) -> None:
        """U(-init_range, init_range) for every weight and bias, except batch-norm scale/shift (bnlstm): their
        γ = batchnorm_gamma_init, β = 0 are part of the method (Cooijmans et al. 2016), not a random init."""
        if not init_range:
            return
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._NormBase) or "BatchNorm" in type(sub).__name__:
                continue
            for p in sub.parameters(recurse=False):
                nn.init.uniform_(p, -init_range, init_range)


class LanguageModel(_RecurrentStack):
    """Embedding (or one-hot) -> ``num_layers`` zoneout recurrent layers -> linear decoder.

    ``forward(tokens [T, B] long, hidden=None) -> logits [T, B, vocab_size], hidden`` (time-major; ``hidden``
    is a list with one entry per layer, carried between truncated-BPTT windows after :func:`detach_hidden`).
    ``dropout`` (drop probability) acts on the embeddings, between layers and before the decoder, never on the
    recurrent connections; ``variational_dropout`` makes it one mask per sequence.
    """

    def __init__(self, vocab_size: int, cell: str = "lstm", nonlinearity: str = "tanh",
                 embedding_size: Optional[int] = None, hidden_size: int = 1000, num_layers: int = 1,
                 zoneout_c: float = 0.0, zoneout_h: float = 0.0, zoneout_shared_mask: bool = False,
                 recurrent_dropout: float = 0.0, stochastic_depth: float = 0.0, dropout: float = 0.0,
                 variational_dropout: bool = False, weight_noise_std: float = 0.0,
                 norm_stabilizer_beta: float = 0.0, norm_stabilizer_on_cells: bool = False,
                 tie_weights: bool = False, init_range: Optional[float] = None,
                 batchnorm_gamma_init: float = 0.1, backend: str = "auto", max_length: int = 1000):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_size) if embedding_size else None
        input_size = embedding_size if embedding_size else vocab_size
        self.drop_in = _dropout(dropout, variational_dropout)
        self._build_stack(input_size, cell, hidden_size, num_layers, dropout, variational_dropout,
                          weight_noise_std, norm_stabilizer_beta, norm_stabilizer_on_cells,
                          nonlinearity=nonlinearity, zoneout_c=zoneout_c, zoneout_h=zoneout_h,
                          zoneout_shared_mask=zoneout_shared_mask, recurrent_dropout=recurrent_dropout,
                          stochastic_depth=stochastic_depth, batchnorm_gamma_init=batchnorm_gamma_init,
                          max_length=max_length, backend=backend)
        self.drop_out = _dropout(dropout, variational_dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self._init_uniform(self, init_range)
        if tie_weights:
            if self.embedding is None or embedding_size != hidden_size:
                raise ValueError("tie_weights=True needs embedding_size == hidden_size")
            self.decoder.weight = self.embedding.weight

    def forward(self, tokens: Tensor, hidden: Optional[Hidden] = None) -> Tuple[Tensor, Hidden]:
        if self.embedding is not None:
            x = self.embedding(tokens)
        else:
            x = F.one_hot(tokens, self.vocab_size).to(self.decoder.weight.dtype)
        x = self.drop_in(x)
        out, hidden = self._run_stack(x, hidden)
        return self.decoder(self.drop_out(out)), hidden


class SequenceClassifier(_RecurrentStack):
    """Sequential (p)MNIST: ``forward(x [B, T] or [B, T, input_size]) -> logits [B, num_classes]``.

    The pixels are read one per step (time-major inside); the classifier sees the last step's hidden state
    of the top layer.
    """

    def __init__(self, num_classes: int = 10, input_size: int = 1, cell: str = "lstm", nonlinearity: str = "tanh",
                 hidden_size: int = 100, num_layers: int = 1, zoneout_c: float = 0.0, zoneout_h: float = 0.0,
                 zoneout_shared_mask: bool = False, recurrent_dropout: float = 0.0, stochastic_depth: float = 0.0,
                 dropout: float = 0.0, variational_dropout: bool = False, weight_noise_std: float = 0.0,
                 norm_stabilizer_beta: float = 0.0, norm_stabilizer_on_cells: bool = False,
                 init_range: Optional[float] = None, batchnorm_gamma_init: float = 0.1, backend: str = "auto",
                 max_length: int = 784, embedding_size: Optional[int] = None, tie_weights: bool = False):
        super().__init__()
        if embedding_size or tie_weights:
            raise ValueError("SequenceClassifier reads real-valued pixels: embedding_size and tie_weights "
                             "must be unset")
        self.input_size = input_size
        self._build_stack(input_size, cell, hidden_size, num_layers, dropout, variational_dropout,
                          weight_noise_std, norm_stabilizer_beta, norm_stabilizer_on_cells,
                          nonlinearity=nonlinearity, zoneout_c=zoneout_c, zoneout_h=zoneout_h,
                          zoneout_shared_mask=zoneout_shared_mask, recurrent_dropout=recurrent_dropout,
                          stochastic_depth=stochastic_depth, batchnorm_gamma_init=batchnorm_gamma_init,
                          max_length=max_length, backend=backend)
        self.drop_out = _dropout(dropout, False)
        self.classifier = nn.Linear(hidden_size, num_classes)
        self._init_uniform(self, init_range)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        out, _ = self._run_stack(x.transpose(0, 1), None)   # [T, B, H]
        return self.classifier(self.drop_out(out[-1]))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, tied weights counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
