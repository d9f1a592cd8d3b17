#!/usr/bin/env python
"""Reproduce one of the paper's tables end to end: prepare data -> Hydra multirun -> collect -> write the table.

    python scripts/reproduce.py char_ptb --scale cpu            # 2 CPU cores, scaled down (see the sweep file)
    python scripts/reproduce.py char_ptb --scale paper --seeds 1,2,3 -- hydra/launcher=slurm_gpu hydra.launcher.partition=gpu
    python scripts/reproduce.py grid --scale cpu --dry-run       # print the commands, run nothing
    python scripts/reproduce.py text8 --scale cpu --jobs 2       # two single-threaded runs at a time (2 cores)

The sweep is ``configs/sweep/<table>.yaml``: its ``hydra.sweeper.params`` (rows in table order x seeds, and for
the grid z_c x z_h) and, per scale, the overrides applied to every job. Every job gets a fixed run folder
``<runs-root>/<scale>/<experiment>/seed<seed>`` (grid: ``<runs-root>/<scale>/zc<z_c>_zh<z_h>/seed<seed>``, the
sweep file's ``run_name``), so re-running the command skips finished jobs and resumes interrupted ones (train.py
resumes from a run folder's last.pt).
Arguments after ``--`` go to Hydra unchanged (launcher, partition, any config key).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoneout import results  # noqa: E402  (no Hydra import in zoneout.results)

LM_DATASETS = ("ptb_char", "ptb_word", "text8", "enwik8", "stdlib")
DEFAULT_RUN_NAME = "${hydra:runtime.choices.experiment}/seed${seed}"


def load_sweep_file(table: str, sweep_dir: Path) -> dict:
    path = sweep_dir / f"{table}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in sweep_dir.glob("*.yaml")))
        raise SystemExit(f"no sweep file {path}; tables: {known}")
    return yaml.safe_load(path.read_text())


def scale_spec(raw: dict, scale: str) -> dict:
    scales = (raw.get("sweep") or {}).get("scales") or {}
    if scale not in scales:
        raise SystemExit(f"sweep {raw.get('sweep', {}).get('table')}: no scale {scale!r} (has {', '.join(scales)})")
    return scales[scale] or {}


def sweep_params(raw: dict, seeds: str | None, spec: dict | None = None) -> dict[str, list[str]]:
    """hydra.sweeper.params as key -> list of values (comma lists split), updated by the scale's ``params``
    (e.g. a smaller grid at CPU scale), seeds replaced when given."""
    params = dict(((raw.get("hydra") or {}).get("sweeper") or {}).get("params") or {})
    params.update((spec or {}).get("params") or {})
    out = {str(k): [v.strip() for v in results._fmt_value(val).split(",") if v.strip()]
           for k, val in params.items()}
    if seeds:
        out["seed"] = [s.strip() for s in seeds.split(",") if s.strip()]
    return out


def jobs_of(params: dict[str, list[str]]) -> list[dict[str, str]]:
    """The cartesian product the basic sweeper runs, in its order (first key slowest)."""
    keys = list(params)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(params[k] for k in keys))]


def run_name(pattern: str, job: dict[str, str]) -> str:
    """Evaluate the run-name pattern for one job, as Hydra will (only the interpolations we use)."""
    name = pattern.replace("${hydra:runtime.choices.experiment}", job.get("experiment", ""))
    for key, value in job.items():
        name = name.replace("${" + key + "}", value)
    if "${" in name:
        raise SystemExit(f"run name pattern {pattern!r}: cannot evaluate {name!r}")
    return name


def job_status(run_dir: Path) -> str:
    """'completed', 'failed', 'partial' (has a checkpoint to resume from) or 'missing'."""
    m = run_dir / "metrics.json"
    if m.is_file():
        try:
            record = json.loads(m.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "partial"
        return record.get("status", "completed") if isinstance(record, dict) else "partial"
    return "partial" if (run_dir / "last.pt").is_file() else "missing"


def planned_signature(job: dict[str, str], spec: dict, custom: list[str]) -> tuple[str, ...]:
    """What a job computes, in the collector's terms (:attr:`zoneout.results.Run.signature`): the scale's
    overrides, the job's swept keys other than experiment and seed, and the extra overrides that change it."""
    words = [f"{k}={results._fmt_value(v)}" for k, v in (spec.get("overrides") or {}).items()]
    words += [f"{k}={v}" for k, v in job.items() if k not in ("experiment", "seed")] + list(custom)
    last = {}   # a key given twice (the scale's value, then an extra override) keeps its last value, as Hydra does
    for w in words:
        if not results._neutral(w):
            n = results.normalize(w)
            last[n.split("=", 1)[0]] = n
    return tuple(sorted(last.values()))


def settings_differ(run_dir: Path, want: tuple[str, ...]) -> list[str]:
    """For a finished run folder: the overrides by which its settings differ from ``want`` ([] = the same)."""
    run = results.load_run(run_dir)
    if run is None:
        return []
    have = set(run.signature)
    return sorted(set(want) ^ have)


def local_mirrors() -> list[str]:
    """Offline copies next to the checkout (../shared/data and its sub-folders), when present."""
    shared = ROOT.parent / "shared" / "data"
    if not shared.is_dir():
        return []
    return [str(shared)] + [str(p) for p in sorted(shared.iterdir()) if p.is_dir()]


def prepare_data(datasets: list[dict], data_dir: str | None, mirror: str | None,
                 local_file: str | None = None) -> None:
    """Download (mirror first), verify and prepare each corpus once, before the jobs start. ``local_file``: a
    ``data.local_file=`` passed through to the jobs, which then read that file instead of the download."""
    from zoneout import data as zdata

    mirrors = [m for m in (mirror or os.environ.get("ZONEOUT_MIRROR", "")).split(",") if m] + local_mirrors()
    for spec in datasets:
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = spec.pop("name")
        print(f"[reproduce] data: {name} {spec or ''} (mirrors: {', '.join(mirrors) or 'none'})", flush=True)
        if name in ("mnist", "fashion_mnist"):
            d = zdata.load_mnist(name, data_dir, download=True, mirror=mirrors or None,
                                 source=spec.get("mnist_source", "standard"), permute=spec.get("permute", False))
            print(f"[reproduce]   {d.label if hasattr(d, 'label') else name}: "
                  f"{len(d.train[1])}/{len(d.valid[1])}/{len(d.test[1])} examples", flush=True)
        else:
            local = local_file or spec.get("local_file")
            kw = {"local_file": local} if local else {"download": True, "mirror": mirrors or None}
            c = zdata.load_corpus(name, data_dir, prefix_bytes=spec.get("prefix_bytes"), **kw)
            print(f"[reproduce]   {c.describe() if hasattr(c, 'describe') else name}", flush=True)


def _mtime(path: Path):
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def plan_calls(pending: list[dict[str, str]], params: dict[str, list[str]], whole: bool) -> list[dict]:
    """Hydra calls (each a cartesian product, as the basic sweeper runs it) covering exactly ``pending``:
    the whole sweep in one call, else one call per combination of the non-seed keys (a row, a grid cell)
    with that combination's pending seeds."""
    if whole:
        return [params]
    calls: dict[tuple, dict] = {}
    for job in pending:
        key = tuple((k, v) for k, v in job.items() if k != "seed")
        call = calls.setdefault(key, {k: [v] for k, v in key})
        if "seed" in job:
            call.setdefault("seed", []).append(job["seed"])
    return [{k: call[k] for k in params if k in call} for call in calls.values()]


def shell_quote(word: str) -> str:
    """Quote for a POSIX shell, keeping Hydra's inner single quotes readable: "run_dir='a/\\${seed}'"."""
    if "'" in word:
        return '"' + "".join("\\" + ch if ch in '$"`\\' else ch for ch in word) + '"'
    return shlex.quote(word)


def build_command(table: str, scale: str, params: dict[str, list[str]], spec: dict, runs_root: str,
                  pattern: str, extra: list[str], folder: str | None = None) -> list[str]:
    # Hydra's submitit launcher pickles the task function; started as `python -m zoneout.train` that function
    # lives in __main__ and is pickled by value (which fails), so other launchers get an importing entry point.
    other_launcher = any(e.startswith("hydra/launcher=") and not e.endswith("=basic") for e in extra)
    entry = ["-c", "from zoneout.train import main; main()"] if other_launcher else ["-m", "zoneout.train"]
    cmd = [sys.executable, *entry, "-m"]
    cmd += [f"{k}={','.join(v)}" for k, v in params.items()]
    cmd += [f"{k}={results._fmt_value(v)}" for k, v in (spec.get("overrides") or {}).items()]
    base = f"{runs_root}/{folder or scale}"
    cmd += [f"++meta.scale={scale}",
            f"run_dir='{base}/{pattern}'",
            f"hydra.sweep.dir={base}", f"hydra.sweep.subdir='{pattern}'",
            f"logger.group={table}-{scale}",
            # wandb run name = table/row/seed (grid: table/cell/seed); ids stay unique per run folder
            f"logger.name='{pattern if 'choices.experiment' in pattern else table + '/' + pattern}'"]
    return cmd + extra


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", help="char_ptb, word_ptb, text8, pmnist, enwik8 or grid (configs/sweep/<table>.yaml)")
    p.add_argument("--scale", choices=("cpu", "paper"), default="cpu")
    p.add_argument("--seeds", help="comma list replacing the sweep file's seeds, e.g. 1,2,3")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time on this machine (default 1, one after another with all cores). N > 1 starts "
                        "N single-threaded processes at a time through Hydra's submitit launcher "
                        "(hydra/launcher=local_cpu); the committed CPU tables were made with --jobs 2 on 2 cores")
    p.add_argument("--dry-run", action="store_true", help="print the data step and the Hydra command; run nothing")
    p.add_argument("--runs-root", default="experiments/reproduce", help="run folders go to <root>/<scale>/...")
    p.add_argument("--data-dir", default=None, help="default: $ZONEOUT_DATA or data/")
    p.add_argument("--mirror", default=None, help="data mirror (http(s)://, file:// or a dir); also $ZONEOUT_MIRROR")
    p.add_argument("--no-data", action="store_true", help="skip the data preparation step")
    p.add_argument("--no-collect", action="store_true", help="do not regenerate results/ afterwards")
    p.add_argument("--force", action="store_true", help="re-run jobs whose run folder already finished")
    p.add_argument("--sweep-dir", default=str(ROOT / "configs" / "sweep"))
    p.add_argument("--results-dir", default="results")
    p.add_argument("--collect-from", default="experiments", help="run folders to collect (all tables)")
    p.add_argument("--readme", default="README.md", help="README whose results block is regenerated ('' = none)")
    args = p.parse_args(argv)

    raw = load_sweep_file(args.table, Path(args.sweep_dir))
    info = raw.get("sweep") or {}
    spec = scale_spec(raw, args.scale)
    if args.seeds is not None:
        seeds = [x.strip() for x in args.seeds.split(",")]
        if not seeds or not all(x.isdigit() for x in seeds):
            p.error(f"--seeds must be a comma list of non-negative integers (e.g. 1,2,3), got {args.seeds!r}")
    if args.jobs < 1:
        p.error(f"--jobs must be a positive integer (runs at a time), got {args.jobs}")
    env = None
    if args.jobs > 1:
        if not any(e.startswith("hydra/launcher=") for e in extra):
            extra = ["hydra/launcher=local_cpu", *extra]
        extra = [*extra, f"hydra.sweeper.max_batch_size={args.jobs}"]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    params = sweep_params(raw, args.seeds, spec)
    pattern = info.get("run_name", DEFAULT_RUN_NAME)
    # Extra overrides that change what the jobs compute (a quick smoke run, another learning rate) make the runs
    # something other than this scale: they get their own folders, and their records are not archived into
    # results/runs, where they would replace the scale's committed runs.
    custom = [e for e in extra if ("=" in e or e.startswith("~")) and not e.startswith("-") and not results._neutral(e)]
    folder = f"{args.scale}-custom" if custom else args.scale
    base = Path(args.runs_root) / folder
    if custom:
        print(f"[reproduce] the overrides {' '.join(custom)} change the {args.scale} scale's settings: the runs go to "
              f"{base}/ and are not archived into {Path(args.results_dir) / 'runs'} (tables list them as custom)",
              flush=True)

    jobs = jobs_of(params)
    rdir = {id(job): base / run_name(pattern, job) for job in jobs}
    # A diverged run is deterministic (same seed, same data): it is not re-run unless --force.
    finished = ("completed", "diverged")
    # A finished folder whose settings are not this plan's (the sweep file changed since, or it was made by hand)
    # is neither reused nor archived; train.py would refuse to resume it, so it is not launched either.
    stale = {}
    for j in jobs:
        if job_status(rdir[id(j)]) in finished:
            diff = settings_differ(rdir[id(j)], planned_signature(j, spec, custom))
            if diff:
                stale[id(j)] = diff
    todo = [j for j in jobs if id(j) not in stale and (args.force or job_status(rdir[id(j)]) not in finished)]
    launcher = next((e.split("=", 1)[1] for e in extra if e.startswith("hydra/launcher=")), "basic")
    if args.jobs > 1:
        how = f"{args.jobs} at a time, one thread each, through Hydra's {launcher} launcher"
    elif launcher != "basic":
        how = f"through Hydra's {launcher} launcher"
    else:
        how = "one after another, each with every core (--jobs N / JOBS=N: N at a time)"
    print(f"[reproduce] {args.table} at {args.scale} scale: {len(jobs)} jobs "
          f"({len(jobs) - len(todo) - len(stale)} already finished, {len(todo)} to run"
          + (f", {len(stale)} with other settings" if stale else "") + f"), run {how}", flush=True)
    print(f"[reproduce] the sweep file says: {spec.get('hardware', '?')}; expected {spec.get('time', '?')}", flush=True)
    for job in todo:
        print(f"[reproduce]   {job_status(rdir[id(job)]):9s} {rdir[id(job)]}", flush=True)
    for job in jobs:
        if id(job) in stale:
            print(f"[reproduce]   other settings: {rdir[id(job)]} finished with settings that differ from this "
                  f"plan ({', '.join(stale[id(job)])}); skipped and not archived -- delete the folder to run the "
                  f"job again, or pass --runs-root to run the plan elsewhere", file=sys.stderr, flush=True)

    datasets = spec.get("data", info.get("data", []))
    if args.dry_run:
        print(f"[reproduce] data: {datasets}")
    elif not args.no_data and todo:
        local = next((e.split("=", 1)[1] for e in extra if e.lstrip("+").startswith("data.local_file=")), None)
        from zoneout.data import DataError
        try:
            prepare_data(datasets, args.data_dir, args.mirror, local_file=local)
        except DataError as e:
            print(f"[reproduce] data error: {e}\n[reproduce] no job was started; fix the data (make help lists the "
                  f"data-* targets; MIRROR=<url> or LOCAL_FILE=<file> point at a copy), then run the same command "
                  f"again", file=sys.stderr)
            return 2

    attempted: set[int] = set()
    for round_ in range(len(jobs) + 1):
        pending = [j for j in todo if id(j) not in attempted]
        before = {id(j): _mtime(rdir[id(j)] / "metrics.json") for j in pending}
        if not pending:
            break
        for call_params in plan_calls(pending, params, whole=len(pending) == len(jobs)):
            cmd = build_command(args.table, args.scale, call_params, spec, args.runs_root, pattern, extra, folder)
            if args.data_dir:
                cmd.append(f"data.data_dir={args.data_dir}")
            print("[reproduce] " + ("OMP_NUM_THREADS=" + env["OMP_NUM_THREADS"] + " " if env else "") + "python " + " ".join(shell_quote(c) for c in cmd[1:]), flush=True)
            if args.dry_run:
                continue
            rc = subprocess.call(cmd, cwd=os.getcwd(), env=env)
            if rc != 0:
                print(f"[reproduce] the sweep exited with {rc}", file=sys.stderr, flush=True)
        if args.dry_run:
            break
        # Jobs that wrote a metrics.json (any status) were attempted; the rest were cut short by a job that
        # ended the sweep process: launch them again, one row at a time. Stop when a round makes no progress.
        progressed = {id(j) for j in pending if _mtime(rdir[id(j)] / "metrics.json") != before[id(j)]}
        if not progressed:
            break
        attempted |= progressed

    if args.dry_run:   # a plan only: nothing archived, collected or written, also when nothing is left to run
        return 0
    done = [rdir[id(j)] for j in jobs if id(j) not in stale and job_status(rdir[id(j)]) in finished]
    if not custom:
        archived = results.archive_runs(done, root=args.runs_root, archive=Path(args.results_dir) / "runs")
        print(f"[reproduce] archived the records of {len(archived)} finished run(s) under "
              f"{Path(args.results_dir) / 'runs'} (metrics, config, log; no checkpoints)", flush=True)
    if not args.no_collect:
        readme = args.readme if args.readme and Path(args.readme).is_file() else None
        try:
            written = results.write_results([Path(args.results_dir) / "runs", args.collect_from],
                                            out_dir=args.results_dir, sweep_dir=args.sweep_dir, readme=readme)
        except (ValueError, OSError) as e:
            print(f"[reproduce] the runs finished, but the tables could not be written: {e}", file=sys.stderr)
            return 2
        print(f"[reproduce] wrote {', '.join(str(w) for w in written)}", flush=True)
    missing = [rdir[id(j)] for j in todo if job_status(rdir[id(j)]) != "completed"] + \
        [rdir[id(j)] for j in jobs if id(j) in stale]
    if missing:
        print(f"[reproduce] {len(missing)} job(s) did not complete: " + ", ".join(map(str, missing)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
