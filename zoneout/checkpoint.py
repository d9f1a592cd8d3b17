"""Checkpoints that make a run resumable bit for bit (on CPU): model/optimizer state_dicts, the loop position
(epoch, step, window within the epoch, carried hidden state), every RNG stream, and the resolved config.

Files are written atomically: a temporary file in the same folder, flushed and fsync'ed, then ``os.replace``d
over the target, so a crash or a full disk leaves the previous checkpoint intact. Contents are plain tensors,
numbers, strings, lists and dicts, loadable with ``torch.load(weights_only=True)`` (no pickled objects).
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says what is still intact."""


def capture_rng_state() -> Dict[str, Any]:
    """All RNG streams a run draws from: torch CPU (zoneout masks, dropout), CUDA, numpy, python."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": _to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(x):
    return [_to_plain(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x


def atomic_write_bytes(path: Path | str, write) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path`` and rename it over ``path`` on success."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(path: Path | str, payload: Dict[str, Any]) -> None:
    """Atomically write ``payload`` to ``path``; on failure the previous file at ``path`` is untouched."""
    path = Path(path)
    try:
        atomic_write_bytes(path, lambda f: torch.save(payload, f))
    except OSError as e:
        intact = "the previous checkpoint is intact" if path.exists() else "no previous checkpoint existed"
        raise CheckpointError(f"could not write checkpoint {path}: {e}; {intact}") from e


def load_checkpoint(path: Path | str, map_location: Any = "cpu") -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated / foreign file
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                              "delete it to start over or point trainer.resume at another run") from e
