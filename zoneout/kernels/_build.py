"""Compile-on-first-use of the C++ CPU kernels (``csrc/zoneout_cpu.cpp``).

``torch.utils.cpp_extension.load`` builds into a cache directory (``$TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``) and reuses the build while the source and flags are unchanged, so
only the first use pays the ~30-60 s compile. Nothing is built at import time. If the build fails
(no compiler, no ninja, read-only cache), :func:`load` warns ONCE and returns None; callers then use
the pure-PyTorch path in :mod:`zoneout.kernels.fused`.

Environment: ``ZONEOUT_NO_EXT=1`` skips the build entirely (pure-PyTorch path, no warning).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import warnings
from pathlib import Path

_SRC = Path(__file__).parent / "csrc" / "zoneout_cpu.cpp"
_HDRS = [Path(__file__).parent / "csrc" / n for n in ("pointwise.h", "small_gemm.h")]
_lock = threading.Lock()
_state = {"tried": False, "module": None, "error": None}


def _cpu_flags() -> list:
    """-O3 without trapping math (lets GCC vectorise the activations), AVX2/FMA (and AVX-512 F/DQ/BW/VL)
    when this CPU has them.

    The build directory name hashes the sources and these flags, so a changed CPU or source rebuilds.
    """
    flags = ["-O3", "-fno-trapping-math", "-fno-math-errno"]
    try:
        text = Path("/proc/cpuinfo").read_text()
        words = set(next((line for line in text.splitlines() if line.startswith("flags")), "").split())
        if {"avx2", "fma"} <= words:
            flags += ["-mavx2", "-mfma"]
            if {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= words:   # small_gemm.h's 12x32 tile
                flags += ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl"]
    except OSError:
        pass
    return flags


def gemm_tile() -> str:
    """Which register tile small_gemm.h is built with for this CPU (for reports)."""
    flags = _cpu_flags()
    if "-mavx512f" in flags:
        return "AVX-512 12x32"
    return "AVX2 6x16" if "-mavx2" in flags else "none (at::mm / oneDNN per step)"


@contextlib.contextmanager
def _build_lock(cache: Path):
    """Serialise zoneout builds with an OS lock (``fcntl``), which dies with its process, and clear torch's own
    ``lock`` file when we hold ours: torch's file baton is left behind by a build that was killed (Ctrl-C,
    timeout, preemption) and would make every later process wait on it forever."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "zoneout.flock", "a+") as fh:
        try:
            import fcntl
            fcntl.flock(fh, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no fcntl (Windows) or an unlockable file system: torch's baton alone
            yield
            return
        stale = cache / "lock"
        if stale.exists():
            print(f"zoneout: removing a stale build lock left by an interrupted build ({stale})",
                  file=sys.stderr, flush=True)
            stale.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load(verbose: bool = False):
    """Return the compiled extension module, building it on first call; None when unavailable."""
    if _state["tried"]:
        return _state["module"]
    with _lock:
        if _state["tried"]:
            return _state["module"]
        _state["tried"] = True
        if os.environ.get("ZONEOUT_NO_EXT", "") not in ("", "0"):
            _state["error"] = "disabled by ZONEOUT_NO_EXT"
            return None
        flags = _cpu_flags()
        # the checkout's path is hashed too: two checkouts sharing one cache folder would rebuild each other
        tag = hashlib.sha1(_SRC.read_bytes() + b"".join(h.read_bytes() for h in _HDRS) + " ".join(flags).encode()
                           + str(_SRC.resolve()).encode()).hexdigest()[:10]
        try:
            from torch.utils import cpp_extension

            cache = Path(cpp_extension._get_build_directory(f"zoneout_cpu_{tag}", verbose=False))
            if not any(cache.glob("*.so")):  # tell the user why the first call waits
                print(f"zoneout: building the C++ kernels (first use only, ~1 min; cached in {cache})",
                      file=sys.stderr, flush=True)
            with _build_lock(cache):
                _state["module"] = cpp_extension.load(
                    name=f"zoneout_cpu_{tag}",
                    sources=[str(_SRC)],
                    extra_cflags=flags,
                    verbose=verbose,
                )
        except Exception as exc:  # compiler/ninja missing, build error, unwritable cache
            _state["error"] = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                "zoneout: could not build the C++ kernels, using the slower pure-PyTorch fused path "
                f"({_state['error'].splitlines()[0][:200]})",
                RuntimeWarning,
                stacklevel=3,
            )
    return _state["module"]


def error():
    """Why the extension is unavailable (None if it loaded or was never tried)."""
    return _state["error"]
