"""Training and evaluation loops on plain objects (no config system), paper §4.

Language models (§4.1): truncated backpropagation through time over a token stream laid out in columns
(``zoneout.data.batchify``); the hidden state is carried, detached, from one window to the next, in training and
in evaluation (eval mode: zoneout uses its expectation). The loss is the mean NLL in nats per predicted token.
Sequence classifiers (§4.2): minibatches of whole pixel sequences, shuffled per epoch with a generator seeded from
``(seed, epoch)`` so an interrupted epoch can be resumed at the same batch.

Everything a resume needs (epoch, step, window position, carried hidden state, running sums) lives in
:class:`LoopState`; ``on_step`` is called after every optimizer step (checkpointing, preemption signals).
A non-finite loss or gradient raises :class:`DivergenceError` *before* the optimizer step, so the weights and
any checkpoint on disk stay the last good ones. With ``max_skipped_batches=n`` the first n such batches are
skipped instead (no optimizer step; the hidden state carried into the batch is kept; ``on_skip`` is told, the
count is saved in :class:`LoopState`), and the next one stops the run.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoneout.data.batching import bptt_windows, num_windows
from zoneout.metrics import LN2
from zoneout.models import detach_hidden


class DivergenceError(RuntimeError):
    """Loss or gradient became NaN/inf; raised before the optimizer step."""


@dataclass
class LoopState:
    epoch: int = 1                 # the epoch being trained (1-based)
    step: int = 0                  # optimizer steps since the start of the run
    position: int = 0              # windows / minibatches of this epoch already trained
    hidden: Any = None             # carried (detached) hidden state, language models
    loss_sum: float = 0.0          # this epoch's sum of per-token NLL (nats) ...
    count: int = 0                 # ... and number of tokens / examples behind it
    correct: int = 0               # classification: correct training predictions this epoch
    tokens_seen: int = 0           # whole run, for tokens_per_second
    train_seconds: float = 0.0     # whole run, accumulated across resumes
    best_valid: float = math.inf   # best validation loss (nats) so far
    best_epoch: int = 0
    skipped_batches: int = 0       # whole run: batches skipped for a non-finite loss/gradient
    history: List[Dict[str, Any]] = field(default_factory=list)   # metrics.jsonl rows

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.position, self.hidden = epoch, 0, None
        self.loss_sum, self.count, self.correct = 0.0, 0, 0

    def state_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_state_dict(cls, d: Dict[str, Any]) -> "LoopState":
        return cls(**d)


# --------------------------------------------------------------------------------------- optimization

def build_optimizer(params, name: str = "adam", lr: float = 0.002, momentum: float = 0.0, alpha: float = 0.99,
                    eps: float = 1e-8, weight_decay: float = 0.0, **_unused) -> torch.optim.Optimizer:
    """Adam / SGD / RMSprop from the ``optim`` config keys (``clip_grad_norm`` and the lr schedule are used
    by the loop, not the optimizer)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                                   weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; allowed: adam, sgd, rmsprop")


def lr_for_epoch(lr: float, epoch: int, lr_decay: float = 1.0, lr_decay_start_epoch: int = 1) -> float:
    """``lr * lr_decay ** max(0, epoch - lr_decay_start_epoch)`` (epoch 1-based). Word-PTB (Zaremba et al.):
    lr 1 for 14 epochs, then ÷1.15 per epoch = ``lr_decay=1/1.15, lr_decay_start_epoch=14``. Being a function of
    the epoch, the schedule needs no state of its own to resume."""
    return lr * lr_decay ** max(0, epoch - lr_decay_start_epoch)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _check_finite(value: Tensor, what: str, state: LoopState) -> None:
    if not torch.isfinite(value).all():
        raise DivergenceError(f"{what} is {value.item()} at epoch {state.epoch}, step {state.step + 1} "
                              f"(window {state.position + 1} of the epoch); training stopped before the "
                              "optimizer step, so the weights and the last checkpoint are the last good ones")


def _backward(model: nn.Module, optimizer, loss: Tensor, state: LoopState) -> None:
    """loss -> (+ regularizer) -> finite check -> backward (inside weight noise) -> clip -> step.

    The caller runs forward inside ``model.weight_noise()``; backward happens here, still inside it."""
    penalty = model.regularization_loss() if hasattr(model, "regularization_loss") else None
    total = loss if penalty is None else loss + penalty
    _check_finite(total, "the training loss", state)
    optimizer.zero_grad(set_to_none=True)
    total.backward()


def _clip_and_step(model: nn.Module, optimizer, clip_grad_norm: Optional[float], state: LoopState) -> None:
    params = [p for p in model.parameters() if p.grad is not None]
    if clip_grad_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    _check_finite(norm, "the gradient norm", state)
    optimizer.step()


def _skip_or_raise(error: DivergenceError, optimizer, state: LoopState, max_skipped_batches: int,
                   on_skip: Optional[Callable[[LoopState, str], None]]) -> None:
    """Skip the batch (count it, drop its gradients) while under the limit; else re-raise naming the limit."""
    optimizer.zero_grad(set_to_none=True)
    if state.skipped_batches >= max_skipped_batches:
        if max_skipped_batches:
            raise DivergenceError(f"{error}; {state.skipped_batches} batch(es) already skipped, the limit "
                                  f"trainer.max_skipped_batches={max_skipped_batches} is reached") from error
        raise error
    state.skipped_batches += 1
    state.position += 1
    if on_skip is not None:
        on_skip(state, str(error))


def _train_step(model: nn.Module, optimizer, forward: Callable[[], Tuple[Tensor, Any]], state: LoopState,
                clip_grad_norm: Optional[float], max_skipped_batches: int,
                on_skip: Optional[Callable[[LoopState, str], None]], bar) -> Optional[Tuple[Tensor, Any]]:
    """One optimizer step shared by every loop: ``forward()`` (inside weight noise) gives ``(loss, extra)``;
    then regularizer, finite checks, backward, clip, step. Returns ``(loss, extra)``, or None when the batch
    was skipped for a non-finite loss/gradient (counted, progress bar advanced; raises past the limit)."""
    try:
        with model.weight_noise():
            loss, extra = forward()
            _backward(model, optimizer, loss, state)
        _clip_and_step(model, optimizer, clip_grad_norm, state)
    except DivergenceError as e:
        _skip_or_raise(e, optimizer, state, max_skipped_batches, on_skip)
        if bar is not None:
            bar.update(1)
        return None
    return loss, extra


def _progress(total: Optional[int], initial: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)


# ------------------------------------------------------------------------------------ language models

def train_lm_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batched: Tensor, seq_len: int,
                   state: LoopState, *, clip_grad_norm: Optional[float] = None,
                   max_steps: Optional[int] = None, device: Any = "cpu", metric: str = "bpc",
                   on_step: Optional[Callable[[LoopState], None]] = None, progress: bool = False,
                   max_skipped_batches: int = 0,
                   on_skip: Optional[Callable[[LoopState, str], None]] = None) -> float:
    """Train one epoch (or its remainder from ``state.position``) of truncated BPTT.

    batched: ``[n_rows, B]`` token ids (columns = independent streams). Returns the epoch's mean NLL (nats/token).
    """
    model.train()
    total = num_windows(batched.size(0), seq_len)
    if max_steps is not None:
        total = min(total, max_steps)
    bar = _progress(total, state.position, progress, f"epoch {state.epoch}")
    hidden = state.hidden
    try:
        for x, y in itertools.islice(bptt_windows(batched, seq_len, start=state.position * seq_len),
                                      total - state.position):
            x, y = x.to(device), y.to(device)

            def forward(x=x, y=y):
                logits, new_hidden = model(x, hidden)
                return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)), new_hidden

            done = _train_step(model, optimizer, forward, state, clip_grad_norm, max_skipped_batches, on_skip, bar)
            if done is None:
                continue
            loss, new_hidden = done
            hidden = detach_hidden(new_hidden)
            n = y.numel()
            state.hidden, state.position, state.step = hidden, state.position + 1, state.step + 1
            state.loss_sum += loss.item() * n
            state.count += n
            state.tokens_seen += n
            if bar is not None:
                mean = state.loss_sum / state.count
                shown = {"loss": f"{mean:.3f}"}
                shown[metric] = f"{mean / LN2:.3f}" if metric == "bpc" else f"{math.exp(min(mean, 50)):.1f}"
                bar.set_postfix(shown, refresh=False)
                bar.update(1)
            if on_step is not None:
                on_step(state)
    finally:
        if bar is not None:
            bar.close()
    return state.loss_sum / max(state.count, 1)


@torch.no_grad()
def evaluate_lm(model: nn.Module, batched: Tensor, seq_len: int, *, max_batches: Optional[int] = None,
                device: Any = "cpu") -> float:
    """Mean NLL (nats/token) over ``batched [n_rows, B]``, carrying the hidden state across windows, eval mode."""
    model.eval()
    hidden, loss_sum, count = None, 0.0, 0
    for x, y in itertools.islice(bptt_windows(batched, seq_len), max_batches):
        x, y = x.to(device), y.to(device)
        logits, hidden = model(x, hidden)
        loss_sum += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    return loss_sum / max(count, 1)


# --------------------------------------------------------------------------------- sequence classifiers

def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled example order of one epoch, a pure function of (seed, epoch) so resume is exact."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))


def train_classifier_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                           batch_size: int, state: LoopState, *, seed: int = 1,
                           clip_grad_norm: Optional[float] = None, max_steps: Optional[int] = None,
                           device: Any = "cpu", on_step: Optional[Callable[[LoopState], None]] = None,
                           progress: bool = False, max_skipped_batches: int = 0,
                           on_skip: Optional[Callable[[LoopState, str], None]] = None) -> Tuple[float, float]:
    """One epoch over ``x [N, T]`` / ``y [N]`` (incomplete last batch dropped). Returns (mean NLL, error)."""
    model.train()
    order = epoch_order(x.size(0), seed, state.epoch)
    total = x.size(0) // batch_size
    if max_steps is not None:
        total = min(total, max_steps)
    bar = _progress(total, state.position, progress, f"epoch {state.epoch}")
    try:
        for b in range(state.position, total):
            idx = order[b * batch_size:(b + 1) * batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)

            def forward(xb=xb, yb=yb):
                logits = model(xb)
                return F.cross_entropy(logits, yb), logits

            done = _train_step(model, optimizer, forward, state, clip_grad_norm, max_skipped_batches, on_skip, bar)
            if done is None:
                continue
            loss, logits = done
            state.position, state.step = state.position + 1, state.step + 1
            state.loss_sum += loss.item() * yb.numel()
            state.count += yb.numel()
            state.correct += int((logits.argmax(-1) == yb).sum())
            state.tokens_seen += xb.numel()
            if bar is not None:
                bar.set_postfix({"loss": f"{state.loss_sum / state.count:.3f}",
                                 "error": f"{1 - state.correct / state.count:.3f}"}, refresh=False)
                bar.update(1)
            if on_step is not None:
                on_step(state)
    finally:
        if bar is not None:
            bar.close()
    count = max(state.count, 1)
    return state.loss_sum / count, 1.0 - state.correct / count


@torch.no_grad()
def evaluate_classifier(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, *,
                        max_batches: Optional[int] = None, device: Any = "cpu") -> Tuple[float, float]:
    """(mean NLL in nats, error rate) over ``x [N, T]`` / ``y [N]`` in eval mode."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    n_batches = math.ceil(x.size(0) / batch_size)
    for b in range(n_batches if max_batches is None else min(n_batches, max_batches)):
        xb = x[b * batch_size:(b + 1) * batch_size].to(device)
        yb = y[b * batch_size:(b + 1) * batch_size].to(device)
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += int((logits.argmax(-1) == yb).sum())
        count += yb.numel()
    count = max(count, 1)
    return loss_sum / count, 1.0 - correct / count
