"""Datasets of the Zoneout paper (§4): download with checksums, cached preparation, BPTT batching.

No Hydra here: every function takes plain arguments.
"""
from .batching import batchify, bptt_windows, num_windows
from .cache import PREP_VERSION, resolve_data_dir
from .corpus import Corpus, load_corpus, split_sizes, tokenize_lines
from .download import DataError, download, verify_file
from .mnist import SequenceData, load_mnist
from .registry import DATASETS, SOURCES, DatasetSpec, FileSpec, SourceSpec

__all__ = [
    "DATASETS", "SOURCES", "DatasetSpec", "FileSpec", "SourceSpec", "DataError", "download", "verify_file",
    "Corpus", "load_corpus", "split_sizes", "tokenize_lines", "SequenceData", "load_mnist", "batchify",
    "bptt_windows", "num_windows", "PREP_VERSION", "resolve_data_dir",
]
