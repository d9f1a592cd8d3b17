#!/usr/bin/env python
"""Collect every finished run and regenerate results/: runs.csv, one <table>.md per table, plots, README block.

    python scripts/collect_results.py                       # results/runs/ + experiments/ -> results/, README block
    python scripts/collect_results.py --tables char_ptb pmnist   # only these tables' pages, plots and runs.csv lines
    python scripts/collect_results.py --runs /tmp/my_runs --out /tmp/my_results   # elsewhere; README left alone

The README's results block is rewritten only by a whole collection into results/ from the default run folders
(or when --readme is given): a collection of some runs or some tables must not drop the others from it.

Offline and deterministic: the same run folders give byte-identical files (see zoneout/results.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoneout import results  # noqa: E402
from zoneout.results import write_results  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["results/runs", "experiments"],
                   help="folders scanned for metrics.json (results/runs: the committed records of the runs behind "
                        "the committed tables; a run found in both counts once)")
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument("--sweeps", default="configs/sweep", help="sweep files (table titles, row order, scales)")
    p.add_argument("--readme", default=None, help="README with the results markers (default: README.md, and only "
                   "for a whole collection of the default --runs into results/; '' = leave alone)")
    p.add_argument("--tables", nargs="*", default=None, help="only these tables (default: every table found)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    explicit = args.runs != p.get_default("runs")
    roots = [Path(r) for r in args.runs]
    sweeps = Path(args.sweeps)
    if not sweeps.is_dir() or not any(sweeps.glob("*.yaml")):   # a typo must not regenerate tables without titles
        p.error(f"--sweeps: {args.sweeps} is not a folder of sweep files (<table>.yaml); the default is configs/sweep")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out: {args.out} is a file, not a folder")
    missing = [str(r) for r in roots if not r.exists()]
    if explicit and missing:   # a typo must not regenerate (and empty) the committed tables
        p.error(f"--runs: no such folder: {', '.join(missing)}")
    if not results.find_run_dirs([r for r in roots if r.exists()]):
        p.error(f"no run folders with a metrics.json under {', '.join(args.runs)}; nothing regenerated "
                f"(run `make reproduce-<table>` or `python -m zoneout.train ...` first)")
    if args.tables is not None:
        known = sorted({f.stem for f in Path(args.sweeps).glob("*.yaml")} | set(results.TABLE_ORDER))
        unknown = [t for t in args.tables if t not in known]
        if unknown:
            p.error(f"--tables: unknown table(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.readme is None:   # only a whole collection into results/ speaks for every table
        whole = not explicit and args.tables is None and Path(args.out).resolve() == Path("results").resolve()
        args.readme = "README.md" if whole else ""
    elif args.readme and not Path(args.readme).is_file():
        p.error(f"--readme: no such file: {args.readme}")
    elif args.readme and args.tables is not None:
        p.error("--readme with --tables: the README block shows every table; collect them all (no --tables)")
    readme = args.readme or None
    try:
        written = write_results(args.runs, out_dir=args.out, sweep_dir=args.sweeps, readme=readme,
                                plots=not args.no_plots, tables=args.tables, keep_other_tables=explicit)
    except (ValueError, OSError) as e:
        p.error(f"{e} (--runs {' '.join(args.runs)})")
    for w in written:
        print(w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
