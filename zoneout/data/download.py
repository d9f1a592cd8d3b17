"""Download + verify every corpus (mirrors in order, HTTP Range resume, checksums before anything is used).

Rules (DATASETS.md): a file is only moved to its final name after every confirmed check passed; checks
without a primary source ("soft") only warn and the obtained hashes are recorded in ``.verified.json``.
Bad input (HTML page, truncated or corrupt archive, missing zip member, wrong size/checksum) raises
``DataError`` naming the file, what was expected and found, and the ``make data-<name>`` target to run.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import tarfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import unquote, urlparse

from .cache import PathLike, atomic_write_json, file_lock, read_json, resolve_data_dir
from .registry import FileSpec, SourceSpec, resolve_source

CHUNK = 1 << 20


class DataError(RuntimeError):
    """Missing, corrupt or unexpected data. The message says which file, expected vs found, and what to run."""


class _Unavailable(Exception):
    """This candidate URL cannot deliver (404, connection refused, no such file): try the next one."""


def _fix(source: SourceSpec) -> str:
    return (f"with a network, run `make {source.make_target}` again; offline, point it at a copy of the files: "
            f"`make {source.make_target} MIRROR=file:///path/to/folder` (or `python scripts/download_data.py "
            f"{source.name} --mirror URL`, or env ZONEOUT_MIRROR=URL)")


# ------------------------------------------------------------------------------------------ verify
def _hashes(stream, want_sha=True, want_md5=True) -> Tuple[int, str, str]:
    sha, md5, n = hashlib.sha256(), hashlib.md5(), 0
    while True:
        block = stream.read(CHUNK)
        if not block:
            break
        n += len(block)
        if want_sha:
            sha.update(block)
        if want_md5:
            md5.update(block)
    return n, sha.hexdigest(), md5.hexdigest()


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(1024).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml version=\"1.0\"?>\n<!doctype html")) or (
        head.startswith(b"<") and b"<html" in head[:300])


def _compare(label: str, checks: Dict[str, Tuple[Optional[object], object]], soft: Iterable[str],
             display: str, source: SourceSpec, warn: List[str]) -> None:
    """Confirmed mismatches raise (all of them in one message); soft ones are appended to ``warn``."""
    hard = []
    for key, (expected, found) in checks.items():
        if expected is None or expected == found:
            continue
        msg = f"{label}{key} expected {expected}, found {found}"
        if key == "size" and isinstance(found, int) and isinstance(expected, int) and found < expected:
            msg += " (truncated download?)"
        if key in soft:
            warn.append(f"{display}: {msg} [value has no primary source: recorded, not fatal]")
        else:
            hard.append(msg)
    if hard:
        raise DataError(f"{display}: {'; '.join(hard)}. The file is not used; {_fix(source)}.")


def verify_file(path: Path, spec: FileSpec, source: SourceSpec, display: Optional[str] = None) -> dict:
    """Check ``path`` against ``spec``; return a record of what was found (sizes, hashes, warnings).

    Raises DataError on any failed confirmed check, an HTML page, a corrupt/truncated archive or a missing member.
    """
    display = display or spec.name
    if _looks_like_html(path) and spec.kind != "html":
        raise DataError(f"{display}: expected {spec.kind} data for {spec.name}, found an HTML page "
                        f"(a mirror or proxy served an error/login page). The file is not used; {_fix(source)}.")
    warn: List[str] = []
    with open(path, "rb") as fh:
        size, sha, md5 = _hashes(fh)
    rec = {"name": spec.name, "size": size, "sha256": sha, "md5": md5}
    gz_alt_ok = False
    if spec.gunzip_sha256 and ((spec.md5 and md5 != spec.md5) or (spec.sha256 and sha != spec.sha256)):
        # A re-gzipped copy (e.g. Debian's) has other gz bytes but the same content: accept it on content.
        rec["gunzip_sha256"] = _gunzip_hash(path, display, source)[1]
        gz_alt_ok = rec["gunzip_sha256"] == spec.gunzip_sha256
        if gz_alt_ok:
            warn.append(f"{display}: gz bytes differ from upstream (md5 {md5}); decompressed content matches")
        else:
            raise DataError(f"{display}: expected gz md5 {spec.md5} or decompressed sha256 {spec.gunzip_sha256}, "
                            f"found md5 {md5}, decompressed sha256 {rec['gunzip_sha256']}. The file is not used; "
                            f"{_fix(source)}.")
    if not gz_alt_ok:
        _compare("", {"size": (spec.size, size), "sha256": (spec.sha256, sha), "md5": (spec.md5, md5)},
                 spec.soft, display, source, warn)
    if spec.kind == "zip":
        rec.update(_verify_zip(path, spec, source, display, warn))
    elif spec.kind == "gz" and "gunzip_sha256" not in rec:
        n, gsha = _gunzip_hash(path, display, source)
        rec.update(gunzip_size=n, gunzip_sha256=gsha)
    elif spec.kind == "tgz":
        _verify_tar(path, spec, source, display)
    rec["warnings"] = warn
    for w in warn:
        warnings.warn(w, stacklevel=3)
    return rec


def _gunzip_hash(path: Path, display: str, source: SourceSpec) -> Tuple[int, str]:
    try:
        with gzip.open(path, "rb") as fh:
            n, sha, _ = _hashes(fh, want_md5=False)
    except (EOFError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{display}: expected a complete gzip stream, found a truncated or corrupt one ({e}). "
                        f"The file is not used; {_fix(source)}.") from None
    return n, sha


def _verify_zip(path: Path, spec: FileSpec, source: SourceSpec, display: str, warn: List[str]) -> dict:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if spec.member not in names:
                raise DataError(f"{display}: expected zip member {spec.member!r}, found members {names[:5]}. "
                                f"The file is not used; {_fix(source)}.")
            with zf.open(spec.member) as fh:  # reading to the end also checks the member's CRC
                n, sha, md5 = _hashes(fh, want_sha=spec.member_sha256 is not None)
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as e:
        raise DataError(f"{display}: expected a complete zip archive holding {spec.member!r}, found a truncated "
                        f"or corrupt file ({e}). The file is not used; {_fix(source)}.") from None
    checks = {"size": (spec.member_size, n), "md5": (spec.member_md5, md5)}
    if spec.member_sha256:
        checks["sha256"] = (spec.member_sha256, sha)
    _compare(f"member {spec.member} ", checks, spec.member_soft, display, source, warn)
    out = {"member": spec.member, "member_size": n, "member_md5": md5}
    if spec.member_sha256:
        out["member_sha256"] = sha
    return out


def _norm(member: str) -> str:
    return member[2:] if member.startswith("./") else member


def _verify_tar(path: Path, spec: FileSpec, source: SourceSpec, display: str) -> None:
    try:
        with tarfile.open(path, "r:*") as tf:
            names = {_norm(m.name) for m in tf}  # iterating to the end detects truncation
    except (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{display}: expected a complete tar.gz archive, found a truncated or corrupt file ({e}). "
                        f"The file is not used; {_fix(source)}.") from None
    missing = [m for m in spec.provides.values() if _norm(m) not in names]
    if missing:
        raise DataError(f"{display}: expected archive members {missing}, not found in the archive. "
                        f"The file is not used; {_fix(source)}.")


# ----------------------------------------------------------------------------------------- stamps
def _stamp_path(dest: Path) -> Path:
    return dest / ".verified.json"


def _spec_key(spec: FileSpec) -> str:
    """Fingerprint of what a file was checked against: a stamp made under other expectations is not trusted."""
    fields = (spec.size, spec.sha256, spec.md5, sorted(spec.soft), spec.kind, spec.member, spec.member_size,
              spec.member_md5, spec.member_sha256, sorted(spec.member_soft), spec.gunzip_sha256)
    return hashlib.sha256(repr(fields).encode()).hexdigest()[:16]


def is_valid(path: Path, spec: FileSpec, source: SourceSpec, stamps: Optional[dict] = None) -> bool:
    """True when ``path`` exists and passes verification (cached by size + mtime in ``.verified.json``).
    Raises DataError when it exists but fails."""
    if not path.is_file():
        return False
    if stamps is None:
        stamps = read_json(_stamp_path(path.parent)) or {}
    st = path.stat()
    rec = stamps.get(spec.name)
    if (rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns
            and rec.get("checked_against") == _spec_key(spec)):
        return True
    rec = verify_file(path, spec, source)
    rec.update(mtime_ns=st.st_mtime_ns, checked_against=_spec_key(spec))
    stamps[spec.name] = rec
    return True


def _record(dest: Path, path: Path, rec: dict, spec: FileSpec) -> None:
    stamps = read_json(_stamp_path(dest)) or {}
    rec = dict(rec, mtime_ns=path.stat().st_mtime_ns, size=path.stat().st_size, checked_against=_spec_key(spec))
    stamps[rec["name"]] = rec
    atomic_write_json(_stamp_path(dest), stamps)


# ------------------------------------------------------------------------------------------ fetch
def _mirrors(mirror) -> List[str]:
    items: List[str] = []
    given = [mirror] if isinstance(mirror, (str, os.PathLike)) else list(mirror or [])
    for m in given + [os.environ.get("ZONEOUT_MIRROR", "")]:
        if isinstance(m, os.PathLike):
            items.append(os.fspath(m))
        else:
            items += [x.strip() for x in (m or "").replace(",", " ").split() if x.strip()]
    out = []
    for m in items:
        if "://" not in m:  # a plain directory path is a file:// mirror
            m = Path(m).resolve().as_uri()
        out.append(m.rstrip("/") + "/")
    return list(dict.fromkeys(out))


def _mirror_urls(mirrors: Sequence[str], source: SourceSpec, fname: str) -> List[str]:
    subdirs = dict.fromkeys(["", source.name + "/", source.dirname + "/", source.name.replace("_", "-") + "/"])
    return [m + sub + fname for m in mirrors for sub in subdirs]


def _fetch(url: str, part: Path, progress: bool, label: str) -> None:
    """Download ``url`` into ``part``; resume with an HTTP Range request when ``part`` already holds bytes."""
    from tqdm.auto import tqdm

    if url.startswith("file://"):
        src = Path(unquote(urlparse(url).path))
        if not src.is_file():
            raise _Unavailable(f"{url}: no such file")
        with open(src, "rb") as fi, open(part, "wb") as fo, tqdm(
                total=src.stat().st_size, unit="B", unit_scale=True, desc=label, disable=None if progress else True,
                leave=False) as bar:
            for block in iter(lambda: fi.read(CHUNK), b""):
                fo.write(block)
                bar.update(len(block))
        return
    if not url.startswith(("http://", "https://")):
        raise _Unavailable(f"{url}: unsupported scheme (use http(s):// or file://)")
    import requests

    pos = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={pos}-"} if pos else {}
    try:
        r = requests.get(url, stream=True, timeout=(15, 60), headers=headers)
    except requests.RequestException as e:
        raise _Unavailable(f"{url}: {type(e).__name__}: {e}") from None
    with r:
        if r.status_code == 416 and pos:  # nothing left to send: the .part is complete (verified next)
            return
        if r.status_code >= 400:
            raise _Unavailable(f"{url}: HTTP {r.status_code}")
        ctype = r.headers.get("Content-Type", "")
        if "text/html" in ctype.lower() and not label.endswith((".html", ".htm")):
            raise DataError(f"{label}: expected data from {url}, found an HTML page (Content-Type {ctype!r}); "
                            f"the server sent an error or login page instead of the file")
        if pos and r.status_code == 206 and r.headers.get("Content-Range", "").startswith(f"bytes {pos}-"):
            mode = "ab"
        else:
            mode, pos = "wb", 0
        length = r.headers.get("Content-Length")
        total = pos + int(length) if length is not None else None
        with open(part, mode) as fo, tqdm(total=total, initial=pos, unit="B", unit_scale=True, desc=label,
                                          disable=None if progress else True, leave=False) as bar:
            # raw bytes as served (a .gz sent with Content-Encoding: gzip must not be decoded); small blocks so an
            # interrupted read keeps most of what arrived
            for block in r.raw.stream(1 << 16, decode_content=False):
                fo.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise ConnectionError(f"{url}: connection closed after {part.stat().st_size} of {total} bytes")


def _fetch_verified(urls: Sequence[str], target: Path, spec: FileSpec, source: SourceSpec, progress: bool,
                    errors: List[str], retries: int = 2) -> Optional[dict]:
    """Try ``urls`` in order; the first one whose bytes pass verification is moved to ``target``."""
    part = target.with_name(target.name + ".part")
    for url in urls:
        for attempt in range(retries + 1):
            try:
                _fetch(url, part, progress, spec.name)
            except _Unavailable as e:
                errors.append(str(e))
                break
            except DataError as e:
                errors.append(str(e))
                part.unlink(missing_ok=True)
                break
            except Exception as e:  # interrupted transfer: keep the .part and resume with a Range request
                errors.append(f"{url}: {type(e).__name__}: {e}")
                if attempt < retries:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                break
            try:
                rec = verify_file(part, spec, source, display=f"{spec.name} (from {url})")
            except DataError as e:
                errors.append(str(e))
                part.unlink(missing_ok=True)  # never resume onto bytes that failed verification
                break
            os.replace(part, target)
            rec["url"] = url
            return rec
    return None


def _extract_members(archive: Path, spec: FileSpec, wanted: Dict[str, FileSpec], dest: Path, source: SourceSpec,
                     errors: List[str]) -> List[str]:
    """Extract the wanted members of a verified tgz; each is verified against its own FileSpec before it is
    moved into place. Returns the names placed."""
    placed = []
    with tarfile.open(archive, "r:*") as tf:
        members = {_norm(m.name): m for m in tf.getmembers()}
        for fname, fspec in wanted.items():
            m = members.get(_norm(spec.provides.get(fname, "")))
            if m is None:
                continue
            tmp = dest / f".{fname}.extract-{os.getpid()}"
            try:
                with tf.extractfile(m) as fi, open(tmp, "wb") as fo:
                    shutil.copyfileobj(fi, fo, CHUNK)
                rec = verify_file(tmp, fspec, source, display=f"{fname} (from {archive.name})")
            except DataError as e:
                errors.append(str(e))
                tmp.unlink(missing_ok=True)
                continue
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, dest / fname)
            rec["url"] = f"{archive.name}:{m.name}"
            _record(dest, dest / fname, rec, fspec)
            placed.append(fname)
    return placed


def download(name: str, data_dir: Optional[PathLike] = None, mirror=None, *, files: Optional[Sequence[str]] = None,
             offline: bool = False, progress: bool = True) -> Path:
    """Fetch and verify the raw files of dataset/source ``name`` into ``<data_dir>/<source>/``; return that dir.

    mirror: base URL(s) (http(s):// or file://, or a local dir) tried before the canonical URLs, also read from
    env ``ZONEOUT_MIRROR`` (comma-separated). A mirror may hold the files directly or under ``<source>/``.
    files: only these file names (default: all of the source). offline: try mirrors only.
    Files already present and valid (e.g. copied in by hand) are kept; nothing invalid is ever left in place.
    """
    source = resolve_source(name)
    dest = resolve_data_dir(data_dir) / source.dirname
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {f.name: f for f in source.files if files is None or f.name in files}
    if files is not None and set(files) - set(wanted):
        raise KeyError(f"{name}: unknown files {sorted(set(files) - set(wanted))}")
    mirrors = _mirrors(mirror)
    with file_lock(dest / ".lock"):
        stamps = read_json(_stamp_path(dest)) or {}
        missing: Dict[str, FileSpec] = {}
        errors: List[str] = []
        for fname, fspec in wanted.items():
            try:
                if is_valid(dest / fname, fspec, source, stamps):
                    continue
            except DataError as e:  # present but wrong (hand-filled or stale): report, replace if we can
                errors.append(f"existing {dest / fname}: {e}")
            missing[fname] = fspec
        if stamps:
            atomic_write_json(_stamp_path(dest), stamps)
        if not missing:
            return dest

        def _try_archives(urls_for):
            for arch in source.archives:
                if not (set(arch.provides) & set(missing)):
                    continue
                apath = dest / arch.name
                try:
                    ok = is_valid(apath, arch, source)
                except DataError as e:
                    errors.append(str(e))
                    ok = False
                if not ok:
                    rec = _fetch_verified(urls_for(arch), apath, arch, source, progress, errors)
                    if rec is None:
                        continue
                    _record(dest, apath, rec, arch)
                for placed in _extract_members(apath, arch, missing, dest, source, errors):
                    missing.pop(placed, None)

        # 1) mirrors: files by their own names, then archives; 2) canonical archives; 3) canonical single files
        for fname in list(missing):
            rec = _fetch_verified(_mirror_urls(mirrors, source, fname), dest / fname, missing[fname], source,
                                  progress, errors)
            if rec:
                _record(dest, dest / fname, rec, missing[fname])
                missing.pop(fname)
        if missing and mirrors:
            _try_archives(lambda a: _mirror_urls(mirrors, source, a.name))
        if missing and not offline:
            _try_archives(lambda a: list(a.urls))
            for fname in list(missing):
                rec = _fetch_verified(missing[fname].urls, dest / fname, missing[fname], source, progress, errors)
                if rec:
                    _record(dest, dest / fname, rec, missing[fname])
                    missing.pop(fname)
        if missing:
            tried = "\n  ".join(errors[-12:]) or "(no mirror given and offline)"
            raise DataError(f"{source.name}: could not obtain a valid {', '.join(sorted(missing))} in {dest}.\n"
                            f"Tried:\n  {tried}\nFix: {_fix(source)}, or copy the files there by hand.")
    return dest


def ensure_files(source: SourceSpec, names: Sequence[str], data_dir: Optional[PathLike], download_missing: bool,
                 mirror=None, dataset: Optional[str] = None) -> Path:
    """Return the source dir when ``names`` are present and valid; download them when allowed; else DataError."""
    dest = resolve_data_dir(data_dir) / source.dirname
    specs = [source.file(n) for n in names]
    problems = []
    stamps = read_json(_stamp_path(dest)) or {}
    for s in specs:
        try:
            if not is_valid(dest / s.name, s, source, stamps):
                problems.append(f"{dest / s.name} is missing")
        except DataError as e:
            problems.append(str(e))
    if not problems:
        with contextlib.suppress(OSError):
            with file_lock(dest / ".lock"):
                atomic_write_json(_stamp_path(dest), {**(read_json(_stamp_path(dest)) or {}), **stamps})
        return dest
    if download_missing:
        return download(source.name, data_dir, mirror, files=list(names))
    raise DataError(f"{dataset or source.name}: " + "; ".join(problems[:3]) +
                    f". Run `make {source.make_target}` (or pass download=True / a mirror).")
