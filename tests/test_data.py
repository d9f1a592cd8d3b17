"""Download / verification / preparation tests against a 127.0.0.1 server and small archives in each
dataset's real format (tgz of the simple-examples tree, zips holding text8 / enwik8, idx .gz). Offline."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import struct
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

import zoneout.data as zd
from zoneout.data import cache as zcache
from zoneout.data import mnist as zmnist
from zoneout.data.registry import SOURCES, FileSpec

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- server
class Server:
    """Threaded HTTP server: routes path -> bytes; per-route options: content_type, range (bool),
    cut_after (first response stops after N bytes), status. Records (path, Range header) per request."""

    def __init__(self):
        self.routes, self.opts, self.log = {}, {}, []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.log.append((self.path, self.headers.get("Range")))
                body = outer.routes.get(self.path)
                opt = outer.opts.get(self.path, {})
                if body is None:
                    self.send_error(404)
                    return
                start, status = 0, opt.get("status", 200)
                rng = self.headers.get("Range")
                if rng and opt.get("range", True):
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Type", opt.get("content_type", "application/octet-stream"))
                self.send_header("Content-Length", str(len(body) - start))
                for k, v in opt.get("headers", {}).items():
                    self.send_header(k, v)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                data = body[start:]
                cut = opt.pop("cut_after", None)
                if cut is not None:
                    self.wfile.write(data[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def add(self, path, body, **opt):
        self.routes[path], self.opts[path] = body, opt
        return self.url + path


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    import requests

    real_get = requests.get

    def local_only(url, *a, **k):  # the suite must never reach the internet
        assert url.startswith("http://127.0.0.1:"), f"test tried to reach {url}"
        return real_get(url, *a, **k)

    monkeypatch.setattr(requests, "get", local_only)
    monkeypatch.delenv("ZONEOUT_MIRROR", raising=False)
    monkeypatch.setenv("ZONEOUT_DATA", str(tmp_path / "data"))


def sha(b):
    return hashlib.sha256(b).hexdigest()


def md5(b):
    return hashlib.md5(b).hexdigest()


# ------------------------------------------------------------------------------ synthetic PTB source
WORD = {
    "train": "aer banknote <unk> the\n the cat sat\n on the mat <unk>\n",
    "valid": " the cat\n mat on\n",
    "test": " <unk> sat\n",
}


def char_version(text):  # Mikolov's rule (DATASETS.md §1): chars space-separated, words joined by "_"
    s = "\n".join("_".join(line.split()) for line in text.split("\n")[:-1]) + "\n"
    return " ".join(s) + " "


def ptb_files():
    files = {f"ptb.{k}.txt": v.encode() for k, v in WORD.items()}
    files.update({f"ptb.char.{k}.txt": char_version(v).encode() for k, v in WORD.items()})
    return files


def ptb_tgz(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, body in files.items():
            ti = tarfile.TarInfo("./simple-examples/data/" + name)
            ti.size = len(body)
            tf.addfile(ti, io.BytesIO(body))
        ti = tarfile.TarInfo("./simple-examples/README")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"hi\n"))
    return buf.getvalue()


def use_ptb(monkeypatch, files, file_urls=None, tgz_urls=()):
    src = SOURCES["ptb"]
    new_files = tuple(FileSpec(n, tuple((file_urls or {}).get(n, ())), size=len(b), sha256=sha(b), md5=md5(b))
                      for n, b in files.items())
    arch = dataclasses.replace(src.archives[0], urls=tuple(tgz_urls), size=None, md5=None)
    monkeypatch.setitem(SOURCES, "ptb", dataclasses.replace(src, files=new_files, archives=(arch,)))


def listing(d):
    return sorted(p.name for p in Path(d).iterdir()) if Path(d).exists() else []


# ---------------------------------------------------------------------------------------------- tests
def test_ptb_from_tgz_then_skip_when_valid(server, monkeypatch, tmp_path):
    files = ptb_files()
    url = server.add("/simple-examples.tgz", ptb_tgz(files))
    use_ptb(monkeypatch, files, tgz_urls=[url])
    d = zd.download("ptb", progress=False)
    assert d == tmp_path / "data" / "ptb"
    for n, b in files.items():
        assert (d / n).read_bytes() == b
    assert not [p for p in listing(d) if p.endswith((".part", ".tmp")) or ".extract-" in p]
    n_requests = len(server.log)
    zd.download("ptb", progress=False)  # everything present and valid: no request at all
    assert len(server.log) == n_requests

    w = zd.load_corpus("ptb_word")
    assert (len(w.train), len(w.valid), len(w.test)) == (4 + 1 + 3 + 1 + 4 + 1, 2 + 1 + 2 + 1, 2 + 1)
    assert w.vocab[:5] == ["aer", "banknote", "<unk>", "the", "<eos>"] and w.metric == "ppl" and w.unit == "word"
    assert w.train.dtype == torch.int64
    c = zd.load_corpus("ptb_char")
    text = "".join("\n" if c.vocab[i] == "<eos>" else c.vocab[i] for i in c.train.tolist())
    assert text == "\n".join("_".join(x.split()) for x in WORD["train"].split("\n")[:-1]) + "\n"
    assert "_" in c.vocab and c.metric == "bpc" and c.unit == "char"


def test_checksum_mismatch_clear_error_nothing_half_written(server, monkeypatch):
    files = ptb_files()
    bad = dict(files)
    bad["ptb.valid.txt"] = b" the dog\n mat on\n"
    urls = {n: server.add("/" + n, b) for n, b in bad.items()}
    use_ptb(monkeypatch, files, file_urls={n: [u] for n, u in urls.items()})
    with pytest.raises(zd.DataError) as e:
        zd.download("ptb", progress=False)
    msg = str(e.value)
    assert "ptb.valid.txt" in msg and "expected" in msg and "found" in msg and "make data-ptb" in msg
    assert sha(files["ptb.valid.txt"]) in msg and sha(bad["ptb.valid.txt"]) in msg
    d = zd.resolve_data_dir() / "ptb"
    assert "ptb.valid.txt" not in listing(d)
    assert not [p for p in listing(d) if p.endswith(".part") or ".tmp" in p]
    with pytest.raises(zd.DataError, match="make data-ptb"):
        zd.load_corpus("ptb_word")  # never prepared from bad data
    assert not (d / "prepared" / "ptb_word").exists()


def test_wrong_size_reported_as_truncated(server, monkeypatch):
    files = ptb_files()
    urls = {n: server.add("/" + n, b[:-5] if n == "ptb.char.valid.txt" else b) for n, b in files.items()}
    use_ptb(monkeypatch, files, file_urls={n: [u] for n, u in urls.items()})
    with pytest.raises(zd.DataError) as e:
        zd.download("ptb", progress=False)
    n = len(files["ptb.char.valid.txt"])
    assert f"ptb.char.valid.txt (from {urls['ptb.char.valid.txt']}): size expected {n}, found {n - 5}" in str(e.value)
    assert "truncated" in str(e.value) and "sha256 expected" in str(e.value) and "make data-ptb" in str(e.value)
    assert "ptb.char.valid.txt" not in listing(zd.resolve_data_dir() / "ptb")


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_page_rejected(server, monkeypatch, content_type):
    files = ptb_files()
    html = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>gone</body></html>\n"
    urls = {n: server.add("/" + n, html if n == "ptb.train.txt" else b, content_type=content_type)
            for n, b in files.items()}
    use_ptb(monkeypatch, files, file_urls={n: [u] for n, u in urls.items()})
    with pytest.raises(zd.DataError) as e:
        zd.download("ptb", progress=False)
    assert "ptb.train.txt" in str(e.value) and "HTML" in str(e.value) and "make data-ptb" in str(e.value)
    d = zd.resolve_data_dir() / "ptb"
    assert "ptb.train.txt" not in listing(d) and "ptb.train.txt.part" not in listing(d)


def test_mirrors_tried_in_order_bad_first_good_second(server, monkeypatch):
    files = ptb_files()
    bad = server.add("/bad/ptb.test.txt", b"garbage")
    urls = {n: server.add("/good/" + n, b) for n, b in files.items()}
    use_ptb(monkeypatch, files, file_urls={n: ([bad] if n == "ptb.test.txt" else []) + [u] for n, u in urls.items()})
    d = zd.download("ptb", progress=False)
    assert (d / "ptb.test.txt").read_bytes() == files["ptb.test.txt"]
    stamps = json.loads((d / ".verified.json").read_text())
    assert stamps["ptb.test.txt"]["url"].endswith("/good/ptb.test.txt")


def test_file_mirror_env_and_subdir(monkeypatch, tmp_path):
    files = ptb_files()
    mirror = tmp_path / "mirror" / "ptb"
    mirror.mkdir(parents=True)
    for n, b in files.items():
        (mirror / n).write_bytes(b)
    use_ptb(monkeypatch, files)
    monkeypatch.setenv("ZONEOUT_MIRROR", (tmp_path / "mirror").as_uri())  # root mirror, files under ptb/
    d = zd.download("ptb", offline=True, progress=False)
    assert all((d / n).read_bytes() == b for n, b in files.items())
    # explicit --mirror pointing at the folder itself, fresh data dir
    d2 = zd.download("ptb", tmp_path / "d2", mirror=mirror.as_uri(), offline=True, progress=False)
    assert all((d2 / n).read_bytes() == b for n, b in files.items())


def test_offline_without_a_mirror_says_how_to_point_at_a_copy(monkeypatch, tmp_path):
    use_ptb(monkeypatch, ptb_files())
    monkeypatch.delenv("ZONEOUT_MIRROR", raising=False)
    with pytest.raises(zd.DataError, match=r"offline, point it at a copy of the files: "
                                           r"`make data-ptb MIRROR=file:///path/to/folder`"):
        zd.download("ptb", tmp_path / "d", offline=True, progress=False)
    assert not list((tmp_path / "d").glob("*.txt"))   # nothing half-written


def test_hand_filled_dir_accepted_and_bad_hand_file_rejected(monkeypatch, tmp_path):
    files = ptb_files()
    use_ptb(monkeypatch, files)
    d = zd.resolve_data_dir() / "ptb"
    d.mkdir(parents=True)
    for n, b in files.items():
        (d / n).write_bytes(b)
    c = zd.load_corpus("ptb_word")  # no download, no network: checksums match
    assert len(c.vocab) == 9
    (d / "ptb.char.test.txt").write_bytes(b"x y z \n ")
    with pytest.raises(zd.DataError) as e:
        zd.load_corpus("ptb_char")
    assert "ptb.char.test.txt" in str(e.value) and "expected" in str(e.value) and "make data-ptb" in str(e.value)


def test_stamp_from_other_expectations_is_not_trusted(monkeypatch, tmp_path):
    files = ptb_files()
    mirror = tmp_path / "m"
    mirror.mkdir()
    for n, b in files.items():
        (mirror / n).write_bytes(b)
    use_ptb(monkeypatch, files)
    zd.download("ptb", mirror=mirror, offline=True, progress=False)
    src = SOURCES["ptb"]
    changed = tuple(dataclasses.replace(f, sha256="b" * 64) if f.name == "ptb.test.txt" else f for f in src.files)
    monkeypatch.setitem(SOURCES, "ptb", dataclasses.replace(src, files=changed))
    with pytest.raises(zd.DataError, match=r"ptb.test.txt: sha256 expected b{64}"):
        zd.load_corpus("ptb_word")


def test_registry_matches_the_facts_sheet():
    assert set(zd.DATASETS) == {"ptb_char", "ptb_word", "text8", "enwik8", "mnist", "fashion_mnist", "stdlib"}
    assert {k: v.metric for k, v in zd.DATASETS.items()} == {
        "ptb_char": "bpc", "ptb_word": "ppl", "text8": "bpc", "enwik8": "bpc", "mnist": "error",
        "fashion_mnist": "error", "stdlib": "bpc"}
    assert zd.DATASETS["ptb_char"].make_target == "data-ptb" == zd.DATASETS["ptb_word"].make_target
    assert zd.DATASETS["fashion_mnist"].make_target == "data-fashion-mnist"
    e = SOURCES["enwik8"].files[0]
    assert e.member_md5 == "a1fa5ffddb56f4953e226637dabbb36a" and "member_md5" not in e.member_soft
    assert e.member_size == 10 ** 8 and {"size", "sha256"} <= e.soft
    t = SOURCES["text8"].files[0]
    assert t.sha256.startswith("a6640522") and "sha256" not in t.soft and "md5" in t.member_soft
    assert zd.DATASETS["mnist"].urls[0] == "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz"
    assert zd.DATASETS["ptb_word"].checksums["ptb.train.txt"]["sha256"].startswith("fcea919f")


def test_killed_preparation_leaves_nothing_used(tmp_path):
    from zoneout.data import corpus as zc

    cdir = tmp_path / "prepared" / "x"
    stale = cdir.parent / ".tmp-x-123abc"  # what a SIGKILLed build leaves behind
    stale.mkdir(parents=True)
    (stale / "train.npy").write_bytes(b"partial")

    def boom(out):
        np.save(out / "train.npy", np.zeros(3, np.uint8))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        zc.prepare(cdir, {"dataset": "x"}, boom)
    assert not cdir.exists() and listing(cdir.parent) == [".x.lock"]


def test_missing_data_names_make_target(tmp_path):
    with pytest.raises(zd.DataError, match=r"make data-ptb"):
        zd.load_corpus("ptb_char", tmp_path / "empty")
    with pytest.raises(zd.DataError, match=r"make data-mnist"):
        zd.load_mnist("mnist", tmp_path / "empty")


def test_resume_with_range_after_dropped_connection(server, monkeypatch):
    files = ptb_files()
    big = files["ptb.char.train.txt"] * 3000
    files["ptb.char.train.txt"] = big
    urls = {n: server.add("/" + n, b) for n, b in files.items()}
    server.opts["/ptb.char.train.txt"]["cut_after"] = len(big) // 3
    use_ptb(monkeypatch, files, file_urls={n: [u] for n, u in urls.items()})
    d = zd.download("ptb", progress=False)
    assert (d / "ptb.char.train.txt").read_bytes() == big
    hits = [r for p, r in server.log if p == "/ptb.char.train.txt"]
    assert len(hits) == 2 and hits[0] is None and hits[1].startswith("bytes=")
    assert 0 < int(hits[1][6:-1]) <= len(big) // 3  # resumed where the dropped transfer stopped


def test_resume_existing_part_file_and_server_without_range(server, monkeypatch):
    files = ptb_files()
    urls = {n: server.add("/" + n, b) for n, b in files.items()}
    use_ptb(monkeypatch, files, file_urls={n: [u] for n, u in urls.items()})
    d = zd.resolve_data_dir() / "ptb"
    d.mkdir(parents=True)
    body = files["ptb.char.train.txt"]
    (d / "ptb.char.train.txt.part").write_bytes(body[:40])  # left by an interrupted run
    (d / "ptb.train.txt.part").write_bytes(b"XXXXXXXX")  # server ignores Range -> restart from 0
    server.opts["/ptb.train.txt"]["range"] = False
    zd.download("ptb", progress=False)
    assert (d / "ptb.char.train.txt").read_bytes() == body
    assert (d / "ptb.train.txt").read_bytes() == files["ptb.train.txt"]
    log = dict(server.log)
    assert log["/ptb.char.train.txt"] == "bytes=40-" and log["/ptb.train.txt"] == "bytes=8-"


# ---------------------------------------------------------------------------------- text8 / enwik8
def zip_bytes(member, body):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, body)
    return buf.getvalue()


def fake_text8(n):
    rng = np.random.default_rng(0)
    words = ["anarchism", "originated", "as", "a", "term", "of", "abuse", "the", "quick", "zebra", "jumps", "over"]
    out, total = [], 0
    while total < n:
        w = " " + words[rng.integers(len(words))]
        out.append(w)
        total += len(w)
    return "".join(out)[:n].encode()


def use_zip_source(monkeypatch, name, url, body, member_body, soft_zip=False, member_soft=frozenset()):
    src = SOURCES[name]
    f = dataclasses.replace(src.files[0], urls=(url,), size=len(body), sha256=sha(body), md5=None,
                            soft=frozenset({"size", "sha256"}) if soft_zip else frozenset(),
                            member_size=len(member_body), member_md5=md5(member_body),
                            member_sha256=sha(member_body) if name == "text8" else None, member_soft=member_soft)
    monkeypatch.setitem(SOURCES, name, dataclasses.replace(src, files=(f,)))
    return f


@pytest.mark.parametrize("name,n", [("text8", 10_000), ("enwik8", 10_007)])
def test_exact_split_arithmetic_and_byte_identity(server, monkeypatch, name, n):
    member = fake_text8(n) if name == "text8" else bytes(np.random.default_rng(1).integers(0, 256, n, np.uint8))
    body = zip_bytes(name, member)
    use_zip_source(monkeypatch, name, server.add(f"/{name}.zip", body), body, member)
    c = zd.load_corpus(name, download=True)
    k = n // 20
    assert (len(c.train), len(c.valid), len(c.test)) == (n - 2 * k, k, k)
    assert zd.split_sizes(10 ** 8) == (90_000_000, 5_000_000, 5_000_000)
    ids = torch.cat([c.train, c.valid, c.test]).tolist()
    if name == "text8":
        assert "".join(c.vocab[i] for i in ids).encode() == member  # no stripping: leading space kept
        assert c.vocab[0] == " " and len(c.vocab) == len(set(member)) and c.unit == "char"
    else:
        assert bytes(int(c.vocab[i]) for i in ids) == member and c.unit == "byte"
    assert c.metric == "bpc" and c.variant == "standard"
    tr = np.load(Path(c.meta["cache_dir"]) / "train.npy", mmap_mode="r")
    assert tr.dtype == np.uint8


@pytest.mark.parametrize("name", ["text8", "enwik8"])
def test_prefix_bytes_from_the_download_equals_a_local_copy_of_those_bytes(server, monkeypatch, tmp_path, name):
    """CPU-scale tables use the corpus's first N bytes: cut from the standard (downloaded) zip member, or read
    from a local copy of exactly those bytes (or a longer local file), they give the same prepared corpus."""
    n, cut = 12_000, 5_003
    member = fake_text8(n) if name == "text8" else bytes(np.random.default_rng(2).integers(0, 256, n, np.uint8))
    body = zip_bytes(name, member)
    use_zip_source(monkeypatch, name, server.add(f"/{name}.zip", body), body, member)
    a = zd.load_corpus(name, download=True, prefix_bytes=cut)
    k = cut // 20
    assert (len(a.train), len(a.valid), len(a.test)) == (cut - 2 * k, k, k) and a.variant == "prefix"
    ids = torch.cat([a.train, a.valid, a.test]).tolist()
    decoded = "".join(a.vocab[i] for i in ids).encode() if name == "text8" else bytes(int(a.vocab[i]) for i in ids)
    assert decoded == member[:cut]
    assert a.meta["source_sha256"] == sha(member[:cut]) and a.meta["source_bytes"] == cut
    (tmp_path / "head").write_bytes(member[:cut])
    (tmp_path / "longer").write_bytes(member[:cut + 777])
    for local in (tmp_path / "head", tmp_path / "longer"):
        b = zd.load_corpus(name, local_file=local, prefix_bytes=cut)
        assert b.meta["cache_dir"] == a.meta["cache_dir"]
        assert all(torch.equal(x, y) for x, y in zip((a.train, a.valid, a.test), (b.train, b.valid, b.test)))
    with pytest.raises(zd.DataError, match=rf"data.prefix_bytes={n + 1} is longer than .* \({n} bytes\)"):
        zd.load_corpus(name, download=True, prefix_bytes=n + 1)
    with pytest.raises(ValueError, match="prefix_bytes"):
        zd.load_corpus("ptb_char", prefix_bytes=cut)


def test_enwik8_secondary_zip_checksum_only_warns_member_md5_decides(server, monkeypatch):
    member = b"<mediawiki>\n" + bytes(range(32, 127)) * 50
    body = zip_bytes("enwik8", member)
    f = use_zip_source(monkeypatch, "enwik8", server.add("/enwik8.zip", body), body, member, soft_zip=True)
    monkeypatch.setitem(SOURCES, "enwik8", dataclasses.replace(
        SOURCES["enwik8"], files=(dataclasses.replace(f, sha256="0" * 64, size=36_445_475),)))
    with pytest.warns(UserWarning, match="no primary source"):
        d = zd.download("enwik8", progress=False)
    rec = json.loads((d / ".verified.json").read_text())["enwik8.zip"]
    assert rec["sha256"] == sha(body) and rec["member_md5"] == md5(member)  # what we got is recorded
    bad = zip_bytes("enwik8", member[:-1] + b"!")
    f2 = dataclasses.replace(f, urls=(server.add("/bad/enwik8.zip", bad),))
    monkeypatch.setitem(SOURCES, "enwik8", dataclasses.replace(SOURCES["enwik8"], files=(f2,)))
    (d / "enwik8.zip").unlink()
    with pytest.raises(zd.DataError, match="member enwik8 md5 expected"):
        zd.download("enwik8", progress=False)
    assert "enwik8.zip" not in listing(d)


def test_text8_unconfirmed_member_md5_warns_confirmed_zip_sha_fails(server, monkeypatch):
    member = fake_text8(2000)
    body = zip_bytes("text8", member)
    f = use_zip_source(monkeypatch, "text8", server.add("/text8.zip", body), body, member,
                       member_soft=frozenset({"md5", "size", "sha256"}))
    monkeypatch.setitem(SOURCES, "text8", dataclasses.replace(
        SOURCES["text8"], files=(dataclasses.replace(f, member_md5="f" * 32),)))
    with pytest.warns(UserWarning, match="member text8 md5"):
        zd.download("text8", progress=False)
    (zd.resolve_data_dir() / "text8" / "text8.zip").unlink()
    monkeypatch.setitem(SOURCES, "text8", dataclasses.replace(
        SOURCES["text8"], files=(dataclasses.replace(f, sha256="a" * 64),)))
    with pytest.raises(zd.DataError, match=r"text8.zip.*sha256 expected a{64}, found"):
        zd.download("text8", progress=False)


def test_truncated_zip_rejected(server, monkeypatch):
    member = fake_text8(5000)
    body = zip_bytes("enwik8", member)
    f = use_zip_source(monkeypatch, "enwik8", server.add("/enwik8.zip", body[: len(body) // 2]), body, member,
                       soft_zip=True)
    with pytest.raises(zd.DataError) as e:
        zd.download("enwik8", progress=False)
    assert "truncated" in str(e.value) and "enwik8.zip" in str(e.value) and "make data-enwik8" in str(e.value)
    assert "enwik8.zip" not in listing(zd.resolve_data_dir() / "enwik8")


def test_zip_without_expected_member_rejected(server, monkeypatch):
    member = fake_text8(3000)
    body = zip_bytes("text8.txt", member)
    use_zip_source(monkeypatch, "text8", server.add("/text8.zip", body), body, member,
                   member_soft=frozenset({"md5", "size", "sha256"}))
    with pytest.raises(zd.DataError, match=r"expected zip member 'text8', found members \['text8.txt'\]"):
        zd.download("text8", progress=False)
    assert "text8.zip" not in listing(zd.resolve_data_dir() / "text8")


def test_truncated_tgz_rejected(server, monkeypatch):
    files = ptb_files()
    tgz = ptb_tgz({n: b * 50 for n, b in files.items()})
    use_ptb(monkeypatch, {n: b * 50 for n, b in files.items()}, tgz_urls=[server.add("/s.tgz", tgz[:-200])])
    with pytest.raises(zd.DataError, match="truncated or corrupt"):
        zd.download("ptb", progress=False)
    assert not [p for p in listing(zd.resolve_data_dir() / "ptb") if p.startswith("ptb.")]


def test_local_prefix_file_same_rule_and_labelled(tmp_path):
    f = tmp_path / "enwik8.first1000bytes"
    body = bytes(np.random.default_rng(2).integers(0, 256, 1000, np.uint8))
    f.write_bytes(body)
    c = zd.load_corpus("enwik8", local_file=f)
    assert c.variant == "prefix" and c.meta["source_file"] == f.name and c.meta["source_sha256"] == sha(body)
    assert (len(c.train), len(c.valid), len(c.test)) == (900, 50, 50)
    assert bytes(int(c.vocab[i]) for i in torch.cat([c.train, c.valid, c.test])) == body
    assert "prefix" in c.describe()


# ------------------------------------------------------------------------------------- cache rules
def test_stale_cache_version_and_broken_cache_rebuilt(monkeypatch, tmp_path):
    f = tmp_path / "t8"
    f.write_bytes(fake_text8(4000))
    c1 = zd.load_corpus("text8", local_file=f)
    cdir = Path(c1.meta["cache_dir"])
    meta = json.loads((cdir / "meta.json").read_text())
    meta["prep_version"] = zcache.PREP_VERSION - 1  # written by an older preparation
    (cdir / "meta.json").write_text(json.dumps(meta))
    (cdir / "train.npy").write_bytes(b"junk")
    c2 = zd.load_corpus("text8", local_file=f)
    assert json.loads((cdir / "meta.json").read_text())["prep_version"] == zcache.PREP_VERSION
    assert torch.equal(c1.train, c2.train) and c1.vocab == c2.vocab
    monkeypatch.setattr(zcache, "PREP_VERSION", zcache.PREP_VERSION + 1)  # code moved on: cache rebuilt
    c3 = zd.load_corpus("text8", local_file=f)
    assert json.loads((cdir / "meta.json").read_text())["prep_version"] == zcache.PREP_VERSION
    assert torch.equal(c1.test, c3.test)
    (cdir / "valid.npy").unlink()  # a half-deleted cache is rebuilt too
    assert torch.equal(zd.load_corpus("text8", local_file=f).valid, c1.valid)
    assert not [p for p in cdir.parent.iterdir() if p.name.startswith(".tmp-")]


def _prepare_in_child(data, f, go, q):
    go.wait(10)
    c = zd.load_corpus("text8", data, local_file=f)
    q.put([os.getpid(), c.meta["built_by_pid"], len(c.train), int(c.train.sum())])


def test_concurrent_preparation_two_processes(tmp_path):
    import multiprocessing as mp
    import time

    f = tmp_path / "t8"
    f.write_bytes(fake_text8(200_000))
    data = tmp_path / "data"
    lock = data / "text8" / "prepared" / f".text8-prefix-{sha(f.read_bytes())[:12]}.lock"
    ctx = mp.get_context("fork")  # forked children share the imported modules: no 2 s torch import each
    go, q = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(data, f, go, q)) for _ in range(2)]
    for p in procs:
        p.start()
    with zcache.file_lock(lock):  # both children start preparing at once and queue on the lock
        go.set()
        time.sleep(0.5)
    outs = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    builders = {o[1] for o in outs}
    assert len(builders) == 1 and builders <= {p.pid for p in procs}  # built once; the other read the cache
    assert outs[0][2:] == outs[1][2:] and outs[0][2] == 200_000 - 2 * 10_000
    assert not [p for p in lock.parent.iterdir() if p.name.startswith(".tmp-")]


# ------------------------------------------------------------------------------------------- MNIST
def idx_images(x):
    return gzip.compress(struct.pack(">IIII", 0x803, len(x), 28, 28) + x.astype(np.uint8).tobytes(), mtime=0)


def idx_labels(y):
    return gzip.compress(struct.pack(">II", 0x801, len(y)) + y.astype(np.uint8).tobytes(), mtime=0)


def fake_mnist(n_train=60, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    tx, sx = rng.integers(0, 256, (n_train, 784)), rng.integers(0, 256, (n_test, 784))
    ty, sy = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)
    files = {"train-images-idx3-ubyte.gz": idx_images(tx), "train-labels-idx1-ubyte.gz": idx_labels(ty),
             "t10k-images-idx3-ubyte.gz": idx_images(sx), "t10k-labels-idx1-ubyte.gz": idx_labels(sy)}
    return files, (tx, ty, sx, sy)


def use_mnist(monkeypatch, name, files, base):
    src = SOURCES[name]
    new = tuple(dataclasses.replace(src.file(n), urls=(base + "/" + n,), size=len(b), sha256=sha(b), md5=md5(b),
                                    gunzip_sha256=None) for n, b in files.items())
    monkeypatch.setitem(SOURCES, name, dataclasses.replace(src, files=new))


def test_mnist_splits_scaling_and_true_permutation(server, monkeypatch):
    files, (tx, ty, sx, sy) = fake_mnist()
    for n, b in files.items():
        server.add("/mnist/" + n, b)
    use_mnist(monkeypatch, "mnist", files, server.url + "/mnist")
    monkeypatch.setattr(zmnist, "TRAIN_SIZE", 50)  # 50k/10k scaled to 50/10
    s = zd.load_mnist("mnist", download=True)
    assert [len(p[1]) for p in (s.train, s.valid, s.test)] == [50, 10, 20]
    assert torch.equal(s.valid[0], torch.from_numpy(tx[50:].astype(np.float32) / 255))  # last 10 of train
    assert torch.equal(s.train[1], torch.from_numpy(ty[:50])) and s.train[0].dtype == torch.float32
    assert float(s.test[0].max()) <= 1.0 and s.permutation is None and s.metric == "error" and s.label == "smnist"
    p = zd.load_mnist("mnist", permute=True, permutation_seed=3)
    assert sorted(p.permutation.tolist()) == list(range(784))  # a bijection, unlike randint with replacement
    assert torch.equal(p.permutation, torch.randperm(784, generator=torch.Generator().manual_seed(3)))
    for a, b in ((s.train, p.train), (s.valid, p.valid), (s.test, p.test)):
        assert torch.equal(a[0][:, p.permutation], b[0])  # same permutation for every split
    stored = np.load(zd.resolve_data_dir() / "mnist" / "prepared" / "permutation_seed3.npy")
    assert stored.tolist() == p.permutation.tolist() and p.label == "pmnist"


def test_mnist_test_split_needs_only_test_files(server, monkeypatch):
    files, (tx, ty, sx, sy) = fake_mnist(n_test=50)
    for n in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):  # as some S3 buckets serve .gz:
        server.add("/m/" + n, files[n], headers={"Content-Encoding": "gzip"})  # must be stored undecoded
    use_mnist(monkeypatch, "mnist", files, server.url + "/m")
    monkeypatch.setattr(zmnist, "TEST_SPLIT_SIZES", (40, 5, 5))
    s = zd.load_mnist("mnist", download=True, source="test_split")
    assert [len(p[1]) for p in (s.train, s.valid, s.test)] == [40, 5, 5]
    assert torch.equal(s.test[1], torch.from_numpy(sy[45:])) and "test_split" in s.label


def test_truncated_gz_and_regzipped_copy(server, monkeypatch, tmp_path):
    files, _ = fake_mnist(n_train=4, n_test=4)
    src = SOURCES["fashion_mnist"]
    raw = {n: gzip.decompress(b) for n, b in files.items()}
    new = tuple(dataclasses.replace(src.file(n), urls=(server.add("/f/" + n, b),), md5=md5(b),
                                    gunzip_sha256=sha(raw[n])) for n, b in files.items())
    monkeypatch.setitem(SOURCES, "fashion_mnist", dataclasses.replace(src, files=new))
    mirror = tmp_path / "m"
    mirror.mkdir()
    for n, r in raw.items():  # a re-gzipped copy (other gz bytes, same content) is accepted on content
        (mirror / n).write_bytes(gzip.compress(r, compresslevel=1, mtime=12345))
    with pytest.warns(UserWarning, match="decompressed content matches"):
        zd.download("fashion_mnist", mirror=mirror.as_uri(), offline=True, progress=False)
    # truncated gz: both the gz md5 and the content check fail
    src = SOURCES["mnist"]
    b = files["t10k-images-idx3-ubyte.gz"]
    f = dataclasses.replace(src.file("t10k-images-idx3-ubyte.gz"), urls=(server.add("/t.gz", b[:-30]),), size=None,
                            sha256=None, md5=None)
    monkeypatch.setitem(SOURCES, "mnist", dataclasses.replace(src, files=(f,)))
    with pytest.raises(zd.DataError, match="truncated or corrupt"):
        zd.download("mnist", progress=False)


# ----------------------------------------------------------------------------------- stdlib, batching
def test_stdlib_corpus_deterministic_capped_90_5_5(tmp_path):
    a = zd.load_corpus("stdlib", tmp_path / "a")
    b = zd.load_corpus("stdlib", tmp_path / "b")
    n = len(a.train) + len(a.valid) + len(a.test)
    assert n <= 2_000_000 and (len(a.train), len(a.valid), len(a.test)) == zd.split_sizes(n)
    assert torch.equal(a.train, b.train) and a.vocab == b.vocab and a.metric == "bpc"
    assert "".join(a.vocab[i] for i in a.train[:200].tolist()).isascii()


def test_batchify_and_bptt_windows_match_diagram():
    ids = torch.arange(26)
    b = zd.batchify(ids, 4)
    assert b.shape == (6, 4) and b[:, 0].tolist() == list(range(6)) and b[0].tolist() == [0, 6, 12, 18]
    wins = list(zd.bptt_windows(b, 2))
    assert len(wins) == zd.num_windows(6, 2) == 3 and [x.shape[0] for x, _ in wins] == [2, 2, 1]
    x, y = wins[0]
    assert torch.equal(y[:-1], x[1:]) and y[-1].tolist() == [2, 8, 14, 20]
    assert torch.equal(torch.cat([w[0] for w in wins]), b[:-1]) and torch.equal(torch.cat([w[1] for w in wins]), b[1:])


def test_cli_summary_from_file_mirror(monkeypatch, tmp_path, capsys):
    files = ptb_files()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for n, b in files.items():
        (mirror / n).write_bytes(b)
    use_ptb(monkeypatch, files)
    sys.path.insert(0, str(REPO / "scripts"))
    import download_data

    rc = download_data.main(["ptb", "--mirror", mirror.as_uri(), "--data-dir", str(tmp_path / "dd"), "--offline"])
    out = capsys.readouterr().out
    assert rc == 0 and "ptb_char: vocab" in out and "ptb_word: vocab 9 words" in out and "verified" in out
