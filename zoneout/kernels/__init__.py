"""Fast zoneout recurrences (``backend="fused"``); each equals the reference under the same masks.

``lstm_recurrence``, ``gru_recurrence``, ``rnn_recurrence`` follow the kernel interface of the
spec (see :mod:`zoneout.kernels.fused` for shapes). CPU: a C++ extension compiled on first use and
cached; without a compiler a pure-PyTorch twin (one warning). Other devices: the pure-PyTorch twin.
"""
from . import _build
from .fused import available, gru_recurrence, lstm_recurrence, rnn_recurrence, use_extension


def extension_loaded() -> bool:
    """True when the compiled C++ kernels are in use (builds them on first call)."""
    return _build.load() is not None


__all__ = ["lstm_recurrence", "gru_recurrence", "rnn_recurrence", "available", "extension_loaded",
           "use_extension"]
