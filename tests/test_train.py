"""Training entry point end to end on tiny corpora: the run folder and every metrics.json key, metric math, exact
resume (epoch boundary and mid-epoch after SIGTERM), divergence, failed checkpoint writes, device=auto, wandb."""
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import zoneout.train as zt
from zoneout.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from zoneout.config import ConfigError, from_dict
from zoneout.engine import lr_for_epoch
from zoneout.metrics import error_rate, from_nats, nats_to_bpc, nats_to_ppl

torch.set_num_threads(1)  # tiny models: thread start-up and contention cost more than they save on 2 shared cores
with warnings.catch_warnings():   # the marker is registered by scripts/reliability_report.py / pyproject
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    reliability = pytest.mark.reliability

REPO = Path(__file__).resolve().parent.parent
SPEC_KEYS = {"experiment", "table", "row", "dataset", "metric", "best_epoch", "epochs", "train_seconds",
             "tokens_per_second", "n_params", "seed", "device", "hardware", "torch_version", "git_sha", "scale",
             "command", "status", "run_dir", "overrides"}
JSONL_KEYS = {"epoch", "step", "train_loss", "train_bpc", "valid_loss", "valid_bpc", "lr", "seconds"}


# ------------------------------------------------------------------------------------------ metric math

def test_metric_math():
    assert nats_to_bpc(math.log(2)) == pytest.approx(1.0)
    assert nats_to_bpc(math.log(50)) == pytest.approx(math.log2(50))
    assert nats_to_ppl(math.log(120.7)) == pytest.approx(120.7)
    assert nats_to_ppl(1e6) == math.inf
    assert error_rate(9, 10) == pytest.approx(0.1)
    assert from_nats("bpc", 1.0) == pytest.approx(1 / math.log(2))
    with pytest.raises(ValueError):
        from_nats("error", 1.0)


def test_lr_schedule_word_ptb():
    lrs = [lr_for_epoch(1.0, e, 1 / 1.15, 14) for e in range(1, 17)]
    assert lrs[:14] == [1.0] * 14 and lrs[14] == pytest.approx(1 / 1.15) and lrs[15] == pytest.approx(1 / 1.15**2)


# ------------------------------------------------------------------------------------------- fixtures

def _markov_stream(n, vocab, seed):
    trans = torch.softmax(3 * torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)), -1)
    g = torch.Generator().manual_seed(seed)
    ids = torch.empty(n, dtype=torch.long)
    ids[0] = 0
    for i in range(1, n):
        ids[i] = torch.multinomial(trans[ids[i - 1]], 1, generator=g)
    return ids


STREAMS = {k: _markov_stream(n, 12, s) for k, n, s in (("train", 1600, 0), ("valid", 400, 1), ("test", 400, 2))}


@pytest.fixture
def synthetic(monkeypatch):
    def load(cfg):
        return zt.Data("lm", "bpc", dict(STREAMS), vocab_size=12, info={"data_variant": "synthetic"})
    monkeypatch.setattr(zt, "load_data", load)


def _cfg(run_dir, **sections):
    base = {"device": "auto", "run_dir": str(run_dir), "experiment_name": "tiny",
            "data": {"name": "stdlib", "seq_len": 10, "batch_size": 4},
            "model": {"hidden_size": 16, "zoneout_c": 0.5, "zoneout_h": 0.05, "dropout": 0.1, "backend": "reference"},
            "trainer": {"max_epochs": 2, "progress": False, "checkpoint_every_steps": 0, "log_every_steps": 1000},
            "meta": {"table": "t", "row": "r"}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return from_dict(base)


def _rows(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ end to end

def test_run_writes_every_file_and_key(tmp_path, synthetic):
    out = zt.run(_cfg(tmp_path / "run"), command="pytest", overrides=["model.hidden_size=16"])
    run = tmp_path / "run"
    for name in ("config.yaml", "train.log", "metrics.jsonl", "metrics.json", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert not (run / ".lock").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(out))
    assert SPEC_KEYS | {"valid_bpc", "test_bpc"} <= set(metrics)
    assert metrics["status"] == "completed" and metrics["metric"] == "bpc" and metrics["epochs"] == 2
    assert (metrics["table"], metrics["row"], metrics["dataset"]) == ("t", "r", "stdlib")
    assert metrics["device"] == "cpu" and metrics["torch_version"] == torch.__version__
    assert metrics["scale"] == "cpu" and metrics["overrides"] == {"model.hidden_size": "16"}
    assert metrics["n_params"] == sum(p.numel() for p in torch.load(run / "best.pt")["model"].values())
    assert metrics["valid_bpc"] == pytest.approx(metrics["valid_loss"] / math.log(2))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(JSONL_KEYS <= set(r) for r in rows)
    best = rows[metrics["best_epoch"] - 1]
    assert metrics["valid_bpc"] == pytest.approx(best["valid_bpc"], abs=1e-12)  # recomputed on best.pt
    assert rows[-1]["valid_bpc"] < math.log2(12)   # it learned something: below uniform
    ckpt = load_checkpoint(run / "last.pt")   # weights_only: plain tensors and containers
    assert ckpt["loop"]["epoch"] == 3 and ckpt["loop"]["step"] == rows[-1]["step"]
    assert {"torch", "numpy", "python"} <= set(ckpt["rng"]) and ckpt["config"]["model"]["hidden_size"] == 16
    assert "epoch 2 done" in (run / "train.log").read_text()



def test_bounded_epoch_validation_but_final_numbers_on_whole_splits(tmp_path, synthetic, monkeypatch):
    """trainer.max_eval_batches bounds per-epoch validation only; the reported valid/test use whole splits
    unless trainer.final_eval_batches says otherwise."""
    calls = []
    real = zt.evaluate_lm

    def spy(model, batched, seq_len, *, max_batches=None, **kw):
        calls.append(max_batches)
        return real(model, batched, seq_len, max_batches=max_batches, **kw)
    monkeypatch.setattr(zt, "evaluate_lm", spy)
    zt.run(_cfg(tmp_path / "a", trainer={"max_eval_batches": 1}), command="pytest", overrides=[])
    assert calls == [1, 1, None, None]          # epoch 1 and 2 validation, then final valid and test
    calls.clear()
    zt.run(_cfg(tmp_path / "b", trainer={"max_eval_batches": 1, "final_eval_batches": 2}), command="pytest",
           overrides=[])
    assert calls == [1, 1, 2, 2]
    full = json.loads((tmp_path / "a" / "metrics.json").read_text())
    bounded = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert full["test_bpc"] != bounded["test_bpc"]   # 40 windows vs 2: a different estimate

@reliability(failure='run stopped at an epoch end and resumed',
             provoked='trainer.resume=<run dir> after 1 of 2 epochs (synthetic Markov data)',
             expected='per-epoch metrics, final valid/test and weights bitwise equal to the 2-epoch run')
def test_resume_equals_uninterrupted_run(tmp_path, synthetic):
    full = zt.run(_cfg(tmp_path / "a"))
    zt.run(_cfg(tmp_path / "b", trainer={"max_epochs": 1}))
    resumed = zt.run(_cfg(tmp_path / "b", trainer={"max_epochs": 2, "resume": str(tmp_path / "b")}))
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")      # bitwise: same floats in JSON
    assert (full["valid_bpc"], full["test_bpc"]) == (resumed["valid_bpc"], resumed["test_bpc"])
    a, b = torch.load(tmp_path / "a" / "last.pt"), torch.load(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@reliability(failure='SIGTERM mid-epoch (SLURM preemption / time limit)',
             provoked='os.kill(SIGTERM) at epoch 2 window 7; then the same run_dir again',
             expected='step finished, last.pt at window 7 with the carried hidden state, handlers restored; resume '
                      'bitwise equal')
def test_sigterm_mid_epoch_checkpoints_and_resumes_exactly(tmp_path, synthetic, monkeypatch):
    zt.run(_cfg(tmp_path / "a"))
    real = zt.train_lm_epoch

    def interrupted(*args, on_step, **kw):
        def hook(state):
            if state.epoch == 2 and state.position == 7:
                os.kill(os.getpid(), signal.SIGTERM)   # as SLURM would; handled after this step
            on_step(state)
        return real(*args, on_step=hook, **kw)

    monkeypatch.setattr(zt, "train_lm_epoch", interrupted)
    with pytest.raises(zt.Preempted, match="SIGTERM"):
        zt.run(_cfg(tmp_path / "b"))
    loop = load_checkpoint(tmp_path / "b" / "last.pt")["loop"]
    assert (loop["epoch"], loop["position"]) == (2, 7) and loop["hidden"] is not None
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # handlers restored
    monkeypatch.setattr(zt, "train_lm_epoch", real)
    zt.run(_cfg(tmp_path / "b"))      # same command, same run_dir -> resumes from last.pt
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")


@reliability(failure='NaN weights -> NaN loss (max_skipped_batches=0)',
             provoked='decoder bias filled with NaN after step 5, checkpoint every 4 steps',
             expected='status diverged, message names step 6; last.pt = step 4 with finite weights; logged')
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, synthetic, monkeypatch):
    real = zt.train_lm_epoch

    def poisoned(model, *args, on_step, **kw):
        def hook(state):
            on_step(state)
            if state.step == 5:
                with torch.no_grad():
                    model.decoder.bias.fill_(float("nan"))
        return real(model, *args, on_step=hook, **kw)

    monkeypatch.setattr(zt, "train_lm_epoch", poisoned)
    out = zt.run(_cfg(tmp_path / "run", trainer={"checkpoint_every_steps": 4}))
    assert out["status"] == "diverged" and "step 6" in out["error"] and out["valid_bpc"] is None
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "diverged"
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["loop"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert "diverged" in (tmp_path / "run" / "train.log").read_text()


@reliability(failure='checkpoint write fails half way (disk full)',
             provoked='torch.save writes a few bytes then raises OSError(ENOSPC)',
             expected="CheckpointError 'No space left ... previous checkpoint is intact'; old last.pt loads; no "
                      'temp file left')
def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"x": torch.ones(3)})

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left.*previous checkpoint is intact"):
        save_checkpoint(path, {"x": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]   # no temp file left behind


def test_device_auto_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert zt.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device='cuda' but CUDA is not available"):
        zt.resolve_device("cuda")


@reliability(failure='two runs pointed at one run folder',
             provoked="a 2nd config into a finished run's explicit run_dir; the same as a default run_dir; a folder "
                      'with a live .lock',
             expected="explicit: ConfigError listing the differing keys; default: a _1 suffix; live lock: 'in use "
                      "by a running process'")
def test_run_dirs_are_never_shared(tmp_path, synthetic):
    zt.run(_cfg(tmp_path / "run", trainer={"max_epochs": 1}))
    other = _cfg(tmp_path / "run", model={"hidden_size": 8}, trainer={"max_epochs": 1})
    with pytest.raises(ConfigError, match=r"holds a different run.*model.hidden_size: 16 -> 8"):
        zt.run(other)
    out = zt.run(other, run_dir_explicit=False)           # a default (timestamped) dir gets a suffix instead
    assert out["run_dir"] == str(tmp_path / "run_1")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / ".lock").write_text(f"{os.uname().nodename} {os.getppid()}")   # a live process
    with pytest.raises(ConfigError, match="in use by a running process"):
        zt.run(_cfg(tmp_path / "busy"))


def test_sequence_classifier_run_reports_error(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)

    def split(n):
        x = torch.rand(n, 12, generator=g)
        return x, (x[:, -1] > 0.5).long()   # learnable from the last pixel

    def load(cfg):
        return zt.Data("classification", "error", {"train": split(64), "valid": split(32), "test": split(32)},
                       num_classes=2, info={"data_source": "synthetic"})

    monkeypatch.setattr(zt, "load_data", load)
    cfg = _cfg(tmp_path / "run", data={"name": "mnist", "batch_size": 16},
               model={"zoneout_c": 0.15, "zoneout_h": 0.15, "dropout": 0.0}, optim={"name": "rmsprop", "lr": 0.01})
    out = zt.run(cfg)
    assert out["metric"] == "error" and 0 <= out["test_error"] <= 1 and out["valid_error"] is not None
    assert {"train_error", "valid_error"} <= set(_rows(tmp_path / "run")[0])


def test_wandb_one_run_per_job_finished_explicitly(tmp_path, synthetic, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, row, step):
            calls.append(("log", step))

        def finish(self, exit_code=0):
            calls.append(("finish", exit_code))

    class FakeWandb:
        run = None

        @staticmethod
        def init(**kw):
            calls.append(("init", kw))
            return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    zt.run(_cfg(tmp_path / "run", logger={"wandb": True, "mode": "offline", "project": "p"}))
    init = calls[0][1]
    assert (init["mode"], init["project"], init["dir"]) == ("offline", "p", str(tmp_path / "run"))
    assert init["id"] == (tmp_path / "run" / "wandb_id").read_text()   # a resumed job continues the same run
    assert init["config"]["model.zoneout_c"] == 0.5
    assert [c[0] for c in calls] == ["init", "log", "log", "finish"] and calls[-1] == ("finish", 0)


def test_scale_is_paper_only_without_computational_overrides():
    cfg = from_dict({"meta": {"scale": "paper"}})
    assert zt.run_scale(cfg, ["experiment=char_ptb/lstm_zoneout", "device=cuda", "logger=wandb"]) == "paper"
    assert zt.run_scale(cfg, ["experiment=char_ptb/lstm_zoneout", "model.hidden_size=256"]) == "cpu"
    assert zt.run_scale(from_dict({}), []) == "cpu"


# ------------------------------------------------------------------------------- command line (Hydra)

@pytest.fixture(scope="module")
def stdlib_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _cli(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "zoneout.train", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@reliability(failure='SIGTERM to the command-line run',
             provoked='`python -m zoneout.train ...` sent SIGTERM after step 3; the same command again',
             expected='exit code 75 (requeue), last.pt written, no metrics.json; the rerun resumes and completes')
def test_cli_trains_on_stdlib_and_is_requeue_friendly(tmp_path, stdlib_dir):
    run = tmp_path / "run"
    args = ["data=stdlib", f"data.data_dir={stdlib_dir}", "data.train_tokens=6000", "data.seq_len=20",
            "data.batch_size=4", "model.hidden_size=16", "model.zoneout_c=0.5", "model.zoneout_h=0.05",
            "trainer.max_epochs=1", "trainer.max_eval_batches=3", "trainer.log_every_steps=1",
            "trainer.progress=false", "trainer.checkpoint_every_steps=0", "model.backend=reference", f"run_dir={run}"]
    p = _cli(args)
    for line in p.stderr:                       # SIGTERM once training is under way
        if "step 3:" in line:
            p.send_signal(signal.SIGTERM)
            break
    p.communicate(timeout=120)
    assert p.returncode == zt.REQUEUE_EXIT_CODE == 75
    assert load_checkpoint(run / "last.pt")["loop"]["position"] >= 3 and not (run / "metrics.json").exists()
    p = _cli(args)                              # the requeued job: same command
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "resumed from" in err and json.loads(out.splitlines()[-1])["status"] == "completed"
    metrics = json.loads((run / "metrics.json").read_text())
    assert SPEC_KEYS | {"valid_bpc", "test_bpc"} <= set(metrics) and metrics["dataset"] == "stdlib"
    assert metrics["command"].startswith("python -m zoneout.train data=stdlib")
    assert (run / ".hydra" / "overrides.yaml").is_file()   # Hydra's record sits inside the run folder


@reliability(failure='bad value on the command line',
             provoked='`python -m zoneout.train model.zoneout_c=1.5`',
             expected="exit code 2, 'model.zoneout_c=1.5 is outside [0, 1]', no train.log written")
def test_cli_rejects_bad_config_before_work(tmp_path):
    p = _cli(["model.zoneout_c=1.5", f"run_dir={tmp_path / 'run'}"])
    out, err = p.communicate(timeout=60)
    assert p.returncode == zt.CONFIG_ERROR_EXIT_CODE
    assert "model.zoneout_c=1.5 is outside [0, 1]" in err
    assert not (tmp_path / "run" / "train.log").exists()


@reliability(failure='Ctrl-C during a command-line run',
             provoked='`python -m zoneout.train ...` sent SIGINT after step 3',
             expected='exit code 130, the step finished and last.pt written (resumable), a one-line message, '
                      'no traceback')
def test_cli_ctrl_c_checkpoints_then_stops(tmp_path, stdlib_dir):
    run = tmp_path / "run"
    args = ["data=stdlib", f"data.data_dir={stdlib_dir}", "data.train_tokens=6000", "data.seq_len=20",
            "data.batch_size=4", "model.hidden_size=16", "trainer.max_epochs=1", "trainer.log_every_steps=1",
            "trainer.progress=false", "trainer.checkpoint_every_steps=0", "model.backend=reference", f"run_dir={run}"]
    p = _cli(args)
    for line in p.stderr:
        if "step 3:" in line:
            p.send_signal(signal.SIGINT)
            break
    _, err = p.communicate(timeout=120)
    assert p.returncode == zt.INTERRUPTED_EXIT_CODE == 130, err
    assert "Traceback" not in err and "interrupted: received SIGINT" in err and f"trainer.resume={run}" in err
    assert load_checkpoint(run / "last.pt")["loop"]["position"] >= 3 and not (run / "metrics.json").exists()
    assert not (run / ".lock").exists()
    # trainer.resume alone (without the original overrides) is refused with the command that started the run
    p = _cli([f"trainer.resume={run}"])
    _, err = p.communicate(timeout=120)
    assert p.returncode == zt.CONFIG_ERROR_EXIT_CODE and "Traceback" not in err, err
    assert f"trainer.resume={run}: that run was started with other settings" in err
    assert "python -m zoneout.train data=stdlib" in err and "model.hidden_size=16" in err


@reliability(failure='run_dir or data.data_dir names an existing file; data not prepared; a misspelled key; '
                     'trainer.resume names a folder without last.pt',
             provoked='`python -m zoneout.train run_dir=<a file>`; `data.data_dir=<a file>`; `data=ptb_char '
                      'data.data_dir=<empty>`; `model.hiden_size=8`; `trainer.resume=<missing folder>`',
             expected="exit code 2 and one clear message each ('is an existing file, not a folder'; 'Not a directory'; "
                      "the missing file and `make data-ptb`; did you mean 'model.hidden_size'; no last.pt), no "
                      "traceback, no run folder created for the rejected commands")
def test_cli_bad_paths_and_keys_give_one_clear_message(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    cases = [
        (["data=stdlib", f"run_dir={tmp_path / 'afile'}"], "is an existing file, not a folder", None),
        (["data=stdlib", f"data.data_dir={tmp_path / 'afile'}", f"run_dir={tmp_path / 'r1'}"],
         "data.data_dir=", None),
        (["data=ptb_char", f"data.data_dir={tmp_path / 'empty'}", f"run_dir={tmp_path / 'r2'}"], "make data-ptb", None),
        (["model.hiden_size=8", f"run_dir={tmp_path / 'r3'}"], "did you mean 'model.hidden_size'", tmp_path / "r3"),
        ([f"trainer.resume={tmp_path / 'r4'}"], "no last.pt in that folder", tmp_path / "r4"),
    ]
    for args, says, not_created in cases:
        p = _cli(args)
        _, err = p.communicate(timeout=120)
        assert p.returncode == zt.CONFIG_ERROR_EXIT_CODE, err
        assert says in err and "Traceback" not in err, err
        assert not_created is None or not not_created.exists()
    assert (tmp_path / "afile").read_text() == "not a folder"


@reliability(failure='Ctrl-C during per-epoch validation, during the final evaluation, or twice',
             provoked='SIGINT sent from inside evaluate_lm at its first call (epoch 1 validation) / at the final '
                      'valid evaluation; a second SIGINT right after a first one during training',
             expected='validation: the epoch ends, last.pt is written, then Preempted(SIGINT) (exit 130 from the CLI); '
                      'final evaluation and second Ctrl-C: KeyboardInterrupt at once with last.pt intact, no '
                      'metrics.json, run folder released')
def test_ctrl_c_outside_the_training_step(tmp_path, stdlib_dir, monkeypatch):
    real = zt.evaluate_lm
    base = ["data=stdlib", f"data.data_dir={stdlib_dir}", "data.train_tokens=6000", "data.seq_len=20",
            "data.batch_size=4", "model.hidden_size=16", "trainer.max_epochs=2", "trainer.max_steps_per_epoch=4",
            "trainer.max_eval_batches=2", "trainer.progress=false", "model.backend=reference"]
    for name, interrupt_at_call in (("valid", 1), ("final", 3)):
        calls = []

        def evaluate(*args, **kw):
            calls.append(1)
            if len(calls) == interrupt_at_call:
                os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kw)

        monkeypatch.setattr(zt, "evaluate_lm", evaluate)
        run = tmp_path / name
        cfg = zt.config_from_container(zt.compose([*base, f"run_dir={run}"]))
        if name == "valid":
            with pytest.raises(zt.Preempted, match="SIGINT") as e:
                zt.run(cfg)
            assert load_checkpoint(run / "last.pt")["loop"]["epoch"] == 2      # epoch 1 finished and saved
            with pytest.raises(SystemExit) as ex:
                zt.exit_after_preemption(e.value)
            assert ex.value.code == zt.INTERRUPTED_EXIT_CODE == 130
        else:
            with pytest.raises(KeyboardInterrupt):
                zt.run(cfg)
            assert load_checkpoint(run / "last.pt")["loop"]["epoch"] == 3      # both epochs saved
        assert not (run / "metrics.json").exists() and not (run / ".lock").exists()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # pytest's handler is back
    monkeypatch.setattr(zt, "evaluate_lm", real)
    real_train = zt.train_lm_epoch

    def twice(*args, on_step, **kw):
        def hook(state):
            if state.position == 2:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)                       # the first one is handled (flag set) ...
                os.kill(os.getpid(), signal.SIGINT)    # ... the second stops at once
                time.sleep(0.05)
            on_step(state)
        return real_train(*args, on_step=hook, **kw)

    monkeypatch.setattr(zt, "train_lm_epoch", twice)
    run = tmp_path / "twice"
    with pytest.raises(KeyboardInterrupt):
        zt.run(zt.config_from_container(zt.compose([*base, f"run_dir={run}", "trainer.checkpoint_every_steps=1"])))
    assert load_checkpoint(run / "last.pt")["loop"]["position"] == 1 and not (run / "metrics.json").exists()


def test_demo_trains_both_models_and_prints_side_by_side(tmp_path, stdlib_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "scripts/demo.py", "--data-dir", str(stdlib_dir), "--out", str(tmp_path),
                        "--train-tokens", "3000", "--hidden", "8", "--epochs", "1", "--seq-len", "20",
                        "--batch-size", "4", "--eval-batches", "2"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    header = next(line for line in lines if "unregularized" in line and "zoneout" in line)
    assert header.index("zoneout") < header.index("unregularized")
    row = next(line for line in lines if line.startswith("test BPC"))
    z, b = (float(v) for v in row.split()[-2:])
    for name, value in (("zoneout", z), ("baseline", b)):
        run = next(tmp_path.glob(f"*_stdlib/{name}"))
        assert json.loads((run / "metrics.json").read_text())["test_bpc"] == pytest.approx(value, abs=5e-4)
        assert f"run dir ({name}): {run}" in p.stdout
    # a demo is not a result: `make results` (which scans experiments/, where the demo writes) leaves it out
    from zoneout import results
    assert len(results.find_run_dirs([tmp_path])) == 2 and results.collect([tmp_path]) == []


@reliability(failure='one job of a multirun sweep diverges',
             provoked='`python -m zoneout.train -m ... optim.lr=inf,0.002` (basic launcher)',
             expected='the diverged job is recorded as failed, the next job still runs and completes')
def test_multirun_failure_does_not_stop_the_other_jobs(tmp_path, stdlib_dir):
    sweep = tmp_path / "sweep"
    args = ["-m", "data=stdlib", f"data.data_dir={stdlib_dir}", "data.train_tokens=6000", "data.seq_len=20",
            "data.batch_size=4", "model.hidden_size=16", "trainer.max_epochs=1", "trainer.max_steps_per_epoch=3",
            "trainer.max_eval_batches=2", "trainer.final_eval_batches=2", "trainer.progress=false",
            "model.backend=reference", "optim.lr=inf,0.002", f"hydra.sweep.dir={sweep}",
            f"run_dir={sweep}/lr" + "${optim.lr}"]
    p = _cli(args)
    out, err = p.communicate(timeout=300)
    assert p.returncode != 0                       # Hydra reports the failed job at the end ...
    assert "JobFailed" in err and "diverged" in err
    ok = json.loads((sweep / "lr0.002" / "metrics.json").read_text())   # ... after the other job ran
    bad = json.loads((sweep / "lrinf" / "metrics.json").read_text())
    assert ok["status"] == "completed" and bad["status"] == "diverged"


def test_task_function_returns_validation_metric(tmp_path, synthetic, monkeypatch):
    """Optuna-style sweepers minimise what the task returns: the best valid metric, inf when diverged."""
    from omegaconf import OmegaConf
    cfg = zt.compose(["data=stdlib", "model.hidden_size=16", "trainer.max_epochs=1", "trainer.progress=false",
                      "model.backend=reference", "data.seq_len=10", "data.batch_size=4", f"run_dir={tmp_path / 'r'}"])
    value = zt._hydra_main(OmegaConf.create(cfg))
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert value == pytest.approx(metrics["valid_bpc"]) and math.isfinite(value)
