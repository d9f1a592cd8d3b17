"""Runs that survive (issue 7): SIGKILL mid-epoch on real data and resume == the uninterrupted run (bitwise),
determinism, preemption handed to submitit's requeue, a requeued job finding its run folder, NaN batches skipped
up to a limit, a full disk / denied write during a run, an unreadable checkpoint, missing data through a run.

Every test here carries the ``reliability`` marker; ``python scripts/reliability_report.py`` runs them together
with the other marked scenarios (tests/test_train.py, tests/test_config.py, three data tests) and writes
results/reliability.md. Sizes are tiny (16-64 units, a few dozen steps) to stay fast on 2 shared cores.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import zoneout.data as zd
import zoneout.train as zt
from zoneout.checkpoint import CheckpointError, load_checkpoint
from zoneout.config import ConfigError

torch.set_num_threads(1)
with warnings.catch_warnings():   # the marker is registered by scripts/reliability_report.py / pyproject
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    reliability = pytest.mark.reliability

REPO = Path(__file__).resolve().parent.parent
SHARED_PTB = REPO.parent / "shared" / "data" / "ptb"
# 2 epochs x 30 steps of a 64-unit zoneout LSTM; a checkpoint every 2 steps so a kill lands after a mid-epoch one.
TINY = ["data.train_tokens=12000", "data.seq_len=20", "data.batch_size=4", "model.hidden_size=64",
        "model.zoneout_c=0.5", "model.zoneout_h=0.05", "model.dropout=0.1", "model.backend=reference",
        "trainer.max_epochs=2", "trainer.max_steps_per_epoch=30", "trainer.max_eval_batches=3",
        "trainer.checkpoint_every_steps=2", "trainer.log_every_steps=1", "trainer.progress=false"]


@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch):
    for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "ZONEOUT_MIRROR"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    """Data overrides for a real corpus: PTB characters prepared in data/ (``make data-ptb``), else prepared from
    the ../shared/data/ptb mirror into a temp dir, else the stdlib corpus (never skipped)."""
    try:
        zd.load_corpus("ptb_char", REPO / "data", train_tokens=10)
        return ["data=ptb_char", f"data.data_dir={REPO / 'data'}"]
    except zd.DataError:
        pass
    if SHARED_PTB.is_dir():
        d = tmp_path_factory.mktemp("ptb")
        zd.download("ptb", d, mirror=SHARED_PTB.resolve().as_uri(), offline=True, progress=False)
        return ["data=ptb_char", f"data.data_dir={d}"]
    return ["data=stdlib", f"data.data_dir={tmp_path_factory.mktemp('stdlib')}"]


def _cfg(real_data, run_dir, *extra):
    return zt.config_from_container(zt.compose([*real_data, *TINY, f"run_dir={run_dir}", *extra]))


def _rows(run_dir):
    """metrics.jsonl without the wall-clock column."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _final(run_dir):
    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {k: m[k] for k in ("status", "best_epoch", "valid_loss", "test_loss", "epochs")}


@pytest.fixture(scope="module")
def reference(real_data, tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    zt.run(_cfg(real_data, run_dir), command="reference")
    return run_dir


def _cli(args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "zoneout.train", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# ------------------------------------------------------------------------------- kill, resume, determinism

@reliability(failure="process killed with SIGKILL mid-epoch (OOM killer, node loss)",
             provoked="CLI run on real PTB chars, checkpoint every 2 steps, `kill -9` after epoch 2 step 33 is "
                      "logged; then the same command again",
             expected="resumes from the last mid-epoch last.pt (stale .lock taken over); per-epoch metrics and "
                      "final valid/test loss bitwise equal to the uninterrupted run")
def test_sigkill_mid_epoch_then_same_command_equals_uninterrupted(tmp_path, real_data, reference):
    run = tmp_path / "run"
    args = [*real_data, *TINY, f"run_dir={run}"]
    p = _cli(args)
    for line in p.stderr:
        if "epoch 2 step 33:" in line:   # 27 steps before the epoch ends: lands mid-epoch
            p.kill()
            break
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    loop = load_checkpoint(run / "last.pt")["loop"]
    assert loop["epoch"] == 2 and 0 < loop["position"] < 30 and loop["position"] % 2 == 0, loop["position"]
    assert (run / ".lock").exists() and not (run / "metrics.json").exists()   # died without cleaning up
    p = _cli(args)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    assert f"resumed from {run / 'last.pt'}: epoch 2, step {30 + loop['position']}, window {loop['position']}" in err
    assert _rows(run) == _rows(reference)       # bitwise: the same float repr in JSON
    assert _final(run) == _final(reference)


@reliability(failure="non-determinism between identical runs",
             provoked="the same seed and config run twice in one process on real PTB chars; then seed 2",
             expected="identical metrics.jsonl rows, final metrics and weights; another seed differs")
def test_same_seed_same_config_same_metrics(tmp_path, real_data, reference):
    zt.run(_cfg(real_data, tmp_path / "again"), command="again")
    assert _rows(tmp_path / "again") == _rows(reference) and _final(tmp_path / "again") == _final(reference)
    a, b = torch.load(reference / "last.pt"), torch.load(tmp_path / "again" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    zt.run(_cfg(real_data, tmp_path / "seed2", "seed=2", "trainer.max_epochs=1"), command="seed2")
    assert _rows(tmp_path / "seed2")[0]["train_loss"] != _rows(reference)[0]["train_loss"]


# ------------------------------------------------------------------------------------ preemption / requeue

def _signal_at(monkeypatch, signum, epoch, position):
    real = zt.train_lm_epoch

    def interrupted(*args, on_step, **kw):
        def hook(state):
            if (state.epoch, state.position) == (epoch, position):
                os.kill(os.getpid(), signum)
            on_step(state)
        return real(*args, on_step=hook, **kw)

    monkeypatch.setattr(zt, "train_lm_epoch", interrupted)
    return real


@reliability(failure="SLURM time limit / preemption under Hydra's submitit launcher (SIGUSR2, submitit >= 1.5)",
             provoked="a stand-in for submitit's checkpoint_and_try_requeue installed for SIGUSR2, SIGUSR2 sent "
                      "mid-epoch; then the requeued job (same arguments, same run_dir)",
             expected="step finished, last.pt written and run folder released BEFORE submitit's handler runs "
                      "(which requeues and exits -1); the requeued job resumes to the uninterrupted metrics")
def test_preemption_hands_signal_to_submitit_then_requeued_job_resumes(tmp_path, real_data, reference, monkeypatch):
    run = tmp_path / "run"
    seen = []

    def submitit_handler(signum, frame):
        loop = load_checkpoint(run / "last.pt")["loop"]
        seen.append((signum, loop["epoch"], loop["position"], (run / ".lock").exists()))
        sys.exit(-1)                    # what submitit does after `scontrol requeue`

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        real = _signal_at(monkeypatch, signal.SIGUSR2, 2, 5)
        with pytest.raises(zt.Preempted, match="SIGUSR2") as e:
            zt.run(_cfg(real_data, run))
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler    # restored after the run
        with pytest.raises(SystemExit) as ex:
            zt.exit_after_preemption(e.value)
        assert ex.value.code == -1 and seen == [(signal.SIGUSR2, 2, 5, False)]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert not (run / "metrics.json").exists() and not (run / ".lock").exists()
    monkeypatch.setattr(zt, "train_lm_epoch", real)
    zt.run(_cfg(real_data, run))        # the requeued job: DelayedSubmission(launcher, same args)
    assert _rows(run) == _rows(reference) and _final(run) == _final(reference)


@reliability(failure="SIGTERM where the previous handler only logs (submitit's `bypass`) or is the default",
             provoked="exit_after_preemption with a logging handler and with SIG_DFL",
             expected="exit code 75 (EX_TEMPFAIL) in both cases, after the logging handler ran")
def test_preemption_exit_code_without_requeueing_handler(tmp_path):
    logged = []
    for prev in (lambda signum, frame: logged.append(signum), signal.SIG_DFL, None):
        with pytest.raises(SystemExit) as ex:
            zt.exit_after_preemption(zt.Preempted(signal.SIGTERM, tmp_path, prev))
        assert ex.value.code == zt.REQUEUE_EXIT_CODE == 75
    assert logged == [signal.SIGTERM]


@reliability(failure="requeued Hydra multirun job re-resolves the ${now} in the default run_dir",
             provoked="master multirun config pickled (as submitit pickles the launcher), clock moved 5 years "
                      "on, the job's config rebuilt with load_sweep_config",
             expected="the job's run_dir keeps the sweep's launch timestamp (Hydra copies the resolver cache "
                      "from the pickled master), so the requeued job finds its last.pt; a fresh compose differs")
def test_requeued_multirun_job_gets_the_same_default_run_dir(monkeypatch):
    import hydra.core.utils as hcu
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode

    hcu.setup_globals()
    zt._register_resolvers()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(zt.CONFIG_DIR)))
    master = loader.load_configuration("train", overrides=["hydra/launcher=basic"], run_mode=RunMode.MULTIRUN)
    stamp = Path(str(master.hydra.sweep.dir)).name    # resolved by the launcher before it submits
    first = loader.load_sweep_config(master, ["seed=2"]).run_dir
    blob = pickle.dumps(master)

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2031, 1, 1)

    monkeypatch.setattr(hcu, "datetime", Later)
    requeued = loader.load_sweep_config(pickle.loads(blob), ["seed=2"]).run_dir
    assert requeued == first == f"experiments/default/{stamp}_seed2"
    fresh = loader.load_configuration("train", overrides=["seed=2"], run_mode=RunMode.RUN).run_dir
    assert fresh == "experiments/default/2031-01-01_00-00-00_seed2"   # a plain re-run: see the next test


@reliability(failure="requeued single SLURM job (sbatch python -m zoneout.train) gets a new ${now} run_dir",
             provoked="SLURM_JOB_ID set, SIGTERM mid-epoch; rerun with SLURM_RESTART_COUNT=1 and a later "
                      "default run_dir next to the first",
             expected="the rerun continues in the first folder (found by its cluster_job file) and matches the "
                      "uninterrupted run; no second folder is created")
def test_requeued_slurm_job_finds_its_default_run_dir(tmp_path, real_data, reference, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    first, later = tmp_path / "exp" / "2026-01-01_00-00-00_seed1", tmp_path / "exp" / "2026-01-01_03-00-00_seed1"
    real = _signal_at(monkeypatch, signal.SIGTERM, 2, 7)
    with pytest.raises(zt.Preempted):
        zt.run(_cfg(real_data, first), run_dir_explicit=False)
    assert (first / "cluster_job").read_text().strip() == "4242"
    monkeypatch.setattr(zt, "train_lm_epoch", real)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    out = zt.run(_cfg(real_data, later), run_dir_explicit=False)
    assert out["run_dir"] == str(first) and not later.exists()
    assert _rows(first) == _rows(reference) and _final(first) == _final(reference)
    monkeypatch.setenv("SLURM_JOB_ID", "4243")       # another job (not a requeue of 4242) never takes it over
    out = zt.run(_cfg(real_data, first, "seed=3", "trainer.max_epochs=1"), run_dir_explicit=False)
    assert out["run_dir"] == str(first) + "_1"


# ------------------------------------------------------------------------------------------------ NaN

def _nan_at_calls(monkeypatch, calls):
    """Training losses (grad enabled) at these 1-based call numbers become NaN."""
    import zoneout.engine as ze
    real, n = ze.F.cross_entropy, [0]

    def poisoned(*args, **kw):
        loss = real(*args, **kw)
        if torch.is_grad_enabled():
            n[0] += 1
            if n[0] in calls:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(ze.F, "cross_entropy", poisoned)


@reliability(failure="NaN loss on a few batches, trainer.max_skipped_batches=2",
             provoked="training loss of batches 3 and 40 made NaN (cross_entropy patched)",
             expected="both batches skipped (no optimizer step), each logged; run completes; "
                      "metrics.json skipped_batches=2; weights finite")
def test_nan_batches_skipped_up_to_the_limit_and_logged(tmp_path, real_data, monkeypatch):
    _nan_at_calls(monkeypatch, {3, 40})
    out = zt.run(_cfg(real_data, tmp_path / "run", "trainer.max_skipped_batches=2"))
    assert out["status"] == "completed" and out["skipped_batches"] == 2
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("skipped batch") == 2 and "skipped batch 2 of 2 allowed" in log
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [29, 58]          # 30 windows per epoch, one skipped in each
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "run" / "last.pt")["model"].values())


@reliability(failure="more NaN batches than trainer.max_skipped_batches allows",
             provoked="losses of batches 3 and 5 NaN with max_skipped_batches=1, checkpoint every 2 steps",
             expected="first skipped, second stops the run: status diverged, message names the limit, "
                      "last.pt = the last good step (finite)")
def test_nan_beyond_the_limit_stops_with_last_good_checkpoint(tmp_path, real_data, monkeypatch):
    _nan_at_calls(monkeypatch, {3, 5})
    out = zt.run(_cfg(real_data, tmp_path / "run", "trainer.max_skipped_batches=1"))
    assert out["status"] == "diverged" and "trainer.max_skipped_batches=1 is reached" in out["error"]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["loop"]["step"] == 2      # window 3 skipped, window 4 = step 3 (not a checkpoint step), window 5 NaN
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


# ------------------------------------------------------------------------------------------------ disk

def _failing_checkpoint_writes(monkeypatch, after, exc):
    """torch.save raises ``exc`` from its ``after``-th call on (the earlier checkpoints succeed)."""
    real, n = torch.save, [0]

    def save(obj, f, *a, **kw):
        n[0] += 1
        if n[0] > after:
            f.write(b"partial")
            raise exc
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 PermissionError(errno.EACCES, "Permission denied")], ids=["ENOSPC", "EACCES"])
@reliability(failure="checkpoint write fails during a run (disk full / permission denied)",
             provoked="torch.save raises OSError(ENOSPC) / PermissionError(EACCES) from the 3rd checkpoint on",
             expected="run stops with CheckpointError saying the previous checkpoint is intact (also in "
                      "train.log, status failed); last.pt = step 4, loads, and the run resumes from it")
def test_checkpoint_write_failure_in_a_run_keeps_previous(tmp_path, real_data, monkeypatch, exc):
    run = tmp_path / "run"
    with monkeypatch.context() as mp:
        _failing_checkpoint_writes(mp, 2, exc)
        with pytest.raises(CheckpointError, match=f"{exc.strerror}.*the previous checkpoint is intact"):
            zt.run(_cfg(real_data, run))
    assert "previous checkpoint is intact" in (run / "train.log").read_text()
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"
    assert load_checkpoint(run / "last.pt")["loop"]["step"] == 4
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]   # no temp file left behind
    out = zt.run(_cfg(real_data, run, "trainer.max_epochs=1"))
    assert out["status"] == "completed" and "resumed from" in (run / "train.log").read_text()


@reliability(failure="last.pt truncated / corrupted on disk",
             provoked="last.pt cut to half its size, then the same command again",
             expected="refused before training: CheckpointError naming the file, saying to delete it or "
                      "point trainer.resume elsewhere")
def test_unreadable_checkpoint_is_named(tmp_path, real_data):
    run = tmp_path / "run"
    zt.run(_cfg(real_data, run, "trainer.max_epochs=1", "trainer.max_steps_per_epoch=2"))
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last.pt is unreadable.*delete it"):
        zt.run(_cfg(real_data, run, "trainer.max_epochs=1", "trainer.max_steps_per_epoch=2"))


# ------------------------------------------------------------------------------------- data and config

@reliability(failure="dataset not downloaded",
             provoked="a run with data=ptb_char and an empty data_dir (no mirror)",
             expected="DataError naming the missing file and `make data-ptb`, before any training")
def test_missing_data_through_a_run_names_the_make_target(tmp_path):
    cfg = zt.config_from_container(zt.compose(["data=ptb_char", f"data.data_dir={tmp_path / 'empty'}", *TINY,
                                               f"run_dir={tmp_path / 'run'}"]))
    with pytest.raises(zd.DataError, match=r"ptb.char.train.txt.*make data-ptb"):
        zt.run(cfg)
    assert not (tmp_path / "run" / "last.pt").exists()


@reliability(failure="sequence length / batch size larger than the data",
             provoked="data.train_tokens=400 with batch 4 x seq_len 200 on the real corpus",
             expected="ConfigError naming data.seq_len and the largest window that fits, before any step")
def test_seq_len_too_long_for_the_data_rejected_in_a_run(tmp_path, real_data):
    with pytest.raises(ConfigError, match=r"data.seq_len=200 does not fit the train split .* at most 99 steps"):
        zt.run(_cfg(real_data, tmp_path / "run", "data.train_tokens=400", "data.seq_len=200"))
    assert not (tmp_path / "run" / "last.pt").exists()
