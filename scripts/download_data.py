#!/usr/bin/env python
"""Download, verify and prepare the corpora; print a summary (files, sizes, vocab, token counts).

    python scripts/download_data.py {ptb,text8,enwik8,mnist,fashion_mnist,stdlib,all} [--mirror URL] [--data-dir DIR]

Offline PTB from a local copy:  python scripts/download_data.py ptb --mirror file://$PWD/../shared/data/ptb
A local enwik8 prefix:          python scripts/download_data.py enwik8 --local-file ../shared/data/enwik8/enwik8.first4154399bytes
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoneout.data import DATASETS, DataError, download, load_corpus, load_mnist, resolve_data_dir  # noqa: E402

GROUPS = {"ptb": ["ptb_char", "ptb_word"], "text8": ["text8"], "enwik8": ["enwik8"], "mnist": ["mnist"],
          "fashion_mnist": ["fashion_mnist"], "stdlib": ["stdlib"]}
GROUPS["all"] = [d for g in ("ptb", "text8", "enwik8", "mnist") for d in GROUPS[g]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("name", choices=sorted(GROUPS) + sorted(set(DATASETS) - set(GROUPS)))
    p.add_argument("--mirror", action="append", help="base URL tried first (http(s):// or file://); repeatable; "
                                                     "env ZONEOUT_MIRROR also works")
    p.add_argument("--data-dir", default=None, help="default: env ZONEOUT_DATA, else <repo>/data")
    p.add_argument("--offline", action="store_true", help="only try the mirrors, never the canonical URLs")
    p.add_argument("--mnist-source", choices=["standard", "test_split"], default="standard",
                   help="test_split: only the 10k test images are needed (8k/1k/1k; NOT the standard split)")
    p.add_argument("--local-file", default=None,
                   help="text8/enwik8: prepare this local raw file (e.g. a real prefix) with the 90/5/5 rule instead "
                        "of downloading; labelled variant=prefix")
    args = p.parse_args(argv)
    root = resolve_data_dir(args.data_dir)
    names = GROUPS.get(args.name, [args.name])
    failed = 0
    for name in names:
        spec = DATASETS[name]
        t0 = time.time()
        try:
            if args.local_file:
                if name not in ("text8", "enwik8"):
                    p.error("--local-file works for text8 and enwik8 only")
                c = load_corpus(name, root, local_file=args.local_file)
                print(f"{c.describe()} [{time.time() - t0:.1f}s]")
                continue
            if spec.source and not (spec.unit == "pixel" and args.mnist_source == "test_split"):
                d = download(name, root, args.mirror, offline=args.offline)
                for f in spec.files:
                    print(f"  {d / f}  {(d / f).stat().st_size:,} bytes  verified")
            if spec.unit == "pixel":
                data = load_mnist(name, root, download=not args.offline or bool(args.mirror), mirror=args.mirror,
                                  source=args.mnist_source)
                sizes = " / ".join(f"{len(s[1]):,}" for s in (data.train, data.valid, data.test))
                print(f"{data.label}: {sizes} sequences of 784 pixels, metric error "
                      f"[{time.time() - t0:.1f}s]")
            else:
                c = load_corpus(name, root, download=True, mirror=args.mirror)
                print(f"{c.describe()} [{time.time() - t0:.1f}s]")
        except DataError as e:
            failed += 1
            print(f"ERROR {name}: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
