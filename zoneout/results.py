"""Run folders -> tidy rows -> the paper's tables (Tables 1-2, Figure 3) and plots.

Each training run writes ``metrics.json`` (final numbers), ``metrics.jsonl`` (one line per epoch) and
``config.yaml`` (resolved config, with the row's ``meta`` block: paper numbers, tolerance) into its own
folder. Those files are the only source of every number here: :func:`collect` scans for them,
:func:`write_results` writes ``results/runs.csv``, one ``results/<table>.md`` per table, learning-curve
PNGs, the z_c x z_h heatmap of the grid sweep (paper Figure 3), and regenerates the README's results block.

Row order and table titles come from the sweep files (``configs/sweep/<table>.yaml``: the
``hydra.sweeper.params.experiment`` list is the table's row order, the ``sweep`` block the title and the
description of each scale). Output is deterministic: the same run folders give byte-identical files
(no timestamps except those recorded by the runs; PNG metadata fixed).

No Hydra import here: plain YAML/JSON in, files out.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

GENERATOR = "make results"  # the command named in every generated header
TABLE_ORDER = ["char_ptb", "word_ptb", "text8", "pmnist", "enwik8", "grid"]
SCALE_ORDER = ["paper", "cpu", "custom"]
DECIMALS = {"bpc": 3, "ppl": 1, "error": 3}
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"

# Overrides that do not change what a run computes (paths, logging, devices, seed): they are left out of
# the signature that decides which runs are averaged together, and out of the printed commands.
# data.local_file only says where the corpus bytes were read from (a run with data.prefix_bytes records the
# sha256 of the bytes it used, shown in the table's Data line).
NEUTRAL_KEYS = (
    "seed", "run_dir", "device", "experiment_name", "data.data_dir", "data.mirror", "data.local_file",
    "trainer.progress", "trainer.log_every_steps", "trainer.checkpoint_every_steps", "trainer.resume", "meta.scale",
    # the same computation by another route (GPU algorithm choice). Not model.backend: the fused and reference
    # paths draw their zoneout masks from different generators, so their training runs differ.
    "trainer.deterministic",
)
NEUTRAL_PREFIXES = ("hydra.", "hydra/", "logger.", "logger=", "+logger", "++logger", "meta.")

CSV_COLUMNS = [
    "table", "row", "experiment", "seed", "scale", "status", "metric", "value", "valid_value",
    "best_epoch", "epochs", "n_params", "train_seconds", "tokens_per_second", "hardware", "device",
    "torch_version", "git_sha", "zoneout_c", "zoneout_h", "overrides", "run_dir",
]


# ----------------------------------------------------------------------------------------------------
# reading run folders
# ----------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One run folder, flattened. ``value`` is the test metric, ``valid_value`` the validation metric."""

    table: str
    experiment: str
    row: str
    seed: int
    scale: str
    status: str
    metric: str
    value: float | None
    valid_value: float | None
    overrides: tuple[str, ...]
    run_dir: str
    meta: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # epochs, n_params, hardware, ... (as recorded)
    curve: list = field(default_factory=list)  # metrics.jsonl lines
    zoneout_c: float | None = None
    zoneout_h: float | None = None

    @property
    def signature(self) -> tuple[str, ...]:
        """The overrides that change the computation (all but seed, paths, logging), normalized, sorted."""
        return tuple(sorted(normalize(o) for o in self.overrides if not _neutral(o) and _key(o) != "experiment"))


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def normalize(override: str) -> str:
    """``key=value`` with the value in one spelling (Hydra re-spells ``false`` as ``False``, ``1e-3``...)."""
    key, _, value = override.partition("=")
    return f"{key.lstrip('+~')}={_canon(value)}"


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _canon(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    if isinstance(value, str) and _FLOAT.match(value.strip()):   # 1e-3 (a string to YAML 1.1) is 0.001
        value = float(value)
    return _fmt_value(value)


def _neutral(override: str) -> bool:
    key = _key(override)
    return key in NEUTRAL_KEYS or override.lstrip("+~").startswith(NEUTRAL_PREFIXES)


def _dig(d: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _overrides_of(metrics: dict, run_dir: Path) -> list[str]:
    """The command-line overrides a run was started with, as ``key=value`` strings.

    Prefers Hydra's own record (``.hydra/overrides.yaml``), then ``metrics.json``'s ``overrides``,
    then the ``key=value`` words of its ``command``.
    """
    hydra_file = run_dir / ".hydra" / "overrides.yaml"
    if hydra_file.is_file():
        loaded = yaml.safe_load(hydra_file.read_text()) or []
        return [str(o) for o in loaded]
    recorded = metrics.get("overrides")
    if isinstance(recorded, dict):
        return [f"{k}={_fmt_value(v)}" for k, v in recorded.items()]
    if isinstance(recorded, (list, tuple)):
        return [str(o) for o in recorded]
    command = metrics.get("command") or ""
    words = command.split() if isinstance(command, str) else list(command)
    return [w for w in words if "=" in w and not w.startswith("-")]


def _fmt_value(v: Any) -> str:
    """One spelling per value: true/false/null, floats by repr (0.5, 1e-05), lists as a,b."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt_value(x) for x in v)
    return str(v)


def _float(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def load_run(run_dir: str | Path, base: str | Path | None = None) -> Run | None:
    """Read one run folder. Returns None when it has no ``metrics.json`` or belongs to no table (e.g. a run of
    the default config without an experiment row, or one started with ``++meta.table=false``)."""
    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        return None
    try:
        metrics = json.loads(metrics_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{metrics_file}: not a valid metrics.json ({e}); delete or repair that run folder") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{metrics_file}: not a metrics.json (a JSON object expected, found "
                         f"{type(metrics).__name__}); delete or repair that run folder")
    config = {}
    for name in ("config.yaml", ".hydra/config.yaml"):
        if (run_dir / name).is_file():
            config = yaml.safe_load((run_dir / name).read_text()) or {}
            break
    meta = dict(config.get("meta") or {})
    meta.update(metrics.get("meta") or {})
    overrides = _overrides_of(metrics, run_dir)
    experiment = (metrics.get("experiment") or config.get("experiment_name")
                  or next((o.split("=", 1)[1] for o in overrides if _key(o) == "experiment"), None))
    # a run belongs to a table through its row's meta (or an experiment named <table>/<row>); others are skipped,
    # as are runs that opt out with meta.table=false (make demo's runs: a demo is not a result)
    if metrics.get("table") is False or meta.get("table") is False:
        return None
    table = metrics.get("table") or meta.get("table") or (experiment.split("/")[0] if "/" in str(experiment) else None)
    if not table or not experiment:
        return None
    metric = (metrics.get("metric") or str(meta.get("metric", "")).split("_")[-1]
              or _dig(config, "data.metric") or "bpc")
    curve = []
    jsonl = run_dir / "metrics.jsonl"
    if jsonl.is_file():
        curve = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    rel = os.path.relpath(run_dir, base) if base is not None else str(run_dir)
    info = {k: metrics.get(k) for k in ("best_epoch", "epochs", "n_params", "train_seconds",
                                        "tokens_per_second", "hardware", "device", "torch_version",
                                        "git_sha", "command", "dataset", "data_variant", "data_source",
                                        "data_prefix_bytes", "data_prefix_sha256")}
    zc = _dig(config, "model.zoneout_c", metrics.get("zoneout_c"))
    zh = _dig(config, "model.zoneout_h", metrics.get("zoneout_h"))
    return Run(
        table=str(table), experiment=str(experiment), row=str(metrics.get("row") or meta.get("row") or experiment),
        seed=int(metrics.get("seed", config.get("seed", 0)) or 0),
        scale=str(metrics.get("scale") or meta.get("scale") or "paper"),
        status=str(metrics.get("status") or "completed"), metric=str(metric),
        value=_float(metrics.get(f"test_{metric}")), valid_value=_float(metrics.get(f"valid_{metric}")),
        overrides=tuple(overrides), run_dir=Path(rel).as_posix(), meta=meta, info=info, curve=curve,
        zoneout_c=_float(zc), zoneout_h=_float(zh),
    )


def find_run_dirs(roots: Iterable[str | Path]) -> list[Path]:
    """Every folder under ``roots`` that holds a ``metrics.json`` (sorted, so the scan is stable)."""
    found = set()
    for root in roots:
        root = Path(root)
        if (root / "metrics.json").is_file():
            found.add(root)
        if root.is_dir():
            found.update(p.parent for p in root.rglob("metrics.json"))
    return sorted(found)


RUN_RECORD = ("metrics.json", "metrics.jsonl", "config.yaml", "train.log", ".hydra/overrides.yaml")
ARCHIVE = Path("results") / "runs"


def archive_runs(run_dirs: Iterable[str | Path], root: str | Path, archive: str | Path = ARCHIVE) -> list[Path]:
    """Copy the small record of each finished run (``RUN_RECORD``: no checkpoints) from ``root/<rel>`` to
    ``archive/<rel>``, atomically per file, so committed tables can be regenerated from a clean checkout.
    Returns the archived folders."""
    out = []
    for d in run_dirs:
        d = Path(d)
        if not (d / "metrics.json").is_file():
            continue
        dest = Path(archive) / d.relative_to(root)
        for name in RUN_RECORD:
            src = d / name
            if src.is_file():
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, target)
        out.append(dest)
    return out


def collect(roots: Iterable[str | Path] = (ARCHIVE, "experiments"), base: str | Path | None = None) -> list[Run]:
    """Load every run folder under ``roots``; ``run_dir`` is reported relative to ``base``. A run found twice
    (its archived record in results/runs and the live folder in experiments/) counts once, from the first root."""
    runs, seen = [], set()
    for d in (d for root in roots for d in find_run_dirs([root])):
        key = (d / "metrics.json").read_bytes()
        if key in seen:
            continue
        seen.add(key)
        r = load_run(d, base=base)
        if r is not None:
            runs.append(r)
    return runs


# ----------------------------------------------------------------------------------------------------
# sweep files: table titles, row order, scale descriptions
# ----------------------------------------------------------------------------------------------------
@dataclass
class Sweep:
    name: str
    title: str
    rows: list[str]
    best: str = "zoneout"  # substring of the experiment name of the rows the paper says win
    worst: str | None = None  # experiment the paper says is worst
    ordering_rows: list[str] | None = None  # rows the ordering verdict compares (default: all)
    scales: dict = field(default_factory=dict)  # scale -> {"description", "overrides", "hardware", ...}
    params: dict = field(default_factory=dict)  # hydra.sweeper.params as written


def _sig_dict(signature: Iterable[str]) -> dict[str, str]:
    return dict(o.split("=", 1) if "=" in o else (o, "") for o in signature)


def effective_scale(run: Run, sweep: Sweep | None) -> str:
    """The sweep scale whose overrides this run used exactly ("custom" if none; recorded scale if no sweep).

    A run belongs to scale S when it has every override of S's ``overrides`` and nothing else that changes
    the computation, apart from the sweep's own swept keys (e.g. the grid's zoneout rates) at swept values.
    """
    if sweep is None or not sweep.scales:
        return run.scale
    sig = _sig_dict(run.signature)
    allowed: dict[str, set] = {}
    swept = [sweep.params] + [(s or {}).get("params") or {} for s in sweep.scales.values()]
    for params in swept:
        for key, values in params.items():
            k = key.lstrip("+~")
            if k in ("experiment", "seed") or _neutral(f"{k}=x"):
                continue
            allowed.setdefault(k, set()).update(_canon(v.strip()) for v in _fmt_value(values).split(","))
    order = [run.scale] + [s for s in sweep.scales if s != run.scale]
    for scale in order:
        if scale not in sweep.scales:
            continue
        required = {o.split("=", 1)[0]: o.split("=", 1)[1]
                    for o in (normalize(f"{k}={_fmt_value(v)}")
                              for k, v in ((sweep.scales[scale] or {}).get("overrides") or {}).items())
                    if not _neutral(o)}
        if all(sig.get(k) == v for k, v in required.items()) and all(
                k in required or v in allowed.get(k, ()) for k, v in sig.items()):
            return scale
    return "custom"


def load_sweep(path: str | Path) -> Sweep:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    info = raw.get("sweep") or {}
    params = {str(k): str(v) for k, v in (_dig(raw, "hydra.sweeper.params") or {}).items()}
    name = info.get("table") or Path(path).stem
    rows = [r.strip() for r in params.get("experiment", "").split(",") if r.strip()]
    return Sweep(name=name, title=info.get("title", name), rows=rows, best=info.get("best", "zoneout"),
                 worst=info.get("worst"), ordering_rows=info.get("ordering_rows"),
                 scales=info.get("scales") or {}, params=params)


def load_sweeps(sweep_dir: str | Path = "configs/sweep") -> dict[str, Sweep]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return {}
    out = {}
    for p in sorted(sweep_dir.glob("*.yaml")):
        s = load_sweep(p)
        out[s.name] = s
    return out


def _table_rank(name: str) -> tuple:
    return (TABLE_ORDER.index(name), "") if name in TABLE_ORDER else (len(TABLE_ORDER), name)


def _scale_rank(scale: str) -> tuple:
    return (SCALE_ORDER.index(scale), "") if scale in SCALE_ORDER else (len(SCALE_ORDER), scale)


# ----------------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------------
@dataclass
class Group:
    """All seeds of one row at one scale with the same overrides."""

    table: str
    experiment: str
    row: str
    scale: str
    signature: tuple[str, ...]
    metric: str
    meta: dict
    runs: list[Run]  # completed, one per seed (latest run folder wins)
    other: list[Run]  # failed / diverged / superseded

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def stats(self, attr: str = "value") -> tuple[float | None, float | None, int]:
        xs = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        if not xs:
            return None, None, 0
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
        return mean, sd, len(xs)


def group_runs(runs: list[Run], sweeps: dict[str, Sweep] | None = None) -> dict[str, list[Group]]:
    """table -> groups in table order (sweep row order, then scale paper/cpu, then overrides)."""
    sweeps = sweeps or {}
    buckets: dict[tuple, list[Run]] = {}
    for r in runs:
        r.scale = effective_scale(r, sweeps.get(r.table))
        buckets.setdefault((r.table, r.experiment, r.scale, r.signature), []).append(r)
    tables: dict[str, list[Group]] = {}
    for (table, experiment, scale, sig), members in buckets.items():
        members.sort(key=lambda r: (r.seed, r.run_dir))
        by_seed: dict[int, Run] = {}
        other = []
        for r in members:  # run_dir order: the latest (timestamped) folder of a seed wins
            if r.status == "completed" and r.value is not None:
                if r.seed in by_seed:
                    other.append(by_seed[r.seed])
                by_seed[r.seed] = r
            else:
                other.append(r)
        ref = (list(by_seed.values()) or members)[-1]
        tables.setdefault(table, []).append(Group(
            table=table, experiment=experiment, row=ref.row, scale=scale, signature=sig, metric=ref.metric,
            meta=ref.meta, runs=[by_seed[s] for s in sorted(by_seed)], other=other))

    def rank(g: Group):
        rows = sweeps[g.table].rows if g.table in sweeps else []
        pos = rows.index(g.experiment) if g.experiment in rows else len(rows)
        return (pos, g.experiment, _scale_rank(g.scale), g.signature)

    return {t: sorted(gs, key=rank) for t, gs in sorted(tables.items(), key=lambda kv: _table_rank(kv[0]))}


# ----------------------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------------------
def fmt(x: float | None, metric: str, signed: bool = False) -> str:
    if x is None:
        return "—"
    d = DECIMALS.get(metric, 3)
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


# The paper's own numbers keep the digits it printed (1.27 stays 1.27, not 1.270), but never fewer decimals than
# it uses for that metric, so that 87.0 is not shown as 87.
PAPER_MIN_DECIMALS = {"bpc": 2, "ppl": 1, "error": 3}


def _paper(x: Any, metric: str = "") -> str:
    f = _float(x)
    if f is None:
        return "—"
    shown = f"{f:g}"
    d = max(len(shown.split(".")[1]) if "." in shown else 0, PAPER_MIN_DECIMALS.get(metric, 0))
    return f"{f:.{d}f}"


def _ours(g: Group) -> str:
    vm, vs, _ = g.stats("valid_value")
    tm, ts, n = g.stats("value")
    if n == 0:
        return "no completed run"

    def one(m, s):
        return fmt(m, g.metric) + (f" ± {fmt(s, g.metric)}" if s is not None else "")

    return f"{one(vm, vs)} / {one(tm, ts)} (n={n})"


def _delta(g: Group) -> tuple[float | None, str]:
    tm, _, n = g.stats("value")
    ref, ours = _float(g.meta.get("paper_test")), tm
    if ref is None:  # rows the paper reports on validation only
        ref, ours = _float(g.meta.get("paper_valid")), g.stats("valid_value")[0]
    if ref is None or ours is None:
        return None, "—"
    delta = ours - ref
    tol = _float(g.meta.get("tolerance"))
    return delta, "—" if tol is None else ("yes" if abs(delta) <= tol + 1e-12 else "no")


def common_overrides(groups: list[Group]) -> tuple[str, ...]:
    """Overrides shared by every group of one scale (printed once above the table)."""
    if not groups:
        return ()
    common = set(groups[0].signature)
    for g in groups[1:]:
        common &= set(g.signature)
    return tuple(o for o in groups[0].signature if o in common)


def command_of(g: Group, common: tuple[str, ...]) -> str:
    extra = [o for o in g.signature if o not in common]
    seeds = ",".join(str(s) for s in g.seeds) or "1"
    return "`" + " ".join(["experiment=" + g.experiment, *extra, f"seed={seeds}"]) + "`"


def ordering_line(groups: list[Group], sweep: Sweep | None) -> str:
    """Did the paper's ordering (a zoneout row best, the unregularized row worst) hold here?"""
    done = [g for g in groups if g.stats()[2] > 0
            and (sweep is None or not sweep.ordering_rows or g.experiment in sweep.ordering_rows)]
    if len(done) < 2:
        return "Paper's ordering (zoneout best, unregularized worst): not enough finished rows to tell."
    best_key = sweep.best if sweep else "zoneout"
    worst_key = sweep.worst if sweep and sweep.worst else None
    best = min(done, key=lambda g: g.stats()[0])
    worst = max(done, key=lambda g: g.stats()[0])
    best_ok = best_key in best.experiment
    worst_ok = worst.experiment == worst_key if worst_key else "unregularized" in worst.experiment
    verdict = "held" if best_ok and worst_ok else (
        "held in part" if best_ok or worst_ok else "did not hold")
    among = ""
    if sweep is not None and sweep.ordering_rows and len(done) < len([g for g in groups if g.stats()[2] > 0]):
        among = f" among the paper's own rows ({', '.join(g.row for g in done)}; the other rows are for reference)"
    line = (f"Paper's ordering (a {best_key} row best, the unregularized row worst) **{verdict}** "
            f"on test {best.metric.upper()}{among}: best here {best.row} ({fmt(best.stats()[0], best.metric)}), "
            f"worst here {worst.row} ({fmt(worst.stats()[0], worst.metric)}).")
    # an ordering inside the seeds' own scatter says nothing: say so
    sds = [g.stats()[1] for g in done if g.stats()[1] is not None]
    spread = worst.stats()[0] - best.stats()[0]
    if sds and spread <= max(sds):
        line += (f" All these rows lie within {fmt(spread, best.metric)} of each other, no more than the largest "
                 f"seed-to-seed sd ({fmt(max(sds), best.metric)}): the ordering is within noise at this scale.")
    return line


def _provenance(groups: list[Group]) -> list[str]:
    """Hardware and mean training time per run, as the runs recorded them."""
    runs = [r for g in groups for r in g.runs]
    hw = sorted({str(r.info.get("hardware")) for r in runs if r.info.get("hardware")})
    secs = [float(r.info["train_seconds"]) for r in runs if _float(r.info.get("train_seconds")) is not None]
    data = sorted({str(r.info["dataset"]) + "".join(
        f" ({r.info[k]})" for k in ("data_variant", "data_source") if r.info.get(k) not in (None, "standard"))
        + (f", its first {int(r.info['data_prefix_bytes']):,} bytes (sha256 {str(r.info['data_prefix_sha256'])[:16]}...)"
           if r.info.get("data_prefix_bytes") and r.info.get("data_prefix_sha256") else "")
        for r in runs if r.info.get("dataset")})
    out = []
    if data:
        out.append(f"Data: {'; '.join(data)}.")
    if hw:
        out.append(f"Hardware: {'; '.join(hw)}.")
    if secs:
        mean = sum(secs) / len(secs)
        out.append(f"Training time per run (mean of {len(secs)}): {mean / 60:.1f} min "
                   f"({sum(secs) / 60:.1f} min in all).")
    return out


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def table_markdown(table: str, groups: list[Group], sweep: Sweep | None, plots: dict[str, str]) -> str:
    """results/<table>.md: one section per scale, rows in table order."""
    title = sweep.title if sweep else table
    out = [f"# {title}", "",
           f"<!-- generated by `{GENERATOR}` (zoneout/results.py) from the runs' metrics.json; do not edit -->",
           ""]
    metric = groups[0].metric if groups else "bpc"
    out += [f"Metric: {metric.upper()} (lower is better). Ours: mean ± sample sd over seeds, valid / test. "
            f"Δ: ours − paper (test; valid where the paper gives only valid). Tolerance from each row's "
            f"`meta.tolerance`.", ""]
    for scale in sorted({g.scale for g in groups}, key=_scale_rank):
        gs = [g for g in groups if g.scale == scale]
        desc = (sweep.scales.get(scale, {}) if sweep else {}).get("description")
        out.append(f"## {scale.upper()} scale" if scale in SCALE_ORDER else f"## scale: {scale}")
        out.append("")
        if scale == "cpu":
            out.append("**CPU scale — scaled down from the paper** (smaller hidden size, a prefix of the "
                       "training set, few epochs of bounded steps), so the numbers are not comparable to "
                       "the paper's; Δ and tolerance are shown only for reference.")
            out.append("")
        if desc:
            out += [str(desc).strip(), ""]
        if scale == "custom":
            out.append("Runs whose overrides match no scale of the sweep file (ad-hoc runs), listed for "
                       "completeness; each command carries all of its overrides.")
            common = ()
        else:
            common = common_overrides(gs)
            reproduce = f"python scripts/reproduce.py {table} --scale {scale}"
            out.append(f"Reproduce: `{reproduce}`. Each row: `python -m zoneout.train` + the row's command"
                       + (f" + `{' '.join(common)}`" if common else "") + ".")
        out += _provenance(gs)
        out.append("")
        out.append("| Row | Paper (valid/test) | Ours mean ± sd (n seeds) | Δ | within tolerance | scale | command |")
        out.append("|---|---|---|---|---|---|---|")
        for g in gs:
            delta, within = _delta(g)
            paper = f"{_paper(g.meta.get('paper_valid'), g.metric)} / {_paper(g.meta.get('paper_test'), g.metric)}"
            out.append("| " + " | ".join([
                _md_escape(g.row), paper, _ours(g), fmt(delta, g.metric, signed=True), within, g.scale,
                _md_escape(command_of(g, common))]) + " |")
        if scale != "custom":
            out += ["", ordering_line(gs, sweep)]
        failed = [r for g in gs for r in g.other if r.status != "completed"]
        if failed:
            out.append("")
            out.append("Not counted: " + ", ".join(
                f"{r.experiment} seed {r.seed} ({r.status})" for r in failed) + ".")
        if scale in plots:
            out += ["", f"![learning curves, {scale} scale]({plots[scale]})"]
        out.append("")
    out.append("All runs: [runs.csv](runs.csv).")
    return "\n".join(out) + "\n"


def grid_markdown(groups: list[Group], sweep: Sweep | None, plots: dict[str, str]) -> str:
    """results/grid.md: valid metric as a z_c (rows) x z_h (columns) matrix, per scale (paper Figure 3)."""
    title = sweep.title if sweep else "grid"
    out = [f"# {title}", "",
           f"<!-- generated by `{GENERATOR}` (zoneout/results.py) from the runs' metrics.json; do not edit -->",
           ""]
    for scale in sorted({g.scale for g in groups}, key=_scale_rank):
        cells = _grid_cells([g for g in groups if g.scale == scale])
        metric = groups[0].metric
        zcs = sorted({c for c, _ in cells})
        zhs = sorted({h for _, h in cells})
        out += [f"## {scale.upper()} scale", ""]
        if scale == "cpu":
            out += ["**CPU scale — scaled down from the paper** (smaller hidden size, a prefix of the "
                    "training set, few epochs of bounded steps); compare cells with each other, not with "
                    "the paper.", ""]
        desc = (sweep.scales.get(scale, {}) if sweep else {}).get("description")
        if desc:
            out += [str(desc).strip(), ""]
        out += [f"Reproduce: `python scripts/reproduce.py grid --scale {scale}`.",
                *_provenance([g for g in groups if g.scale == scale]), "",
                f"Validation {metric.upper()}, mean over seeds (n). Rows z_c, columns z_h.", "",
                "| z_c \\ z_h | " + " | ".join(f"{h:g}" for h in zhs) + " |",
                "|---" * (len(zhs) + 1) + "|"]
        for c in zcs:
            vals = []
            for h in zhs:
                m = cells.get((c, h))
                vals.append("—" if m is None else f"{fmt(m[0], metric)} ({m[1]})")
            out.append(f"| {c:g} | " + " | ".join(vals) + " |")
        if cells:
            (bc, bh), (bm, _) = min(cells.items(), key=lambda kv: (kv[1][0], kv[0]))
            out += ["", f"Best cell: z_c = {bc:g}, z_h = {bh:g} ({fmt(bm, metric)}); the paper's char-PTB "
                        f"choice is z_c = 0.5, z_h = 0.05."]
        if scale in plots:
            out += ["", f"![z_c x z_h heatmap, {scale} scale]({plots[scale]})"]
        out.append("")
    out.append("All runs: [runs.csv](runs.csv).")
    return "\n".join(out) + "\n"


def _grid_cells(groups: list[Group]) -> dict[tuple[float, float], tuple[float, int]]:
    """(z_c, z_h) -> (mean valid metric, n) over every completed run of those groups."""
    acc: dict[tuple[float, float], list[float]] = {}
    for g in groups:
        for r in g.runs:
            if r.zoneout_c is None or r.zoneout_h is None or r.valid_value is None:
                continue
            acc.setdefault((r.zoneout_c, r.zoneout_h), []).append(r.valid_value)
    return {k: (sum(v) / len(v), len(v)) for k, v in acc.items()}


def runs_csv(groups_by_table: dict[str, list[Group]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for table, groups in groups_by_table.items():
        for g in groups:
            for r in sorted(g.runs + g.other, key=lambda r: (r.seed, r.run_dir)):
                i = r.info
                w.writerow([
                    r.table, r.row, r.experiment, r.seed, r.scale, r.status, r.metric,
                    "" if r.value is None else repr(r.value), "" if r.valid_value is None else repr(r.valid_value),
                    _csv(i.get("best_epoch")), _csv(i.get("epochs")), _csv(i.get("n_params")),
                    _csv(i.get("train_seconds")), _csv(i.get("tokens_per_second")), _csv(i.get("hardware")),
                    _csv(i.get("device")), _csv(i.get("torch_version")), _csv(i.get("git_sha")),
                    "" if r.zoneout_c is None else f"{r.zoneout_c:g}",
                    "" if r.zoneout_h is None else f"{r.zoneout_h:g}",
                    " ".join(r.signature), r.run_dir])
    return buf.getvalue()


def _csv_table(line: str) -> str:
    """The table column of one runs.csv line."""
    return next(csv.reader([line]))[0]


def _csv(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return repr(x)
    return str(x)


# ----------------------------------------------------------------------------------------------------
# plots (matplotlib Agg; fixed metadata so the bytes depend only on the runs)
# ----------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcdefaults()
    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    os.replace(tmp, path)


def _mean_curve(runs: list[Run], key: str) -> tuple[list[int], list[float]]:
    per_epoch: dict[int, list[float]] = {}
    for r in runs:
        for line in r.curve:
            v = _float(line.get(key))
            if v is not None and "epoch" in line:
                per_epoch.setdefault(int(line["epoch"]), []).append(v)
    n = len(runs)
    epochs = sorted(e for e, v in per_epoch.items() if len(v) == n)  # epochs every seed reached
    return epochs, [sum(per_epoch[e]) / n for e in epochs]


def plot_curves(groups: list[Group], path: Path, title: str) -> bool:
    """Train and valid metric per epoch, one line per row (mean over seeds). False if nothing to plot."""
    groups = [g for g in groups if g.runs and any(r.curve for r in g.runs)]
    if not groups:
        return False
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    metric = groups[0].metric
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, split in zip(axes, ("train", "valid")):
        for g in groups:
            label = g.row + (f" [{' '.join(g.signature)}]" if len(groups) > len({x.experiment for x in groups})
                             and g.signature else "")
            ep, ys = _mean_curve(g.runs, f"{split}_{metric}")
            if ep:
                ax.plot(ep, ys, marker="o", markersize=3, label=f"{label} (n={len(g.runs)})")
        ax.set_title(f"{split} {metric.upper()}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric.upper())
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def plot_heatmap(groups: list[Group], path: Path, title: str) -> bool:
    cells = _grid_cells(groups)
    if not cells:
        return False
    plt = _plt()
    metric = groups[0].metric
    zcs = sorted({c for c, _ in cells})
    zhs = sorted({h for _, h in cells})
    grid = [[cells.get((c, h), (float("nan"), 0))[0] for h in zhs] for c in zcs]
    fig, ax = plt.subplots(figsize=(1.2 * len(zhs) + 2.5, 0.9 * len(zcs) + 1.8))
    im = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(zhs)), [f"{h:g}" for h in zhs])
    ax.set_yticks(range(len(zcs)), [f"{c:g}" for c in zcs])
    ax.set_xlabel("z_h (hidden-state zoneout)")
    ax.set_ylabel("z_c (cell zoneout)")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                dark = im.norm(v) > 0.5  # viridis_r: high values are dark cells
                ax.text(j, i, fmt(v, metric), ha="center", va="center", fontsize=8, color="w" if dark else "k")
    fig.colorbar(im, ax=ax, label=f"valid {metric.upper()}")
    ax.set_title(textwrap.fill(title, 48, break_on_hyphens=False), fontsize=10)  # the figure is narrow: wrap, don't clip
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------------
# README block
# ----------------------------------------------------------------------------------------------------
def readme_block(groups_by_table: dict[str, list[Group]], sweeps: dict[str, Sweep], results_rel: str) -> str:
    """Markdown put between the README markers: each table's rows, with its scale said plainly."""
    if not groups_by_table:
        return f"(generated by `{GENERATOR}`; no runs collected yet)"
    out = [f"<!-- generated by `{GENERATOR}` from results/; do not edit between the markers -->", ""]
    for table, groups in groups_by_table.items():
        sweep = sweeps.get(table)
        groups = [g for g in groups if g.scale != "custom"]
        if not groups:
            continue
        scales = sorted({g.scale for g in groups}, key=_scale_rank)
        said = ", ".join("paper scale" if s == "paper" else
                         "CPU scale (scaled down: smaller model, training prefix, few epochs)" if s == "cpu"
                         else s for s in scales)
        out += [f"**{sweep.title if sweep else table}** — {said}; details, commands and plots in "
                f"[{results_rel}/{table}.md]({results_rel}/{table}.md).", ""]
        if table == "grid":
            for s in scales:
                cells = _grid_cells([g for g in groups if g.scale == s])
                if cells:
                    (bc, bh), (bm, n) = min(cells.items(), key=lambda kv: (kv[1][0], kv[0]))
                    out += [f"- {s} scale: best cell z_c = {bc:g}, z_h = {bh:g}, valid "
                            f"{groups[0].metric.upper()} {fmt(bm, groups[0].metric)} ({len(cells)} cells).", ""]
            continue
        for s in scales:
            gs = [g for g in groups if g.scale == s]
            out += [f"| Row ({s} scale) | Paper (valid/test) | Ours valid / test (n seeds) | Δ test |",
                    "|---|---|---|---|"]
            for g in gs:
                delta, _ = _delta(g)
                out.append(f"| {_md_escape(g.row)} | {_paper(g.meta.get('paper_valid'), g.metric)} / "
                           f"{_paper(g.meta.get('paper_test'), g.metric)} | {_ours(g)} | {fmt(delta, g.metric, True)} |")
            out += ["", ordering_line(gs, sweep), ""]
    return "\n".join(out).rstrip() + "\n"


def update_readme(readme: str | Path, block: str) -> bool:
    """Replace the text between the results markers. Returns True if the file changed."""
    readme = Path(readme)
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block to regenerate")
    new = pattern.sub(lambda _: f"{README_START}\n{block.rstrip()}\n{README_END}", text, count=1)
    if new != text:
        _write(readme, new)
    return new != text


# ----------------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(runs_roots: Iterable[str | Path] = (ARCHIVE, "experiments"), out_dir: str | Path = "results",
                  sweep_dir: str | Path = "configs/sweep", readme: str | Path | None = "README.md",
                  base: str | Path | None = ".", plots: bool = True, tables: Iterable[str] | None = None,
                  keep_other_tables: bool = False) -> list[Path]:
    """Collect runs and (re)write runs.csv, <table>.md, plots and the README block. Returns written files.

    ``tables`` limits what is rewritten to those tables: their <table>.md and plots, their lines of runs.csv
    (the other tables' lines are kept as they are); the README block, which shows every table, is then left alone.
    ``keep_other_tables`` (a collection of some run folders only): runs.csv keeps the lines of the tables this
    collection has no runs of. ``plots=False`` draws nothing but keeps the links to plots that exist. No runs at
    all: placeholders. Runs of which none belongs to a table (to be written), or a README without the results
    markers: ValueError, nothing written.
    """
    if readme is not None and Path(readme).is_file() and tables is None:
        text = Path(readme).read_text()
        if README_START not in text or README_END not in text:
            raise ValueError(f"{readme} has no {README_START} ... {README_END} block to regenerate")
    out_dir = Path(out_dir)
    sweeps = load_sweeps(sweep_dir)
    runs_roots = list(runs_roots)
    runs = collect(runs_roots, base=base)
    grouped = group_runs(runs, sweeps)
    if tables is not None:
        grouped = {t: g for t, g in grouped.items() if t in set(tables)}
    if not grouped and (tables is not None or find_run_dirs([r for r in runs_roots if Path(r).exists()])):
        raise ValueError("none of the runs found belongs to " + (f"the tables {', '.join(tables)}" if tables is not None
                         else "a table (a row file's meta.table)") + "; nothing was written")
    written = []
    csv_path = out_dir / "runs.csv"
    text = runs_csv(grouped)
    rewritten = set(tables) if tables is not None else set(grouped) if keep_other_tables else None
    if rewritten is not None and csv_path.is_file():   # keep the other tables' lines
        kept = [line for line in csv_path.read_text().splitlines()[1:] if line and _csv_table(line) not in rewritten]
        lines = text.splitlines()
        # table order (stable sort: within a table, the order runs_csv wrote)
        text = "\n".join([lines[0]] + sorted(kept + lines[1:], key=lambda ln: _table_rank(_csv_table(ln)))) + "\n"
    _write(csv_path, text)
    written.append(csv_path)
    for table, groups in grouped.items():
        if tables is not None and table not in set(tables):
            continue
        sweep = sweeps.get(table)
        title = sweep.title if sweep else table
        plot_links = {}
        for scale in sorted({g.scale for g in groups}, key=_scale_rank):
            gs = [g for g in groups if g.scale == scale]
            name = f"{table}_{scale}_heatmap.png" if table == "grid" else f"{table}_{scale}_curves.png"
            path = out_dir / "plots" / name
            made = plots and (plot_heatmap(gs, path, f"{title} ({scale} scale)") if table == "grid"
                              else plot_curves(gs, path, f"{title} ({scale} scale)"))
            if made or (not plots and path.is_file()):   # --no-plots keeps the link to the plot already there
                plot_links[scale] = f"plots/{name}"
                if made:
                    written.append(path)
        md = grid_markdown(groups, sweep, plot_links) if table == "grid" else \
            table_markdown(table, groups, sweep, plot_links)
        md_path = out_dir / f"{table}.md"
        _write(md_path, md)
        written.append(md_path)
    if readme is not None and Path(readme).is_file() and tables is None:   # the block shows every table
        rel = os.path.relpath(out_dir, Path(readme).parent)
        update_readme(readme, readme_block(grouped, sweeps, Path(rel).as_posix()))
        written.append(Path(readme))
    return written
