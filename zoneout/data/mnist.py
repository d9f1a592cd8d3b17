"""Sequential and permuted MNIST (paper §4.3): 784 one-pixel steps in [0, 1].

Standard split (Zoneout authors' zoneout_pmnist.py): train = first 50,000 of the train file, valid = its last
10,000, test = the 10,000-image test file. pMNIST uses ONE true permutation of the 784 positions
(``torch.randperm`` from a seeded generator), stored beside the prepared arrays and returned with the data.
(The authors' code drew ``np.random.randint(0, 784, 784)``, i.e. with replacement — not a bijection.)

``source="test_split"`` is a clearly named offline substitute for machines that only hold the 10k test images:
train/valid/test = the first 8,000 / next 1,000 / last 1,000 images of the test file. Never report it as MNIST.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from .cache import PathLike, file_lock, resolve_data_dir
from .corpus import _cache_ok, prepare
from .download import DataError, ensure_files
from .registry import DATASETS, SOURCES

TEST_SPLIT_SIZES = (8000, 1000, 1000)
TRAIN_SIZE = 50_000


@dataclass
class SequenceData:
    """x: float32 [N, 784] in [0, 1] (pixel order = sequence order, permuted if ``permutation``); y: LongTensor [N]."""

    train: Tuple[torch.Tensor, torch.Tensor]
    valid: Tuple[torch.Tensor, torch.Tensor]
    test: Tuple[torch.Tensor, torch.Tensor]
    permutation: Optional[torch.Tensor]
    metric: str = "error"
    name: str = "mnist"
    source: str = "standard"
    meta: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Name for logs and tables: says when it is a permuted or a test-set-only variant."""
        s = ("p" if self.permutation is not None else "s") + self.name
        return s if self.source == "standard" else f"{s}[test_split {'/'.join(map(str, TEST_SPLIT_SIZES))}]"


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx(.gz) file (magic 0x801 labels / 0x803 images) into a uint8 array."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 0x801:
        arr, expect = np.frombuffer(data, dtype=np.uint8, offset=8), n
    elif magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        arr, expect = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(-1, rows * cols), n
    else:
        raise DataError(f"{path}: expected idx magic 0x801/0x803, found {magic:#x}")
    if len(arr) != expect:
        raise DataError(f"{path}: header says {expect} items, found {len(arr)}")
    return arr


def _build(src: Path, names, out: Path) -> dict:
    """Decode the idx files once into uint8 .npy arrays (images [N, 784], labels [N])."""
    items = {}
    for key, fname in names.items():
        arr = read_idx(src / fname)
        np.save(out / f"{key}.npy", arr)
        items[key] = int(arr.shape[0])
    for s in ("train", "valid", "test"):  # the shared cache format wants these; splits are cut at load time
        np.save(out / f"{s}.npy", np.zeros(0, dtype=np.uint8))
    return {"vocab": [], "items": items}


def permutation(seed: int, n: int = 784) -> torch.Tensor:
    """A true permutation of range(n) from a seeded torch generator."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)


def load_mnist(name: str = "mnist", data_dir: Optional[PathLike] = None, download: bool = False,
               permute: bool = False, permutation_seed: int = 1, source: str = "standard", *,
               mirror=None) -> SequenceData:
    """Load (s/p)MNIST or Fashion-MNIST as pixel sequences; see the module docstring for splits and sources."""
    if name not in ("mnist", "fashion_mnist"):
        raise KeyError(f"unknown image dataset {name!r}; choose mnist or fashion_mnist")
    if source not in ("standard", "test_split"):
        raise ValueError(f"source must be 'standard' or 'test_split', not {source!r}")
    spec = DATASETS[name]
    src_spec = SOURCES[spec.source]
    root = resolve_data_dir(data_dir)
    parts = {"test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
    if source == "standard":
        parts.update(train_images="train-images-idx3-ubyte.gz", train_labels="train-labels-idx1-ubyte.gz")
    cdir = root / src_spec.dirname / "prepared" / ("images" if source == "standard" else "test_images")
    expect = {"dataset": name, "variant": source, "parts": sorted(parts)}
    if _cache_ok(cdir, expect, extra=list(parts)) is None:
        src = ensure_files(src_spec, list(parts.values()), root, download, mirror, dataset=name)
        prepare(cdir, expect, lambda out: _build(src, parts, out), extra=list(parts))
    arrs = {k: np.load(cdir / f"{k}.npy") for k in parts}
    if source == "standard":
        tx, ty, sx, sy = arrs["train_images"], arrs["train_labels"], arrs["test_images"], arrs["test_labels"]
        splits = ((tx[:TRAIN_SIZE], ty[:TRAIN_SIZE]), (tx[TRAIN_SIZE:], ty[TRAIN_SIZE:]), (sx, sy))
    else:
        a, b, _ = TEST_SPLIT_SIZES
        x, y = arrs["test_images"], arrs["test_labels"]
        splits = ((x[:a], y[:a]), (x[a:a + b], y[a:a + b]), (x[a + b:], y[a + b:]))
    perm = None
    if permute:
        pfile = root / src_spec.dirname / "prepared" / f"permutation_seed{int(permutation_seed)}.npy"
        with file_lock(pfile.with_suffix(".lock")):
            if pfile.exists():
                perm = torch.from_numpy(np.load(pfile).astype(np.int64))
            else:
                perm = permutation(permutation_seed)
                tmp = pfile.with_name(pfile.stem + ".tmp.npy")
                np.save(tmp, perm.numpy())
                tmp.replace(pfile)
        if sorted(perm.tolist()) != list(range(784)):
            raise DataError(f"{pfile}: not a permutation of 0..783; delete it to rebuild")

    def _xy(x, y):
        xt = torch.from_numpy(x.astype(np.float32) / 255.0)
        if perm is not None:
            xt = xt[:, perm]
        return xt, torch.from_numpy(y.astype(np.int64))

    meta = {"cache_dir": str(cdir), "permutation_seed": int(permutation_seed) if permute else None,
            "sizes": [len(s[1]) for s in splits]}
    return SequenceData(_xy(*splits[0]), _xy(*splits[1]), _xy(*splits[2]), perm, "error", name, source, meta)
