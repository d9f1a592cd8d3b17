"""Language-model corpora (paper §4.1-4.2: char/word PTB, text8; enwik8 as an extension; a stdlib demo corpus).

Each corpus is prepared once into ``<data_dir>/<source>/prepared/<variant>/``: ``{train,valid,test}.npy``
(uint8/uint16/int32 token ids; memory-mapped on load when large), ``vocab.json`` and ``meta.json`` (written last,
it marks the cache complete and carries PREP_VERSION). Preparation holds a file lock, builds in a temp dir and
swaps it in, so concurrent or killed runs never leave a half-written cache in use.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import cache
from .cache import PathLike, atomic_write_json, file_lock, read_json, resolve_data_dir, staging_dir
from .download import CHUNK, DataError, _hashes, ensure_files
from .registry import DATASETS, SOURCES

SPLITS = ("train", "valid", "test")
EOS = "<eos>"
STDLIB_CAP = 2_000_000  # characters; keeps the demo corpus small and its preparation ~1 s
MMAP_MIN_BYTES = 16 << 20


@dataclass
class Corpus:
    """A tokenised corpus. train/valid/test: 1-D LongTensor of token ids into ``vocab``."""

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: List[str]
    metric: str  # "bpc" | "ppl"
    unit: str  # "char" | "byte" | "word"
    variant: str = "standard"  # "standard" | "prefix" (a local prefix file split with the same rule)
    meta: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def describe(self) -> str:
        tag = "" if self.variant == "standard" else f" [{self.variant}: {self.meta.get('source_file', '')}]"
        return (f"{self.name}{tag}: vocab {len(self.vocab)} {self.unit}s, tokens train {len(self.train):,} / "
                f"valid {len(self.valid):,} / test {len(self.test):,}, metric {self.metric}")


def split_sizes(n: int) -> Tuple[int, int, int]:
    """90/5/5 rule of awd-lstm-lm prep_enwik8.py / transformer-xl prep_text8.py: valid and test are the last
    ``n // 20`` tokens each (5,000,000 for 10^8), train is everything before. Sums to n exactly."""
    k = n // 20
    return n - 2 * k, k, k


def _dtype_for(vocab_size: int):
    return np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.int32


# ---------------------------------------------------------------------------------------------- PTB
def tokenize_lines(text: str) -> List[str]:
    """``line.split() + ['<eos>']`` for every newline-terminated line (awd-lstm-lm data.py).

    A whitespace-only tail after the last newline (ptb.char.* end with "\\n ") is not a line: awd-lstm-lm would
    add one extra <eos> there; we do not."""
    lines = text.split("\n")
    tail = lines.pop()
    toks: List[str] = []
    for line in lines + ([tail] if tail.strip() else []):
        toks.extend(line.split())
        toks.append(EOS)
    return toks


def _build_vocab(splits: Sequence[List[str]]) -> Dict[str, int]:
    stoi: Dict[str, int] = {}
    for toks in splits:  # first-occurrence order over train, valid, test (awd-lstm-lm Dictionary)
        for t in toks:
            if t not in stoi:
                stoi[t] = len(stoi)
    return stoi


def _prepare_ptb(dataset: str, src_dir: Path, out: Path) -> dict:
    files = DATASETS[dataset].files
    toks = [tokenize_lines((src_dir / f).read_text(encoding="utf-8")) for f in files]
    stoi = _build_vocab(toks)
    dt = _dtype_for(len(stoi))
    for split, t in zip(SPLITS, toks):
        np.save(out / f"{split}.npy", np.fromiter((stoi[x] for x in t), dtype=dt, count=len(t)))
    return {"vocab": list(stoi), "source_files": list(files)}


# ----------------------------------------------------------------------------------- text8 / enwik8
def _prepare_bytes(open_stream: Callable, n: int, out: Path, vocab_repr: Callable[[int], str]) -> dict:
    """Stream ``n`` bytes into the three split arrays (one token per byte value), then remap byte values to
    dense ids in place. Peak memory ~ a few CHUNKs; the arrays are memory-mapped files."""
    sizes = split_sizes(n)
    arrays = [np.lib.format.open_memmap(out / f"{s}.npy", mode="w+", dtype=np.uint8, shape=(k,))
              for s, k in zip(SPLITS, sizes)]
    bounds = np.cumsum((0,) + sizes)
    counts = np.zeros(256, dtype=np.int64)
    pos = 0
    with open_stream() as fh:
        while True:
            block = fh.read(16 * CHUNK)
            if not block:
                break
            if pos + len(block) > n:
                raise DataError(f"source longer than its recorded size {n}")
            buf = np.frombuffer(block, dtype=np.uint8)
            counts += np.bincount(buf, minlength=256)
            i = 0
            while i < len(buf):  # copy across split boundaries
                s = int(np.searchsorted(bounds, pos, side="right") - 1)
                take = min(len(buf) - i, int(bounds[s + 1]) - pos)
                arrays[s][pos - bounds[s]: pos - bounds[s] + take] = buf[i: i + take]
                i += take
                pos += take
    if pos != n:
        raise DataError(f"source truncated: read {pos} of {n} bytes")
    present = np.flatnonzero(counts)
    lut = np.zeros(256, dtype=np.uint8)
    lut[present] = np.arange(len(present), dtype=np.uint8)
    for a in arrays:
        for i in range(0, len(a), 16 * CHUNK):
            a[i: i + 16 * CHUNK] = lut[a[i: i + 16 * CHUNK]]
        a.flush()
    del arrays
    return {"vocab": [vocab_repr(int(b)) for b in present], "byte_values": present.tolist()}


def _char_repr(b: int) -> str:
    return chr(b)


def _byte_repr(b: int) -> str:  # decimal byte value, as in awd-lstm-lm's prep_enwik8.py train.txt
    return str(b)


class _Head:
    """The first ``n`` bytes of a binary stream (context manager, ``read`` only)."""

    def __init__(self, stream, n: int):
        self.stream, self.left = stream, n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        block = self.stream.read(size) if size else b""
        self.left -= len(block)
        return block

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()
        return False


def _first_bytes(opener: Callable, total: int, n: Optional[int], what: str) -> Tuple[Callable, int]:
    """(opener, size) of the first ``n`` bytes of a stream of ``total`` bytes (all of it when n is None)."""
    if n is None:
        return opener, total
    if n > total:
        raise DataError(f"data.prefix_bytes={n} is longer than {what} ({total} bytes); use at most {total}")
    return (lambda: _Head(opener(), n)), n


def _zip_member(path: Path, member: str):
    def _open():
        return zipfile.ZipFile(path).open(member)

    with zipfile.ZipFile(path) as zf:
        return _open, zf.getinfo(member).file_size


# ------------------------------------------------------------------------------------------- stdlib
def stdlib_text(cap: int = STDLIB_CAP) -> Tuple[str, dict]:
    """The first ``cap`` characters of the standard library's pure-ASCII .py files, sorted by relative path
    (tests, site-packages and idlelib left out), concatenated. Deterministic for a given Python version."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3"}
    paths = []
    for d, dirs, fnames in os.walk(root):
        dirs[:] = [x for x in dirs if x not in skip]
        paths += [Path(d, f) for f in fnames if f.endswith(".py")]
    paths.sort(key=lambda p: p.relative_to(root).as_posix())
    parts, total, used = [], 0, 0
    for p in paths:
        try:
            t = p.read_bytes().decode("ascii")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(t)
        total += len(t)
        used += 1
        if total >= cap:
            break
    text = "".join(parts)[:cap]
    return text, {"stdlib_root": str(root), "python": sys.version.split()[0], "files_used": used,
                  "sha256": hashlib.sha256(text.encode()).hexdigest()}


def _prepare_stdlib(out: Path, cap: int = STDLIB_CAP) -> dict:
    text, info = stdlib_text(cap)
    vocab = sorted(set(text))
    lut = np.zeros(128, dtype=np.uint8)
    lut[[ord(c) for c in vocab]] = np.arange(len(vocab))
    ids = lut[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    a, b, _ = split_sizes(len(ids))
    for split, arr in zip(SPLITS, (ids[:a], ids[a:a + b], ids[a + b:])):
        np.save(out / f"{split}.npy", arr)
    return {"vocab": vocab, **info}


# ------------------------------------------------------------------------------------------ caching
def _file_id(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cache_ok(cdir: Path, expect: dict, extra: Sequence[str] = ()) -> Optional[dict]:
    """The cache's meta if it is complete, of this PREP_VERSION and made from ``expect``; else None."""
    meta = read_json(cdir / "meta.json")
    if not meta or meta.get("prep_version") != cache.PREP_VERSION:
        return None
    if any(meta.get(k) != v for k, v in expect.items()):
        return None
    for s in SPLITS:
        try:
            arr = np.load(cdir / f"{s}.npy", mmap_mode="r")
        except (OSError, ValueError):
            return None
        if arr.shape != (meta["counts"][s],):
            return None
    for name in extra:
        try:
            np.load(cdir / f"{name}.npy", mmap_mode="r")
        except (OSError, ValueError):
            return None
    return meta


def _load_cached(cdir: Path, meta: dict, train_tokens: Optional[int]) -> Tuple[torch.Tensor, ...]:
    out = []
    for s in SPLITS:
        path = cdir / f"{s}.npy"
        arr = np.load(path, mmap_mode="r" if path.stat().st_size >= MMAP_MIN_BYTES else None)
        if s == "train" and train_tokens is not None:
            arr = arr[:train_tokens]
        out.append(torch.from_numpy(np.asarray(arr, dtype=np.int64)))
    return tuple(out)


def prepare(cdir: Path, expect: dict, build: Callable[[Path], dict], extra: Sequence[str] = ()) -> dict:
    """Return the cache's meta, building it under a lock if missing, stale (other PREP_VERSION/source) or broken."""
    meta = _cache_ok(cdir, expect, extra)
    if meta:
        return meta
    with file_lock(cdir.parent / f".{cdir.name}.lock"):
        meta = _cache_ok(cdir, expect, extra)  # another process may have built it while we waited
        if meta:
            return meta
        with staging_dir(cdir) as tmp:
            info = build(tmp)
            vocab = info.pop("vocab")
            counts = {s: int(np.load(tmp / f"{s}.npy", mmap_mode="r").shape[0]) for s in SPLITS}
            meta = {**expect, **info, "prep_version": cache.PREP_VERSION, "counts": counts,
                    "vocab_size": len(vocab), "built_by_pid": os.getpid()}
            with open(tmp / "vocab.json", "w") as fh:
                json.dump(vocab, fh)
            atomic_write_json(tmp / "meta.json", meta)
        return meta


# --------------------------------------------------------------------------------------------- API
def load_corpus(name: str, data_dir: Optional[PathLike] = None, download: bool = False, *, mirror=None,
                local_file: Optional[PathLike] = None, train_tokens: Optional[int] = None,
                prefix_bytes: Optional[int] = None) -> Corpus:
    """Load (preparing once) a language-model corpus.

    name: ptb_char | ptb_word | text8 | enwik8 | stdlib.
    download: fetch + verify missing raw files (else a missing file raises DataError naming `make data-<name>`).
    local_file: text8/enwik8 only — a local raw file (e.g. a real prefix of the corpus) split with the same
        90/5/5 rule; the result has ``variant="prefix"`` and records the file, so it is never mistaken for the
        standard corpus.
    prefix_bytes: text8/enwik8 only — use only the first this-many bytes of the corpus (of ``local_file`` when
        given, else of the standard file, downloaded when ``download``) as the whole corpus, split with the
        same 90/5/5 rule (``variant="prefix"``): CPU-scale tables that anyone can rebuild from the standard
        download. The cache is keyed by the sha256 of those bytes, so the same bytes from either source give
        the same prepared corpus.
    train_tokens: keep only this many leading train tokens (CPU-scale runs).
    Returns a Corpus whose splits are 1-D LongTensors of token ids.
    """
    if name not in DATASETS or DATASETS[name].unit == "pixel":
        lm = sorted(k for k, v in DATASETS.items() if v.unit != "pixel")
        raise KeyError(f"unknown corpus {name!r}; choose one of {', '.join(lm)} (MNIST: use load_mnist)")
    spec = DATASETS[name]
    root = resolve_data_dir(data_dir)
    variant = "standard"
    if (local_file is not None or prefix_bytes is not None) and name not in ("text8", "enwik8"):
        raise ValueError(f"local_file / prefix_bytes are supported for text8 and enwik8, not {name!r}")
    if prefix_bytes is not None and (isinstance(prefix_bytes, bool) or int(prefix_bytes) < 20):
        raise ValueError(f"prefix_bytes must be an integer >= 20 (90/5/5 split), got {prefix_bytes!r}")
    if local_file is not None or prefix_bytes is not None:
        variant = "prefix"
        if local_file is not None:
            lf = Path(local_file)
            if not lf.is_file():
                raise DataError(f"{lf}: no such file (local_file for {name})")
            source_name = lf.name
            opener, n = _first_bytes(lambda: open(lf, "rb"), lf.stat().st_size, prefix_bytes, str(lf))
        else:
            source = SOURCES[spec.source]
            src = ensure_files(source, spec.files, root, download, mirror, dataset=name)
            fspec = source.file(spec.files[0])
            member_open, total = _zip_member(src / fspec.name, fspec.member)
            source_name = f"{fspec.name}:{fspec.member}"
            opener, n = _first_bytes(member_open, total, prefix_bytes, source_name)
        with opener() as fh:
            _, sha, _ = _hashes(fh, want_md5=False)
        cdir = root / SOURCES[spec.source].dirname / "prepared" / f"{name}-prefix-{sha[:12]}"
        expect = {"dataset": name, "variant": variant, "source_sha256": sha, "source_bytes": n}
        rep = _byte_repr if name == "enwik8" else _char_repr
        meta = prepare(cdir, expect, lambda out: _prepare_bytes(opener, n, out, rep))
        meta = dict(meta, source_file=source_name)
    elif name == "stdlib":
        cdir = root / "stdlib" / "prepared" / "stdlib"
        expect = {"dataset": name, "variant": variant, "python": sys.version.split()[0], "cap": STDLIB_CAP}
        meta = prepare(cdir, expect, _prepare_stdlib)
    else:
        source = SOURCES[spec.source]
        cdir = root / source.dirname / "prepared" / name
        expect = {"dataset": name, "variant": variant}
        meta = _cache_ok(cdir, expect)
        if meta is None:
            src = ensure_files(source, spec.files, root, download, mirror, dataset=name)
            stamps = read_json(src / ".verified.json") or {}
            expect["source_sha256"] = {f: stamps.get(f, {}).get("sha256") for f in spec.files}
            if spec.source == "ptb":
                build = lambda out: _prepare_ptb(name, src, out)  # noqa: E731
            else:
                fspec = source.file(spec.files[0])
                opener, n = _zip_member(src / fspec.name, fspec.member)
                rep = _byte_repr if name == "enwik8" else _char_repr
                build = lambda out: _prepare_bytes(opener, n, out, rep)  # noqa: E731
            meta = prepare(cdir, expect, build)
    with open(cdir / "vocab.json") as fh:
        vocab = json.load(fh)
    train, valid, test = _load_cached(cdir, meta, train_tokens)
    meta = dict(meta, cache_dir=str(cdir))
    return Corpus(name, train, valid, test, vocab, spec.metric, spec.unit, variant, meta)
