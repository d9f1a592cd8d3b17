"""Result tables from run folders: golden markdown/CSV on fixture runs, byte-identical regeneration, scale
assignment, ordering verdicts, README block, and scripts/reproduce.py's plan (dry runs, no training).

Fixtures: tests/fixtures/runs/experiments (run folders in zoneout.train's format), tests/fixtures/runs/sweep
(small sweep files). Goldens: tests/fixtures/runs/golden; regenerate after an intended change with
``ZONEOUT_UPDATE_GOLDEN=1 python -m pytest tests/test_results.py`` and review the diff.
"""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from zoneout import results

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "runs"
GOLDEN = FIX / "golden"
README_TEMPLATE = "# project\n\n## Results\n\n<!-- results:start -->\nstale\n<!-- results:end -->\n\n## Layout\n"

sys.path.insert(0, str(ROOT / "scripts"))
import reproduce  # noqa: E402


def _generate(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(README_TEMPLATE)
    results.write_results([FIX / "experiments"], out_dir=out / "results", sweep_dir=FIX / "sweep",
                          readme=out / "README.md", base=FIX)
    return out


def test_golden_tables_csv_and_readme(tmp_path):
    out = _generate(tmp_path)
    pairs = {"runs.csv": out / "results/runs.csv", "char_ptb.md": out / "results/char_ptb.md",
             "grid.md": out / "results/grid.md", "README.md": out / "README.md"}
    if os.environ.get("ZONEOUT_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        for name, path in pairs.items():
            shutil.copyfile(path, GOLDEN / name)
    for name, path in pairs.items():
        assert path.read_text() == (GOLDEN / name).read_text(), f"{name} differs from {GOLDEN / name}"
    assert sorted(p.name for p in (out / "results/plots").iterdir()) == [
        "char_ptb_cpu_curves.png", "char_ptb_custom_curves.png", "char_ptb_paper_curves.png",
        "grid_cpu_heatmap.png"]


def test_regeneration_is_byte_identical(tmp_path):
    a, b = _generate(tmp_path / "a"), _generate(tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 8
    match, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    # and regenerating in place changes nothing
    before = {f: (a / f).read_bytes() for f in files}
    results.write_results([FIX / "experiments"], out_dir=a / "results", sweep_dir=FIX / "sweep",
                          readme=a / "README.md", base=FIX)
    assert {f: (a / f).read_bytes() for f in files} == before
    png = (a / "results/plots/char_ptb_cpu_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and b"Software" not in png and b"matplotlib" not in png


def _runs():
    return results.group_runs(results.collect([FIX / "experiments"], base=FIX), results.load_sweeps(FIX / "sweep"))


def test_scales_rows_and_statistics():
    grouped = _runs()
    assert list(grouped) == ["char_ptb", "grid"]
    char = [(g.experiment.split("/")[1], g.scale, g.seeds) for g in grouped["char_ptb"]]
    assert char == [("lstm_baseline", "cpu", [1, 2]), ("lstm_recurrent_dropout", "cpu", [1]),
                    ("lstm_zoneout", "paper", [1]), ("lstm_zoneout", "cpu", [1, 2]),
                    ("lstm_zoneout", "custom", [1])]
    base = grouped["char_ptb"][0]
    mean, sd, n = base.stats()
    assert n == 2 and mean == pytest.approx((1.6012 + 1.6104) / 2)
    assert sd == pytest.approx(abs(1.6012 - 1.6104) / 2 ** 0.5)  # sample sd of two values
    rd = grouped["char_ptb"][1]
    assert [r.status for r in rd.other] == ["failed"]  # listed, never averaged


def test_runs_without_a_table_are_skipped(tmp_path):
    d = tmp_path / "experiments" / "default" / "2026-12-01_00-00-00_seed1"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"experiment": "default", "table": None, "metric": "bpc",
                                                "test_bpc": 1.0, "status": "completed", "meta": {}}))
    assert results.find_run_dirs([tmp_path / "experiments"]) == [d]
    assert results.collect([tmp_path / "experiments"]) == []


def test_latest_run_of_a_seed_wins(tmp_path):
    src = FIX / "experiments/reproduce/cpu/char_ptb/lstm_baseline/seed1"
    root = tmp_path / "experiments"
    shutil.copytree(src, root / "a/seed1")
    shutil.copytree(src, root / "b/seed1")
    m = json.loads((root / "b/seed1/metrics.json").read_text())
    m["test_bpc"] = 1.5
    (root / "b/seed1/metrics.json").write_text(json.dumps(m))
    (g,) = results.group_runs(results.collect([root], base=tmp_path), results.load_sweeps(FIX / "sweep"))["char_ptb"]
    assert g.stats()[:2] == (1.5, None) and len(g.other) == 1


@pytest.mark.parametrize("extra, scale", [
    ("data.local_file=/mirror/ptb.char.train.txt", "cpu"),  # where the bytes came from: still the cpu scale
    ("optim.lr=0.01", "custom"),                            # changes the computation: an ad-hoc run
])
def test_scale_ignores_where_the_data_was_read_from(extra, scale, tmp_path):
    src = FIX / "experiments/reproduce/cpu/char_ptb/lstm_baseline/seed1"
    run = tmp_path / "experiments/seed1"
    shutil.copytree(src, run)
    ov = run / ".hydra/overrides.yaml"
    ov.write_text(ov.read_text() + f"- {extra}\n")
    m = json.loads((run / "metrics.json").read_text())
    m.update(data_prefix_bytes=5000, data_prefix_sha256="ab" * 32)
    (run / "metrics.json").write_text(json.dumps(m))
    (g,) = results.group_runs(results.collect([run.parent], base=tmp_path), results.load_sweeps(FIX / "sweep"))["char_ptb"]
    assert g.scale == scale
    assert "its first 5,000 bytes (sha256 abababababababab...)" in "\n".join(results._provenance([g]))


def test_ordering_verdicts():
    grouped = _runs()
    sweep = results.load_sweeps(FIX / "sweep")["char_ptb"]
    cpu = [g for g in grouped["char_ptb"] if g.scale == "cpu"]
    assert "**held**" in results.ordering_line(cpu, sweep)
    flipped = [cpu[2], cpu[1], cpu[0]]
    for g, v in zip(flipped, (1.7, 1.6, 1.5)):  # zoneout worst, unregularized best
        for r in g.runs:
            r.value = v
    assert "**did not hold**" in results.ordering_line(flipped, sweep)
    assert "not enough" in results.ordering_line(cpu[:1], sweep)
    # a sweep that limits the verdict to some rows says so, and a better row outside them is not named best
    import dataclasses
    only = dataclasses.replace(sweep, ordering_rows=[cpu[0].experiment, cpu[2].experiment])
    line = results.ordering_line(flipped, only)
    assert f"among the paper's own rows ({cpu[2].row}, {cpu[0].row}; the other rows are for reference)" in line
    assert f"best here {cpu[0].row}" in line and cpu[1].row not in line.split(":", 1)[1]
    # rows closer together than their seeds scatter: the verdict says it is within noise
    assert "within noise" not in results.ordering_line(flipped, sweep)
    for g, vs in zip(flipped, ((1.60, 1.70), (1.64, 1.62), (1.58, 1.66))):   # means 1.65, 1.63, 1.62; sd <= 0.071
        g.runs = [dataclasses.replace(g.runs[0], seed=1), dataclasses.replace(g.runs[0], seed=2)]
        for r, v in zip(g.runs, vs):
            r.value = v
    line = results.ordering_line(flipped, sweep)
    assert "All these rows lie within 0.030 of each other, no more than the largest seed-to-seed sd (0.071): " \
           "the ordering is within noise at this scale." in line


def test_cpu_tables_say_they_are_scaled_down(tmp_path):
    out = _generate(tmp_path)
    md = (out / "results/char_ptb.md").read_text()
    assert "generated by `make results`" in md and "do not edit" in md
    assert "**CPU scale — scaled down from the paper**" in md
    assert "CPU scale (scaled down" in (out / "README.md").read_text()


def test_fixed_decimals():
    assert results.fmt(1.23456, "bpc") == "1.235"
    assert results.fmt(78.449, "ppl") == "78.4"
    assert results.fmt(0.0691, "error") == "0.069"
    assert results.fmt(-0.0004, "bpc", signed=True) == "-0.000"
    assert results.fmt(None, "bpc") == "—"
    # the paper's numbers keep its digits but never drop a trailing zero it printed
    assert [results._paper(v, m) for v, m in [(87.0, "ppl"), (1.27, "bpc"), (1.356, "bpc"), (0.092, "error"),
                                             (None, "ppl")]] == ["87.0", "1.27", "1.356", "0.092", "—"]


def test_readme_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README_TEMPLATE)
    assert results.update_readme(readme, "new block") is True
    text = readme.read_text()
    assert "<!-- results:start -->\nnew block\n<!-- results:end -->" in text and "stale" not in text
    assert text.endswith("## Layout\n")
    assert results.update_readme(readme, "new block") is False
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="results:start"):
        results.update_readme(readme, "x")


def test_no_runs_leaves_a_placeholder(tmp_path):
    (tmp_path / "README.md").write_text(README_TEMPLATE)
    results.write_results([tmp_path / "none"], out_dir=tmp_path / "results", sweep_dir=FIX / "sweep",
                          readme=tmp_path / "README.md")
    assert "no runs collected yet" in (tmp_path / "README.md").read_text()
    assert (tmp_path / "results/runs.csv").read_text().count("\n") == 1  # header only


# ------------------------------------------------------------------------------ reproduce.py (no training)
TABLE_JOBS = {"char_ptb": 12, "word_ptb": 10, "text8": 12, "pmnist": 10, "enwik8": 12}


@pytest.mark.parametrize("table", sorted(TABLE_JOBS) + ["grid"])
@pytest.mark.parametrize("scale", ["cpu", "paper"])
def test_reproduce_dry_run_plans_the_sweep(table, scale, tmp_path, capsys):
    rc = reproduce.main([table, "--scale", scale, "--dry-run", "--runs-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    n = TABLE_JOBS.get(table) or (9 if scale == "cpu" else 25)
    if (table, scale) == ("pmnist", "cpu"):
        n = 6   # the recurrent-BN rows run at paper scale only (configs/sweep/pmnist.yaml)
    assert f"{n} jobs (0 already finished, {n} to run)" in out
    cmd = [line for line in out.splitlines() if "python -m zoneout.train -m" in line]
    assert len(cmd) == 1
    assert f"hydra.sweep.dir={tmp_path}/{scale}" in cmd[0] and f"logger.group={table}-{scale}" in cmd[0]
    assert ("++meta.scale=cpu" in cmd[0]) == (scale == "cpu")
    if table == "grid":
        assert "model.zoneout_c=" + ("0.0,0.25,0.5" if scale == "cpu" else "0.0,0.05,0.25,0.5,0.75") in cmd[0]
        assert "zc\\${model.zoneout_c}_zh\\${model.zoneout_h}/seed\\${seed}" in cmd[0]


def test_reproduce_skips_finished_jobs(tmp_path, capsys):
    done = tmp_path / "cpu" / "char_ptb" / "lstm_baseline"
    for seed in (1, 2):
        (done / f"seed{seed}").mkdir(parents=True)
        (done / f"seed{seed}" / "metrics.json").write_text('{"status": "completed"}')
    assert reproduce.main(["char_ptb", "--dry-run", "--runs-root", str(tmp_path), "--seeds", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "12 jobs (2 already finished, 10 to run)" in out
    calls = [line for line in out.splitlines() if "python -m zoneout.train -m" in line]
    assert len(calls) == 5  # not a full product any more: one call per unfinished row, its seeds swept
    assert all(" seed=1,2 " in c and "lstm_baseline" not in c for c in calls)
    assert "experiment=char_ptb/lstm_weight_noise " in calls[0] and "experiment=char_ptb/lstm_zoneout " in calls[-1]


def test_reproduce_reports_missing_data_without_a_traceback(tmp_path, capsys):
    missing = tmp_path / "no-such-enwik8-prefix"
    rc = reproduce.main(["enwik8", "--scale", "cpu", "--runs-root", str(tmp_path / "runs"), "--data-dir",
                         str(tmp_path / "data"), "--", f"data.local_file={missing}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"[reproduce] data error: {missing}: no such file" in err and "no job was started" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("metrics.json"))


@pytest.mark.parametrize("argv,says", [
    (["char_ptb", "--seeds", "a,b"], "--seeds must be a comma list of non-negative integers"),
    (["char_ptb", "--seeds", ""], "--seeds must be a comma list of non-negative integers"),
    (["char_ptb", "--jobs", "0"], "--jobs must be a positive integer"),
])
def test_reproduce_rejects_bad_seeds_before_planning(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main([*argv, "--dry-run", "--runs-root", str(tmp_path)])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_reproduce_jobs_runs_single_threaded_jobs_through_the_local_submitit_launcher(tmp_path, capsys):
    assert reproduce.main(["grid", "--scale", "cpu", "--jobs", "2", "--dry-run", "--runs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    cmd = next(line for line in out.splitlines() if "zoneout.train" in line)
    assert cmd.startswith("[reproduce] OMP_NUM_THREADS=1 python -c 'from zoneout.train import main; main()' -m ")
    assert cmd.endswith(" hydra/launcher=local_cpu hydra.sweeper.max_batch_size=2")
    # a launcher given after -- is kept (a cluster), only the batch size is added
    assert reproduce.main(["grid", "--scale", "cpu", "--jobs", "4", "--dry-run", "--runs-root", str(tmp_path), "--",
                           "hydra/launcher=slurm_gpu"]) == 0
    cmd = next(line for line in capsys.readouterr().out.splitlines() if "zoneout.train" in line)
    assert cmd.endswith(" hydra/launcher=slurm_gpu hydra.sweeper.max_batch_size=4") and "local_cpu" not in cmd
    # without --jobs: Hydra's basic launcher, one job after another
    assert reproduce.main(["grid", "--scale", "cpu", "--dry-run", "--runs-root", str(tmp_path)]) == 0
    cmd = next(line for line in capsys.readouterr().out.splitlines() if "zoneout.train" in line)
    assert "hydra/launcher" not in cmd and "max_batch_size" not in cmd and "OMP_NUM_THREADS" not in cmd


def test_collect_rejects_unknown_table_names(tmp_path, capsys):
    import collect_results
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"status": "completed"}')
    with pytest.raises(SystemExit) as e:
        collect_results.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--readme", "",
                              "--tables", "char_ptb", "bogus_table"])
    assert e.value.code == 2 and "unknown table(s) bogus_table; known: char_ptb" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_plan_calls_cover_exactly_the_pending_jobs():
    params = {"experiment": ["a", "b"], "model.zoneout_c": ["0.0", "0.5"], "seed": ["1", "2"]}
    jobs = reproduce.jobs_of(params)
    assert reproduce.plan_calls(jobs, params, whole=True) == [params]
    pending = [j for j in jobs if not (j["experiment"] == "a" and j["seed"] == "1")]
    calls = reproduce.plan_calls(pending, params, whole=False)
    covered = [job for c in calls for job in reproduce.jobs_of(c)]
    assert sorted(map(str, covered)) == sorted(map(str, pending))


def test_run_name_matches_hydra_interpolation():
    job = {"experiment": "char_ptb/lstm_zoneout", "model.zoneout_c": "0.5", "model.zoneout_h": "0.05", "seed": "2"}
    assert reproduce.run_name(reproduce.DEFAULT_RUN_NAME, job) == "char_ptb/lstm_zoneout/seed2"
    assert reproduce.run_name("zc${model.zoneout_c}_zh${model.zoneout_h}/seed${seed}", job) == "zc0.5_zh0.05/seed2"
    with pytest.raises(SystemExit):
        reproduce.run_name("${model.hidden_size}", job)


def test_archived_run_records_regenerate_the_same_tables(tmp_path):
    """reproduce.py archives each finished run's record (no checkpoints) under results/runs; a clean checkout
    (archive only) and a working tree (archive + the live run folders) give identical tables."""
    live = tmp_path / "experiments"
    shutil.copytree(FIX / "experiments", live)
    for ckpt in ("last.pt", "best.pt"):
        (next(live.rglob("metrics.json")).parent / ckpt).write_bytes(b"weights")
    archive = tmp_path / "results" / "runs"
    dirs = results.find_run_dirs([live])
    archived = results.archive_runs(dirs, root=live, archive=archive)
    assert len(archived) == len(dirs) > 0
    assert not list(archive.rglob("*.pt")) and not list(archive.rglob("*.tmp"))
    both = results.collect([archive, live], base=tmp_path)
    clean = results.collect([archive], base=tmp_path)
    assert len(both) == len(clean) == len(dirs)                     # a run found twice counts once
    assert [r.run_dir for r in both] == [r.run_dir for r in clean]  # ... from the archive
    assert all(r.run_dir.startswith("results/runs/") for r in clean)


def test_committed_tables_regenerate_from_the_committed_run_records(tmp_path):
    """`make results` on a clean checkout rewrites results/ from results/runs: every committed table, runs.csv
    and the README block must come out byte-identical, and every plot must be committed (a changed collector
    or sweep file that would silently change the committed tables fails here)."""
    archive = ROOT / "results" / "runs"
    if not results.find_run_dirs([archive]):
        pytest.skip("no committed run records under results/runs")
    readme = tmp_path / "README.md"
    shutil.copyfile(ROOT / "README.md", readme)
    out = tmp_path / "results"
    written = results.write_results([archive], out_dir=out, sweep_dir=ROOT / "configs" / "sweep",
                                    readme=readme, base=ROOT)
    assert written
    committed = {p: ROOT / "results" / p.relative_to(out) for p in written if p.is_relative_to(out)}
    # Text byte for byte; a plot only has to exist (its pixels depend on the matplotlib/freetype build).
    differ = [str(c.relative_to(ROOT)) for p, c in committed.items()
              if not c.is_file() or (p.suffix != ".png" and c.read_bytes() != p.read_bytes())]
    if readme.read_text() != (ROOT / "README.md").read_text():
        differ.append("README.md")
    assert not differ, f"regenerating from results/runs changes {differ}; run `make results` and commit"


def test_partial_collections_leave_the_other_tables_and_the_readme_alone(tmp_path, monkeypatch, capsys):
    """`collect_results.py --tables T` rewrites only T's page, plots and runs.csv lines; a collection of other
    run folders (or into another --out) leaves README.md alone; runs of no table write nothing."""
    import collect_results
    out = _generate(tmp_path)          # a whole collection: every table, the README block
    csv_before = (out / "results/runs.csv").read_text()
    readme_before = (out / "README.md").read_text()
    md = {p.name: p.read_text() for p in (out / "results").glob("*.md")}
    assert {"char_ptb.md", "grid.md"} <= set(md)
    monkeypatch.chdir(out)
    (out / "configs").mkdir()
    shutil.copytree(FIX / "sweep", out / "configs" / "sweep")
    # only grid's runs, only grid: the char_ptb page and csv lines stay, the README is not touched
    grid_runs = [str(d) for d in (FIX / "experiments").rglob("metrics.json") if "grid" in str(d)]
    assert grid_runs
    (out / "results/char_ptb.md").write_text("char_ptb page, kept\n")
    assert collect_results.main(["--runs", str(FIX / "experiments"), "--tables", "grid", "--no-plots"]) == 0
    assert (out / "results/char_ptb.md").read_text() == "char_ptb page, kept\n"
    char_lines = lambda text: [ln for ln in text.splitlines() if ln.startswith("char_ptb,")]  # noqa: E731
    after = (out / "results/runs.csv").read_text()
    assert char_lines(after) == char_lines(csv_before) and len(after.splitlines()) == len(csv_before.splitlines())
    assert (out / "README.md").read_text() == readme_before
    assert (out / "results/grid.md").read_text() == md["grid.md"]      # --no-plots kept the heatmap's link
    # runs that belong to no table: refused, nothing written
    _collect_refuses(tmp_path, '{"status": "completed"}', "belongs to a table", capsys)
    assert (out / "README.md").read_text() == readme_before


def _collect_refuses(tmp_path, metrics_text: str, says: str, capsys):
    """collect_results.py over one run folder holding ``metrics_text``: exit 2 saying ``says``, nothing written."""
    import collect_results
    run = tmp_path / "one_run" / "r"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(metrics_text)
    with pytest.raises(SystemExit) as e:
        collect_results.main(["--runs", str(tmp_path / "one_run"), "--out", str(tmp_path / "out_refused")])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "out_refused").exists()


def test_planned_signature_keeps_the_last_value_of_a_key_and_one_float_spelling():
    spec = {"overrides": {"trainer.max_epochs": 35, "optim.lr": "1e-3", "trainer.progress": False}}
    job = {"experiment": "char_ptb/lstm_baseline", "seed": "1"}
    sig = reproduce.planned_signature(job, spec, ["trainer.max_epochs=2", "++optim.lr=0.001"])
    assert sig == ("optim.lr=0.001", "trainer.max_epochs=2")        # as Hydra records it: the last value wins
    assert results.normalize("optim.lr=5e-4") == results.normalize("optim.lr=0.0005") == "optim.lr=0.0005"
    assert results.normalize("data.mnist_source=test_split") == "data.mnist_source=test_split"


def test_dry_run_writes_nothing_even_when_every_job_is_finished(tmp_path, capsys):
    out = tmp_path / "res"
    assert reproduce.main(["char_ptb", "--scale", "cpu", "--dry-run", "--runs-root", str(ROOT / "results" / "runs"),
                           "--results-dir", str(out), "--readme", "", "--collect-from", str(tmp_path / "none")]) == 0
    assert "12 jobs (12 already finished, 0 to run)" in capsys.readouterr().out
    assert not out.exists()


def test_collection_of_some_run_folders_keeps_the_other_tables(tmp_path, monkeypatch, capsys):
    import collect_results
    out = _generate(tmp_path)
    before = (out / "results/runs.csv").read_text()
    readme = (out / "README.md").read_text()
    monkeypatch.chdir(out)
    shutil.copytree(FIX / "sweep", out / "configs" / "sweep")
    grid_only = FIX / "experiments" / "reproduce" / "cpu" / "grid"
    assert grid_only.is_dir()
    assert collect_results.main([f"--runs={grid_only}", "--no-plots"]) == 0   # --runs=... spelling too
    after = (out / "results/runs.csv").read_text()
    other = lambda text: [ln for ln in text.splitlines() if not ln.startswith("grid,")]  # noqa: E731
    assert other(after) == other(before) and (out / "README.md").read_text() == readme
    # a mistyped sweep folder, an --out that is a file, a corrupt metrics.json: one message each, nothing written
    for argv, says in ((["--sweeps", "configs/sweeps"], "is not a folder of sweep files"),
                       (["--out", "README.md"], "is a file, not a folder")):
        with pytest.raises(SystemExit) as e:
            collect_results.main(argv)
        assert e.value.code == 2 and says in capsys.readouterr().err
    _collect_refuses(tmp_path, "[1, 2]", "metrics.json: not a metrics.json (a JSON object expected", capsys)


def test_readme_without_markers_is_refused_before_anything_is_written(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no results markers here\n")
    with pytest.raises(ValueError, match="has no <!-- results:start --> ... <!-- results:end --> block"):
        results.write_results([FIX / "experiments"], out_dir=tmp_path / "results", sweep_dir=FIX / "sweep",
                              readme=readme, base=FIX)
    assert not (tmp_path / "results").exists() and readme.read_text() == "# no results markers here\n"
