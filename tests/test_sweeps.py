"""Sweep files and launchers: every job of every sweep composes and validates at both scales; the launcher
configs compose; a 2-job sweep through Hydra's submitit local launcher gives two run folders and two table rows;
with wandb offline, a sweep gives one wandb run per job and a crashing job is recorded as failed without
stopping the others. Training jobs here are tiny (stdlib corpus, 16 units, a few steps).
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "configs" / "sweep"
TABLES = ["char_ptb", "word_ptb", "text8", "pmnist", "enwik8", "grid"]

sys.path.insert(0, str(ROOT / "scripts"))
import reproduce  # noqa: E402

train = pytest.importorskip("zoneout.train", reason="zoneout/train.py (Hydra entry point) not present yet")


def _sweep(table):
    return yaml.safe_load((SWEEPS / f"{table}.yaml").read_text())


@pytest.mark.parametrize("table", TABLES)
def test_sweep_file_describes_table_and_scales(table):
    raw = _sweep(table)
    info = raw["sweep"]
    assert info["table"] == table and info["title"]
    assert set(info["scales"]) == {"paper", "cpu"}
    for scale in ("paper", "cpu"):
        spec = info["scales"][scale]
        assert spec["description"] and spec["hardware"] and spec["time"], (table, scale)
    assert "CPU scale" in info["scales"]["cpu"]["description"]
    rows = raw["hydra"]["sweeper"]["params"]["experiment"].split(",")
    for row in rows:
        assert (ROOT / "configs" / "experiment" / f"{row}.yaml").is_file(), f"{table}: no row file for {row}"
    if table != "grid":
        assert rows[0].endswith("lstm_baseline") and info["worst"] == rows[0]
        assert any("zoneout" in r for r in rows)


def _jobs(table, scale):
    raw = _sweep(table)
    spec = raw["sweep"]["scales"][scale]
    params = reproduce.sweep_params(raw, None, spec)
    overrides = [f"{k}={reproduce.results._fmt_value(v)}" for k, v in (spec.get("overrides") or {}).items()]
    if scale == "cpu":
        overrides.append("++meta.scale=cpu")
    # one job per row (and the grid's corners): rows differ in what they set; other values are alike
    jobs = []
    for row in params["experiment"]:
        keys = {k: v for k, v in params.items() if k not in ("experiment", "seed")}
        picks = [{k: v[0] for k, v in keys.items()}, {k: v[-1] for k, v in keys.items()}] if keys else [{}]
        for pick in picks:
            jobs.append([f"experiment={row}", f"seed={params['seed'][0]}"] +
                        [f"{k}={v}" for k, v in pick.items()] + overrides)
    return jobs


@pytest.mark.parametrize("scale", ["paper", "cpu"])
@pytest.mark.parametrize("table", TABLES)
def test_every_sweep_job_composes_and_validates(table, scale):
    for overrides in _jobs(table, scale):
        try:
            values = train.compose(overrides)
            cfg = train.config_from_container(values)  # schema + validation (unknown keys, ranges)
        except Exception as e:  # noqa: BLE001 - only the one known gap is tolerated, below
            if "data.local_file" in str(e):
                pytest.xfail("the training config has no data.local_file key yet (needed to train on the real "
                             "text8/enwik8 prefixes in ../shared/data; see the results report)")
            raise
        if scale == "cpu":
            for k, v in _sweep(table)["sweep"]["scales"]["cpu"]["overrides"].items():
                section, key = k.split(".", 1)
                assert getattr(getattr(cfg, section), key) == v, (table, k)
        if table == "grid":
            assert cfg.meta["table"] == "grid"


@pytest.mark.parametrize("launcher,target", [("local_cpu", "LocalLauncher"), ("slurm_gpu", "SlurmLauncher")])
def test_launcher_configs_compose(launcher, target):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher not installed")
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    lc = cfg.hydra.launcher
    assert lc._target_.endswith(target)
    if launcher == "slurm_gpu":
        assert lc.gpus_per_node == 1 and lc.timeout_min == 720 and lc.mem_gb == 32 and "partition" in lc
    else:
        assert lc.cpus_per_task == 1


def test_optuna_sweeper_config_composes():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper not installed "
                        "(`make install` installs it)")
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/sweeper=optuna_zoneout"], return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == "minimize"
    assert set(cfg.hydra.sweeper.params) == {"model.zoneout_c", "model.zoneout_h"}


# ------------------------------------------------------------------------- tiny end-to-end sweeps
TINY = {"model.hidden_size": 16, "data": "stdlib", "data.seq_len": 20, "data.train_tokens": 20000,
        "trainer.max_epochs": 1, "trainer.max_steps_per_epoch": 3, "trainer.max_eval_batches": 2,
        "trainer.checkpoint_every_steps": 0, "trainer.progress": False, "device": "cpu"}


def _tiny_sweep(tmp_path, params, run_name=None):
    sweep = {"sweep": {"table": "char_ptb", "title": "tiny", "data": ["stdlib"],
                       "scales": {"cpu": {"description": "CPU scale: tiny", "hardware": "cpu", "time": "s",
                                          "overrides": TINY}}},
             "hydra": {"sweeper": {"params": params}}}
    if run_name:
        sweep["sweep"]["run_name"] = run_name
    d = tmp_path / "sweep"
    d.mkdir()
    (d / "char_ptb.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    return d


def _reproduce(tmp_path, sweep_dir, extra, env=None, opts=()):
    cmd = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "char_ptb", "--scale", "cpu", *opts,
           "--sweep-dir", str(sweep_dir), "--runs-root", str(tmp_path / "runs"), "--collect-from",
           str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), "--readme", "", "--", *extra]
    # a private data dir: the stdlib corpus is prepared there, untouched by other tests running at the same time
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", "ZONEOUT_DATA": str(tmp_path / "data"),
           **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_two_job_sweep_through_submitit_local_launcher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher not installed")
    sweep_dir = _tiny_sweep(tmp_path, {"experiment": "char_ptb/lstm_baseline,char_ptb/lstm_zoneout", "seed": "1"})
    p = _reproduce(tmp_path, sweep_dir, [], opts=["--jobs", "2"])  # = hydra/launcher=local_cpu, 2 at a time
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "hydra/launcher=local_cpu hydra.sweeper.max_batch_size=2" in p.stdout
    runs = sorted((tmp_path / "runs" / "cpu").glob("char_ptb/*/seed1/metrics.json"))
    assert [r.parent.parent.name for r in runs] == ["lstm_baseline", "lstm_zoneout"]
    assert all(json.loads(r.read_text())["status"] == "completed" for r in runs)
    assert (tmp_path / "runs" / "cpu" / ".submitit").is_dir()  # really went through submitit
    rows = (tmp_path / "results" / "runs.csv").read_text().splitlines()[1:]
    assert [r.split(",")[2] for r in rows] == ["char_ptb/lstm_baseline", "char_ptb/lstm_zoneout"]
    md = (tmp_path / "results" / "char_ptb.md").read_text()
    assert md.count("| cpu | `experiment=char_ptb/") == 2
    # the same command again finds both jobs finished and launches nothing
    p2 = _reproduce(tmp_path, sweep_dir, [], opts=["--jobs", "2"])
    assert "2 jobs (2 already finished, 0 to run)" in p2.stdout


@pytest.mark.slow
def test_overrides_that_change_the_scale_never_replace_its_archived_runs(tmp_path):
    """A quick smoke run (`reproduce.py ... -- trainer.max_steps_per_epoch=1`) is not the scale: its runs go to
    <scale>-custom/ and are not archived into results/runs; and a finished folder whose settings are not the plan's
    (the sweep file changed since) is reported, not counted as done and not archived."""
    sweep_dir = _tiny_sweep(tmp_path, {"experiment": "char_ptb/lstm_baseline", "seed": "1"})
    p = _reproduce(tmp_path, sweep_dir, ["trainer.max_steps_per_epoch=1"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "change the cpu scale's settings" in p.stdout
    assert (tmp_path / "runs" / "cpu-custom" / "char_ptb" / "lstm_baseline" / "seed1" / "metrics.json").is_file()
    assert not (tmp_path / "runs" / "cpu").exists() and not (tmp_path / "results" / "runs").exists()
    assert ",custom," in (tmp_path / "results" / "runs.csv").read_text()
    # the same custom command again finds its own run finished (the extra value replaced the scale's)
    p = _reproduce(tmp_path, sweep_dir, ["trainer.max_steps_per_epoch=1"])
    assert p.returncode == 0 and "1 jobs (1 already finished, 0 to run)" in p.stdout, p.stdout + p.stderr
    # the real scale runs in its own folder and is archived
    p = _reproduce(tmp_path, sweep_dir, [])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    archived = tmp_path / "results" / "runs" / "cpu" / "char_ptb" / "lstm_baseline" / "seed1" / "metrics.json"
    assert archived.is_file()
    before = archived.read_bytes()
    # the sweep file's settings change: the finished folder is stale, named, not re-archived, exit 1
    sweep = yaml.safe_load((sweep_dir / "char_ptb.yaml").read_text())
    sweep["sweep"]["scales"]["cpu"]["overrides"]["model.hidden_size"] = 24
    (sweep_dir / "char_ptb.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    p = _reproduce(tmp_path, sweep_dir, [])
    assert p.returncode == 1 and "1 jobs (0 already finished, 0 to run, 1 with other settings)" in p.stdout, p.stdout
    assert "model.hidden_size=16" in p.stderr and "model.hidden_size=24" in p.stderr
    assert archived.read_bytes() == before


@pytest.mark.slow
def test_optuna_sweeper_searches_the_rates_and_survives_failed_trials(tmp_path):
    """hydra/sweeper=optuna_zoneout really runs: z_h sampled from the config's interval, z_c from a choice in which
    1.5 is invalid (those trials fail with a config error and leave no run folder). The failed trials are told to
    Optuna as failed and the search goes on; the best value is the smallest validation BPC of the others."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper not installed "
                        "(`make install` installs it)")
    n = 4
    cmd = [sys.executable, "-m", "zoneout.train", "-m", "experiment=char_ptb/lstm_zoneout",
           "hydra/sweeper=optuna_zoneout", f"hydra.sweeper.n_trials={n}", "model.zoneout_c=choice(0.5,1.5)",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", *[f"{k}={v}" for k, v in TINY.items()],
           f"run_dir={tmp_path / 'trials'}/${{hydra:job.num}}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", "ZONEOUT_DATA": str(tmp_path / "data")}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    folders = {i: tmp_path / "trials" / str(i) for i in range(n)}
    done = {i: d for i, d in folders.items() if (d / "metrics.json").exists()}
    assert 0 < len(done) < n, "the seeded sampler should draw both z_c values in 4 trials"
    assert p.stderr.count("model.zoneout_c=1.5 is outside [0, 1]") == n - len(done)
    trials = {i: json.loads((d / "metrics.json").read_text()) for i, d in done.items()}
    models = {i: yaml.safe_load((d / "config.yaml").read_text())["model"] for i, d in done.items()}
    assert all(t["status"] == "completed" for t in trials.values())
    assert all(m["zoneout_c"] == 0.5 and 0 <= m["zoneout_h"] <= 0.5 for m in models.values())
    assert len({m["zoneout_h"] for m in models.values()}) == len(done)
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    i = min(trials, key=lambda j: trials[j]["valid_bpc"])
    assert best["best_value"] == pytest.approx(trials[i]["valid_bpc"], rel=1e-9)
    assert best["best_params"]["model.zoneout_h"] == pytest.approx(models[i]["zoneout_h"])


def _wandb_records(path: Path):
    """Records of an offline .wandb file (LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full / last
            rec = pb.Record()
            rec.ParseFromString(buf + chunk if kind == 4 else chunk)
            yield rec
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk


def _wandb_summary(run_dir: Path) -> dict:
    (f,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    out = {}
    for r in _wandb_records(f):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(id=r.run.run_id, name=r.run.display_name, group=r.run.run_group)
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out


@pytest.mark.slow
def test_wandb_offline_one_run_per_job_and_a_crash_is_failed(tmp_path):
    pytest.importorskip("wandb")
    # job 1 crashes (lr=inf -> NaN loss -> diverged); job 2 must still run. Basic launcher = one process.
    sweep_dir = _tiny_sweep(tmp_path, {"experiment": "char_ptb/lstm_baseline", "optim.lr": "inf,0.002", "seed": "1"},
                            run_name="lr${optim.lr}/seed${seed}")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_SILENT": "true"}
    p = _reproduce(tmp_path, sweep_dir, ["logger=wandb"], env=env)
    base = tmp_path / "runs" / "cpu"
    bad, good = base / "lrinf" / "seed1", base / "lr0.002" / "seed1"
    log = (bad / "train.log").read_text() if (bad / "train.log").is_file() else ""
    if "generate_id" in log:
        pytest.xfail("zoneout/train.py calls wandb.util.generate_id, which wandb>=0.2x no longer has "
                     "(see the results report: use wandb.sdk.lib.runid.generate_id or uuid)")
    if not (good / "metrics.json").is_file() and (bad / "metrics.json").is_file():
        pytest.xfail("zoneout.train ends the process (sys.exit) after a diverged/failed job, which stops "
                     "Hydra's basic launcher before the next job (see the results report)")
    assert json.loads((bad / "metrics.json").read_text())["status"] in ("failed", "diverged")
    assert json.loads((good / "metrics.json").read_text())["status"] == "completed", p.stderr[-3000:]
    w_bad, w_good = _wandb_summary(bad), _wandb_summary(good)
    assert w_bad["id"] != w_good["id"]
    assert w_bad["group"] == w_good["group"] == "char_ptb-cpu"
    assert (w_bad["name"], w_good["name"]) == ("char_ptb/lrinf/seed1", "char_ptb/lr0.002/seed1")
    assert w_bad["exit_code"] != 0 and w_good["exit_code"] == 0  # wandb shows the crashed job as failed
    csv = (tmp_path / "results" / "runs.csv").read_text()
    assert ",diverged," in csv or ",failed," in csv
    assert p.returncode != 0  # reproduce.py reports the job that did not complete
