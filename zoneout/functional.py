"""Functional zoneout (Krueger et al., ICLR 2017, §3 eq. 3-4).

Zoneout mixes a recurrent unit's previous value and its newly computed value with a random
*keep* mask ``d``::

    train:  state_t = d * state_{t-1} + (1 - d) * new_t,   d ~ Bernoulli(p), fresh per element
    eval:   state_t = p * state_{t-1} + (1 - p) * new_t     (the expectation of the line above)

``p`` is the probability that a unit KEEPS its previous value (the paper's code calls its
complement a keep probability; we never do). There is no rescaling: with a 0/1 mask every
output element is exactly the old or exactly the new value.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["zoneout", "check_rate", "keep_mask", "mix"]

Mask = Union[Tensor, float]


def check_rate(name: str, value, *, allow_one: bool = True) -> float:
    """Return ``value`` as a float after checking it is a probability in [0, 1].

    Raises ``ValueError`` naming ``name`` otherwise (``allow_one=False``: [0, 1) — used by
    rates that are divided by ``1 - p``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (0.0 <= value and upper_ok):  # also rejects NaN
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


def keep_mask(shape: Sequence[int], p: float, like: Tensor) -> Tensor:
    """Fresh Bernoulli(p) keep mask of ``shape``: float 0/1 in ``like``'s dtype and device.

    Uses the global torch RNG (one call, so a whole sequence's masks cost one draw).
    """
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device).bernoulli_(p)


def mix(prev: Tensor, new: Tensor, keep: Optional[Mask]) -> Tensor:
    """``keep * prev + (1 - keep) * new`` with shortcuts for the constant cases.

    ``keep`` is a 0/1 tensor (train), a float in [0, 1] (eval expectation) or None / 0.0
    (no zoneout). The two-product form (not ``new + keep * (prev - new)``) keeps a 0/1 mask
    exact: 1*prev + 0*new == prev bit for bit.
    """
    if keep is None:
        return new
    if not isinstance(keep, Tensor):
        if keep == 0.0:
            return new
        if keep == 1.0:
            return prev
    return keep * prev + (1 - keep) * new


def zoneout(prev: Tensor, new: Tensor, p: float, training: bool, mask: Optional[Tensor] = None) -> Tensor:
    """Zone out ``new`` towards ``prev`` with keep probability ``p``.

    Args:
        prev: previous state, any shape ``[*]``.
        new: newly computed state, same shape as ``prev``.
        p: probability in [0, 1] that an element keeps its previous value.
        training: train mode draws (or uses) a 0/1 mask; eval mode returns the expectation.
        mask: optional keep mask of 0/1 (broadcastable to ``[*]``), used instead of a fresh draw
            in training. Ignored in eval.

    Returns:
        Tensor ``[*]``: ``mask*prev + (1-mask)*new`` (train) or ``p*prev + (1-p)*new`` (eval).
    """
    p = check_rate("p", p)
    if prev.shape != new.shape:
        raise ValueError(f"prev and new must have the same shape, got {tuple(prev.shape)} and {tuple(new.shape)}")
    if not training:
        return mix(prev, new, p)
    if mask is None:
        if p == 0.0 or p == 1.0:
            return mix(prev, new, p)
        mask = keep_mask(new.shape, p, new)
    else:
        mask = mask.to(dtype=new.dtype, device=new.device)
    return mix(prev, new, mask)
