"""`make demo`: train a small zoneout LSTM and an unregularized one on CPU and print their BPC side by side.

Both runs go through the real entry point (`python -m zoneout.train ...`), so each leaves a normal run folder
(config.yaml, train.log, metrics.jsonl, metrics.json, last.pt, best.pt). The default corpus, `stdlib`, is the
characters of the Python standard library's own source files: real text, no download. `--data ptb_char` uses Penn
Treebank's character level once `make data-ptb` has prepared it (the paper's Table 1 rows at CPU size).

The training set is a fixed 20k-character prefix, small enough that a 256-unit LSTM can start to overfit it within
a few minutes, which is where zoneout (z_c = 0.5, z_h = 0.05, paper §4.1) should keep the validation BPC lower. Fixed seed and a
fixed number of steps: the numbers are reproducible on one machine (CPU floating point can differ across machines).

    python scripts/demo.py                     # 2 x 480 steps; ~10 min measured on 2 shared, busy cores

Measured here (seed 1, stdlib): unregularized best valid 3.459 BPC at epoch 23, then rising to 3.697 by epoch 40
(test 3.643); zoneout best valid 3.402 at epoch 38 (test 3.542).
    python scripts/demo.py --data ptb_char     # same sizes on PTB characters
    python scripts/demo.py --epochs 2 --hidden 64 --train-tokens 20000   # a quick smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RUNS = {  # name -> (label, overrides)
    "zoneout": ("zoneout (z_c=0.5, z_h=0.05)", ["model.zoneout_c=0.5", "model.zoneout_h=0.05"]),
    "baseline": ("unregularized", ["model.zoneout_c=0.0", "model.zoneout_h=0.0"]),
}
PTB_ROWS = {"zoneout": "char_ptb/lstm_zoneout", "baseline": "char_ptb/lstm_baseline"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="stdlib", choices=["stdlib", "ptb_char"], help="corpus (default: stdlib)")
    p.add_argument("--data-dir", default=os.environ.get("ZONEOUT_DATA", "data"), help="data folder")
    p.add_argument("--train-tokens", type=int, default=20_000, help="train on this prefix of the train split")
    p.add_argument("--hidden", type=int, default=256, help="LSTM units")
    p.add_argument("--epochs", type=int, default=40, help="epochs over the train prefix")
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-batches", type=int, default=10, help="valid windows evaluated per epoch (the final valid/test use whole splits)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="experiments/demo", help="run folders go under OUT/<timestamp>/")
    p.add_argument("--only", choices=sorted(RUNS), help="train only one of the two models")
    return p.parse_args(argv)


def check_data(data: str, data_dir: str) -> None:
    """Fail early, with the make target to run, when the chosen corpus is not prepared."""
    sys.path.insert(0, str(REPO))
    from zoneout.data import DataError, load_corpus
    try:
        load_corpus(data, data_dir, download=False)
    except DataError as e:
        sys.exit(f"demo: the {data} corpus is not available ({e}).\n"
                 f"Run `make data-ptb` (offline: `make data-ptb MIRROR=file:///path/to/ptb/`) or use the default "
                 f"`make demo` (stdlib corpus, no download).")


def overrides_for(name: str, args, run_dir: Path):
    common = [f"data={args.data}", f"data.data_dir={args.data_dir}", f"data.train_tokens={args.train_tokens}",
              f"data.seq_len={args.seq_len}", f"data.batch_size={args.batch_size}",
              f"model.hidden_size={args.hidden}", f"trainer.max_epochs={args.epochs}",
              f"trainer.max_eval_batches={args.eval_batches}", "trainer.checkpoint_every_steps=0",
              "trainer.log_every_steps=1000000", f"seed={args.seed}", f"run_dir={run_dir}",
              "++meta.table=false"]   # a demo is not a result: `make results` leaves these runs out
    if args.data == "ptb_char":   # the paper's rows, CPU-sized
        return [f"experiment={PTB_ROWS[name]}"] + common
    return [f"experiment_name=demo/{name}"] + common + RUNS[name][1]


def train(name: str, args, run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "zoneout.train", *overrides_for(name, args, run_dir)]
    print(f"\n=== {RUNS[name][0]} ===\n$ python -m zoneout.train {' '.join(cmd[3:])}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    rc = subprocess.call(cmd, cwd=REPO, env=env)
    if rc != 0:
        sys.exit(f"demo: training {name} failed with exit code {rc}; see {run_dir / 'train.log'}")
    return json.loads((run_dir / "metrics.json").read_text())


def report(results: dict, run_dirs: dict) -> str:
    names = list(results)
    width = 30
    lines = ["", f"{'':24}" + "".join(f"{RUNS[n][0]:>{width}}" for n in names)]
    curves = {n: [json.loads(l) for l in (run_dirs[n] / "metrics.jsonl").read_text().splitlines()] for n in names}
    for e in range(max(len(c) for c in curves.values())):
        cells = []
        for n in names:
            r = curves[n][e] if e < len(curves[n]) else None
            cells.append(f"{r['train_bpc']:.3f} / {r['valid_bpc']:.3f}" if r else "")
        lines.append(f"{f'epoch {e + 1} train/valid BPC':24}" + "".join(f"{c:>{width}}" for c in cells))
    for key, fmt in (("best_epoch", "d"), ("valid_bpc", ".3f"), ("test_bpc", ".3f"), ("n_params", ",d"),
                     ("train_seconds", ".1f")):
        label = {"valid_bpc": "valid BPC (best, all)", "test_bpc": "test BPC (best, all)"}.get(key, key)
        lines.append(f"{label:24}" + "".join(f"{format(results[n][key], fmt):>{width}}" for n in names))
    lines.append("")
    lines.append("Per-epoch valid BPC is measured on the first windows of the valid split only (scripts/demo.py "
                 "--eval-batches; it picks the best epoch);\nthe best epoch's valid and test BPC ('all') on the "
                 "whole splits.")
    lines += [f"run dir ({n}): {run_dirs[n]}" for n in names]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.data != "stdlib":
        check_data(args.data, args.data_dir)
    root = Path(args.out) / f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{args.data}"
    names = [args.only] if args.only else list(RUNS)
    start = time.time()
    run_dirs = {n: (root / n).resolve() for n in names}
    results = {n: train(n, args, run_dirs[n]) for n in names}
    print(report(results, run_dirs))
    print(f"\n{args.data}: {args.train_tokens:,} training characters, {args.hidden} LSTM units, "
          f"{args.epochs} epochs each; {time.time() - start:.0f} s in total.")
    if len(names) == 2:
        z, b = results["zoneout"]["valid_bpc"], results["baseline"]["valid_bpc"]
        verdict = "lower (better)" if z < b else "not lower at this size"
        print(f"zoneout's best valid BPC is {verdict} than the unregularized LSTM's: {z:.3f} vs {b:.3f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
