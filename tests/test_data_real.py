"""The loaders on the real files in ../shared/data (skipped where that folder is absent): PTB counts and
vocabularies, the real enwik8 / text8 prefixes under the 90/5/5 rule, MNIST test images, Fashion-MNIST."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import zoneout.data as zd

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
need = pytest.mark.skipif(not (SHARED / "ptb").is_dir(),
                          reason="checks on real dataset copies, which only the project's CI keeps next to the "
                                 "checkout (../shared/data); nothing to do: the synthetic data tests cover the loaders")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("real")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("ZONEOUT_MIRROR", raising=False)


@need
def test_ptb_char_and_word_counts(data_dir):
    zd.download("ptb", data_dir, mirror=(SHARED / "ptb").resolve().as_uri(), offline=True, progress=False)
    c = zd.load_corpus("ptb_char", data_dir)
    assert (len(c.train), len(c.valid), len(c.test)) == (4_975_414 + 42_068, 389_672 + 3_370, 438_662 + 3_761)
    assert len(c.vocab) == 50 and "<eos>" in c.vocab and "_" in c.vocab  # 49 symbols + <eos>
    assert set(c.vocab) - {"<eos>"} == set("#$&'*-./0123456789<>N\\_abcdefghijklmnopqrstuvwxyz")
    w = zd.load_corpus("ptb_word", data_dir)
    assert (len(w.train), len(w.valid), len(w.test)) == (929_589, 73_760, 82_430) and len(w.vocab) == 10_000
    assert w.vocab[:3] == ["aer", "banknote", "berlitz"]
    assert int(torch.cat([w.valid, w.test]).max()) < 10_000


@need
def test_real_prefixes_split_90_5_5_and_labelled(data_dir):
    (e,) = sorted((SHARED / "enwik8").glob("enwik8.first*"))
    c = zd.load_corpus("enwik8", data_dir, local_file=e)
    n = e.stat().st_size
    assert (len(c.train), len(c.valid), len(c.test)) == zd.split_sizes(n) == (3_738_961, 207_719, 207_719)
    assert c.variant == "prefix" and len(c.vocab) == 200 and c.unit == "byte"
    assert bytes(int(c.vocab[i]) for i in c.train[:10].tolist()) == e.read_bytes()[:10]
    (t,) = sorted((SHARED / "text8").glob("text8.first*"))
    c = zd.load_corpus("text8", data_dir, local_file=t)
    assert len(c.vocab) == 27 and c.vocab[0] == " " and c.train[0].item() == 0  # leading space kept
    assert (len(c.train), len(c.valid), len(c.test)) == zd.split_sizes(t.stat().st_size)


@need
def test_mnist_real_test_split_and_fashion_standard(data_dir):
    s = zd.load_mnist("mnist", data_dir, download=True, mirror=(SHARED / "mnist").resolve().as_uri(),
                      source="test_split", permute=True)
    assert [len(p[1]) for p in (s.train, s.valid, s.test)] == [8000, 1000, 1000]
    assert s.label == "pmnist[test_split 8000/1000/1000]" and s.train[0].shape == (8000, 784)
    assert 0.0 <= float(s.train[0].min()) and float(s.train[0].max()) == 1.0
    with pytest.warns(UserWarning, match="decompressed content matches"):  # Debian re-gzipped the files
        f = zd.load_mnist("fashion_mnist", data_dir, download=True, mirror=SHARED.resolve().as_uri())
    assert [len(p[1]) for p in (f.train, f.valid, f.test)] == [50_000, 10_000, 10_000]
    assert sorted(f.test[1].unique().tolist()) == list(range(10))
