"""Fast zoneout recurrences (``backend="fused"``); each equals the reference under the same masks.

``lstm_recurrence``, ``gru_recurrence``, ``rnn_recurrence`` follow the kernel interface of the
spec (see :mod:`zoneout.kernels.fused` for shapes). CPU: a C++ extension compiled on first use and
cached; without a compiler a pure-PyTorch twin (one warning). Other devices: the pure-PyTorch twin.
"""
import torch

from . import _build
from . import fused
from .fused import (available, gru_recurrence, input_projection, lstm_recurrence, lstm_sequence, rnn_recurrence,
                    use_extension)

#: ``backend="auto"`` in ``zoneout.rnn`` uses these kernels (it reads this flag).
AUTO = True


def extension_loaded() -> bool:
    """True when the compiled C++ kernels are in use (builds them on first call)."""
    return _build.load() is not None


def keep_mask(shape, p: float, like: torch.Tensor) -> torch.Tensor:
    """Bernoulli(p) keep mask of ``shape`` as float 0/1 in ``like``'s dtype/device.

    Drop-in for :func:`zoneout.functional.keep_mask`, ~4x faster on CPU: one 64-bit seed is drawn
    from the global torch RNG (so ``torch.manual_seed`` still fixes the masks) and the C++
    extension hashes (seed, index) into bits. P(keep) is p rounded to a multiple of 2^-24.
    Falls back to ``bernoulli_`` off-CPU or without the extension.
    """
    ext = _build.load() if like.device.type == "cpu" and like.dtype in (torch.float32, torch.float64) else None
    if ext is None or fused._USE_EXT is False:
        return torch.empty(tuple(shape), dtype=like.dtype, device=like.device).bernoulli_(p)
    seed = int(torch.randint(2 ** 62, (1,), dtype=torch.int64).item())
    return ext.keep_mask(list(shape), float(p), seed, like)


__all__ = ["keep_mask", "input_projection", "AUTO", "lstm_recurrence", "lstm_sequence", "gru_recurrence",
           "rnn_recurrence", "available", "extension_loaded", "use_extension"]
