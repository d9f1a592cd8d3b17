"""Small filesystem helpers shared by download and preparation: data-dir resolution, a process lock,
atomic writes, the preparation version stamp."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

# Bump when the prepared arrays would differ (tokenisation, split rule, dtype, layout): caches made by another
# version are rebuilt, never trusted.
PREP_VERSION = 1

PathLike = Union[str, os.PathLike]


def resolve_data_dir(data_dir: Optional[PathLike] = None) -> Path:
    """``data_dir`` if given, else env ``ZONEOUT_DATA``, else ``<repo>/data`` for a source checkout, else ./data."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("ZONEOUT_DATA")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists():
        return repo / "data"
    return Path("data")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive ``fcntl`` lock on ``path`` (created if needed). The kernel drops it if the process dies,
    so a killed run never leaves a stale lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users of a shared data dir
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: Path) -> Optional[dict]:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temp dir beside ``final``; on success it replaces ``final`` as a whole.

    Call with the preparation lock held. A run killed midway leaves only a ``.tmp-*`` dir, which is never read
    and is swept by the next build."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".tmp-{final.name}-old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
