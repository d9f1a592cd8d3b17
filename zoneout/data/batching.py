"""Lay a token stream out for truncated BPTT (as pytorch/examples word_language_model).

``batchify`` cuts the stream into ``batch_size`` contiguous columns (the tail that does not fill a row is
dropped)::

    ids = a b c d e f g h i j k l m n o p q r s t u v w x y z ,  batch_size = 4  ->  6 rows, "z" dropped

        ┌ a g m s ┐
        │ b h n t │      column j = one contiguous slice of the stream; a hidden state
        │ c i o u │      carried from one window to the next keeps reading the same column
        │ d j p v │
        │ e k q w │
        └ f l r x ┘

``bptt_windows`` then walks down the rows ``seq_len`` at a time; the target is the input shifted by one row::

    seq_len = 2:   x = ┌ a g m s ┐   y = ┌ b h n t ┐     next window starts at row 2 (c i o u)
                       └ b h n t ┘       └ c i o u ┘

The last window is shorter when (n_rows - 1) is not a multiple of ``seq_len``.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import torch


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """ids: LongTensor [N] -> LongTensor [N // batch_size, batch_size] (column layout, see module docstring)."""
    if ids.dim() != 1:
        raise ValueError(f"batchify expects a 1-D token stream, got shape {tuple(ids.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_rows = ids.numel() // batch_size
    if n_rows < 2:
        raise ValueError(f"{ids.numel()} tokens cannot fill 2 rows of batch_size={batch_size}")
    return ids[: n_rows * batch_size].view(batch_size, n_rows).t().contiguous()


def bptt_windows(batched: torch.Tensor, seq_len: int, start: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y), each [T, B] with T <= seq_len, y = x shifted one row down. ``start``: first row
    (to resume mid-epoch at a window boundary)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    n = batched.size(0)
    for i in range(start, n - 1, seq_len):
        t = min(seq_len, n - 1 - i)
        yield batched[i: i + t], batched[i + 1: i + 1 + t]


def num_windows(n_rows: int, seq_len: int) -> int:
    """Number of windows ``bptt_windows`` yields for ``n_rows`` rows."""
    return max(0, -(-(n_rows - 1) // seq_len))
