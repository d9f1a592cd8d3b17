"""Training entry point -- the ONLY module that knows about Hydra (paper §4 experiments).

    python -m zoneout.train experiment=char_ptb/lstm_zoneout model.hidden_size=256 trainer.max_epochs=1

composes ``configs/train.yaml`` (its defaults list is the map of the app), checks it against the schemas in
:mod:`zoneout.config` (misspelled keys, wrong types, bad rates or choices are rejected before any work), then
:func:`run` loads the data, builds the model, trains and writes the run folder:

    run_dir/config.yaml     resolved config            run_dir/metrics.jsonl  one JSON line per epoch
    run_dir/train.log       readable log               run_dir/metrics.json   final results (schema: SPEC)
    run_dir/last.pt         resume point (atomic)      run_dir/best.pt        best validation weights (atomic)
    run_dir/.hydra/         Hydra's own record of the composition and overrides

Resume: ``trainer.resume=<run dir>``, or the same command with the same ``run_dir``, continues from ``last.pt``
exactly (model, optimizer, epoch/step, window position, carried hidden state, torch/numpy/python RNG streams).
``last.pt`` is written every ``trainer.checkpoint_every_steps`` optimizer steps and at every epoch end.

Exit codes: 0 done; 2 bad config or data (nothing started); 3 diverged (NaN/inf; last good checkpoint kept;
``trainer.max_skipped_batches=n`` skips, and logs, the first n such batches instead); 75 (EX_TEMPFAIL) after a
preemption signal when nobody else requeues the job.

Preemption and requeue. SIGTERM, SIGUSR1 or SIGUSR2 -> the current optimizer step finishes, ``last.pt`` is
written, the run folder is released, and then the signal goes to the handler that was installed before the run
(:func:`exit_after_preemption`):
  * Hydra's submitit launcher (``hydra/launcher=slurm_gpu``): submitit >= 1.5 asks SLURM for
    ``--signal=USR2@<signal_delay_s>`` (env ``SUBMITIT_PREEMPT_SIGNAL`` changes it) and handles it with
    ``checkpoint_and_try_requeue``: the launcher's ``checkpoint()`` returns ``DelayedSubmission(self, *the same
    arguments)``, submitit runs ``scontrol requeue`` and exits. A *preempted* job is always requeued; a *timed-out*
    one only ``max_num_timeout`` times (0 in slurm_gpu.yaml: not requeued -- rerun the command or
    scripts/reproduce.py, which resume). submitit's SIGTERM handler only logs, so on SIGTERM the job exits 75.
  * anything else (plain ``sbatch``, a terminal): exit 75; SLURM ``--requeue`` / ``RequeueExit=75`` or running the
    same command again resumes.
The requeued job must land in the same run_dir. Explicit run_dirs (scripts/reproduce.py:
``experiments/reproduce/<scale>/<row>/seed<k>``, or ``trainer.resume``) are stable. The default contains
``${now:...}``: in a Hydra multirun, the job's config is rebuilt by ``load_sweep_config``, which copies the
resolver cache of the master config pickled with the launcher, so ``${now}`` keeps the sweep's launch time and the
requeued job finds its folder (jobs of one sweep with equal experiment_name and seed get ``_1``, ``_2`` suffixes
and are told apart by their config). A single run requeued by SLURM re-resolves ``${now}``; it finds its
unfinished folder by the SLURM job id written to ``run_dir/cluster_job`` (when ``SLURM_RESTART_COUNT`` > 0).
A default run_dir held by another run gets a ``_1`` suffix; an explicit one holding a different config is refused
(run folders are never shared; ``.lock`` marks a live run, a dead process's lock is taken over).

Determinism. CPU: same seed + config + machine + torch -> bitwise identical metrics, also across a SIGKILL and
resume (tests/test_reliability.py). GPU (not tested here): the CUDA RNG state is checkpointed, so masks and
dropout resume exactly; ``trainer.deterministic=true`` sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` and
``torch.use_deterministic_algorithms(True, warn_only=True)``, making the matmuls (LSTM gates, decoder)
reproducible on the same GPU model, driver and torch build. Still not bitwise: ops without a deterministic CUDA
kernel (the embedding backward's atomic adds; torch warns), and any change of GPU model, CUDA/cuDNN or torch
version. Without the flag, cuBLAS may pick different reduction orders between runs, so GPU reruns and resumes
differ in the last bits from the first step on and drift apart over training: close, not bitwise.
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import os
import platform
import random
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from zoneout.checkpoint import (atomic_write_text, capture_rng_state, load_checkpoint, restore_rng_state,
                                save_checkpoint)
from zoneout.data.batching import batchify
from zoneout.data.download import DataError
from zoneout.config import (SEQUENCE_CLASSIFICATION, ConfigError, TrainConfig, check_key, flatten, from_dict,
                            validate, validate_data_fit)
from zoneout.engine import (DivergenceError, LoopState, build_optimizer, evaluate_classifier, evaluate_lm,
                            lr_for_epoch, set_lr, train_classifier_epoch, train_lm_epoch)
from zoneout.metrics import from_nats
from zoneout.models import LanguageModel, SequenceClassifier, count_parameters

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
REQUEUE_EXIT_CODE = 75       # EX_TEMPFAIL: preempted, checkpoint written, run the same command again
CONFIG_ERROR_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3
INTERRUPTED_EXIT_CODE = 130   # Ctrl-C (SIGINT) after last.pt was written, as a shell reports 128 + SIGINT
PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")   # SLURM: TERM (preemption/limit), --signal=USR1|USR2@s
# Keys a run may change on resume without changing what is computed.
_RESUMABLE_PREFIXES = ("trainer.", "logger.", "device", "run_dir", "data.data_dir", "data.mirror", "meta",
                       "experiment_name", "model.backend")
# Overrides that do not make a paper-settings run "CPU-sized".
_SCALE_NEUTRAL = ("experiment", "device", "run_dir", "seed", "logger", "hydra", "data.data_dir", "data.mirror",
                  "trainer.progress", "trainer.resume", "trainer.checkpoint_every_steps", "trainer.log_every_steps",
                  "trainer.deterministic", "trainer.max_skipped_batches", "model.backend")

log = logging.getLogger("zoneout.train")


def _register_resolvers() -> None:
    from omegaconf import OmegaConf
    # ${zoneout_first:a,b}: the first non-empty argument (hydra.run.dir = trainer.resume or run_dir)
    OmegaConf.register_new_resolver("zoneout_first", lambda *args: next((a for a in args if a), None),
                                    replace=True)


class Preempted(Exception):
    """A preemption signal arrived; the step finished and last.pt was written.

    ``previous_handler``: the handler that was installed for the signal before the run (submitit's requeue
    handler under Hydra's submitit launcher), handed the signal by :func:`exit_after_preemption`."""

    def __init__(self, signum: int, run_dir: Path, previous_handler: Any = None):
        super().__init__(f"received {signal.Signals(signum).name}: checkpoint written to {run_dir / 'last.pt'}; "
                         f"run the same command again to continue (with a default, timestamped run_dir: the same "
                         f"command plus trainer.resume={run_dir})")
        self.signum = signum
        self.previous_handler = previous_handler


def exit_after_preemption(e: Preempted) -> None:
    """Leave the process once ``last.pt`` is written: first hand the signal to the handler that was there before
    the run (submitit's ``checkpoint_and_try_requeue`` pickles the launcher call with its same arguments, runs
    ``scontrol requeue`` and exits; its SIGTERM handler only logs and returns), then exit with 75."""
    if e.signum == signal.SIGINT:   # Ctrl-C: the user stopped it; nobody requeues
        sys.exit(INTERRUPTED_EXIT_CODE)
    prev = e.previous_handler
    if callable(prev) and prev is not signal.default_int_handler:
        prev(e.signum, None)
    sys.exit(REQUEUE_EXIT_CODE)


# ------------------------------------------------------------------------------------------------ data

@dataclass
class Data:
    kind: str                        # "lm" | "classification"
    metric: str                      # "bpc" | "ppl" | "error"
    splits: Dict[str, Any]           # lm: 1-D LongTensor per split; classification: (x [N, T], y [N])
    vocab_size: int = 0
    num_classes: int = 10
    info: Optional[Dict[str, Any]] = None


def load_data(cfg: TrainConfig) -> Data:
    """Like :func:`_load_data`, with file-system failures under data.data_dir (a file where a folder should be, no
    permission) turned into a DataError that names the key."""
    try:
        return _load_data(cfg)
    except (NotADirectoryError, FileExistsError, PermissionError) as e:
        raise DataError(f"data.data_dir={cfg.data.data_dir!r}: {e.strerror or e}: {e.filename}; point data.data_dir "
                        "at a writable folder") from None


def _load_data(cfg: TrainConfig) -> Data:
    """Load the configured dataset through :mod:`zoneout.data` (missing data -> DataError naming make data-*).

    ``data.mirror`` set: missing files are fetched from that mirror (then the canonical URLs) and verified;
    unset: nothing is downloaded. ``data.local_file`` (text8/enwik8): a local raw file split 90/5/5;
    ``data.prefix_bytes``: only the first N bytes of it (or of the standard file) as the whole corpus."""
    d = cfg.data
    if d.name in SEQUENCE_CLASSIFICATION:
        from zoneout.data import load_mnist
        sd = load_mnist(d.name, d.data_dir, download=bool(d.mirror), permute=d.permute,
                        permutation_seed=d.permutation_seed, source=d.mnist_source, mirror=d.mirror)
        splits = {"train": sd.train, "valid": sd.valid, "test": sd.test}
        if d.train_tokens:  # for classification: a prefix of the training examples
            splits["train"] = (sd.train[0][:d.train_tokens], sd.train[1][:d.train_tokens])
        perm = sd.permutation
        info = {"data_source": sd.source, "data_label": sd.label,
                "permutation": None if perm is None else perm.tolist()}
        return Data("classification", "error", splits, num_classes=int(sd.train[1].max()) + 1, info=info)
    from zoneout.data import load_corpus
    corpus = load_corpus(d.name, d.data_dir, download=bool(d.mirror), mirror=d.mirror, local_file=d.local_file,
                         train_tokens=d.train_tokens,   # a prefix of the train split, read without the rest
                         prefix_bytes=d.prefix_bytes)   # text8/enwik8: the first N bytes as the whole corpus
    train = corpus.train[:d.train_tokens] if d.train_tokens else corpus.train
    info = {"data_variant": getattr(corpus, "variant", "standard"), "unit": corpus.unit}
    if d.local_file:
        info["data_local_file"] = str(d.local_file)
    if corpus.variant == "prefix":
        info["data_prefix_sha256"] = corpus.meta.get("source_sha256")
        info["data_prefix_bytes"] = corpus.meta.get("source_bytes")
    return Data("lm", corpus.metric, {"train": train, "valid": corpus.valid, "test": corpus.test},
                vocab_size=len(corpus.vocab), info=info)


def build_model(cfg: TrainConfig, data: Data) -> torch.nn.Module:
    kwargs = dict(vars(cfg.model))
    if data.kind == "lm":
        return LanguageModel(data.vocab_size, max_length=cfg.data.seq_len, **kwargs)
    x = data.splits["train"][0]
    return SequenceClassifier(num_classes=data.num_classes, input_size=1 if x.dim() == 2 else x.size(-1),
                              max_length=x.size(1), **kwargs)


# ---------------------------------------------------------------------------------------- environment

def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an explicit cuda without CUDA is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=auto or device=cpu")
    return torch.device(name)


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def git_sha() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def run_scale(cfg: TrainConfig, overrides: Sequence[str]) -> str:
    """"paper" for an experiment row run with its own settings, "cpu" once anything computational is changed."""
    if cfg.meta.get("scale", "cpu") != "paper":
        return "cpu"
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if not any(key == p or key.startswith(p + ".") for p in _SCALE_NEUTRAL):
            return "cpu"
    return "paper"


def parse_overrides(overrides: Sequence[str]) -> Dict[str, str]:
    out = {}
    for o in overrides:
        key, _, value = o.partition("=")
        out[key.lstrip("+~")] = value
    return out


# ------------------------------------------------------------------------------------- run directory

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _try_lock(run_dir: Path) -> bool:
    lock = run_dir / ".lock"
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                host, pid = lock.read_text().split()
                if host == socket.gethostname() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
                    lock.unlink()  # stale: its process is gone (e.g. SIGKILL)
                    continue
            except (OSError, ValueError):
                continue
            return False
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def _differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys
            if a.get(k) != b.get(k) and not any(k == p or k.startswith(p) for p in _RESUMABLE_PREFIXES)]


def cluster_job_id() -> Optional[str]:
    """The SLURM job (array task) id, which ``scontrol requeue`` keeps; None outside SLURM."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def _requeued_run_dir(base: Path) -> Optional[Path]:
    """A requeued SLURM job (SLURM_RESTART_COUNT > 0) whose default run_dir got a new ${now}: its earlier,
    unfinished folder next to ``base``, recognised by the job id written there."""
    job = cluster_job_id()
    if not job or int(os.environ.get("SLURM_RESTART_COUNT") or 0) < 1 or not base.parent.is_dir():
        return None
    for cand in sorted(base.parent.iterdir()):
        marker = cand / "cluster_job"
        if marker.is_file() and marker.read_text().strip() == job and (cand / "last.pt").is_file():
            if not (cand / "metrics.json").is_file() or \
                    json.loads((cand / "metrics.json").read_text()).get("status") != "completed":
                return cand
    return None


def _started_with(run_dir: Path) -> Optional[str]:
    """The command line that started the run in ``run_dir`` (the first ``command:`` of its train.log), or None."""
    try:
        with open(run_dir / "train.log", encoding="utf-8", errors="replace") as f:
            for line in f:
                if "| command: " in line:
                    return line.split("| command: ", 1)[1].strip()
    except OSError:
        pass
    return None


def claim_run_dir(cfg: TrainConfig, explicit: bool) -> Path:
    """The folder this run owns: trainer.resume, else run_dir. A default (timestamped) run_dir that another run
    already holds gets a numeric suffix; an explicit one holding a different run is an error. A requeued SLURM
    job with a default run_dir continues in the unfinished folder its job id wrote (see :func:`cluster_job_id`)."""
    if cfg.trainer.resume:
        run_dir = Path(cfg.trainer.resume)
        if not (run_dir / "last.pt").is_file():
            raise ConfigError(f"trainer.resume={cfg.trainer.resume!r}: no last.pt in that folder")
        explicit = True
    else:
        run_dir = Path(cfg.run_dir or f"experiments/{cfg.experiment_name}/"
                       f"{datetime.now():%Y-%m-%d_%H-%M-%S}_seed{cfg.seed}")
        if not explicit:
            run_dir = _requeued_run_dir(run_dir) or run_dir
    base = run_dir
    for i in range(1, 1000):
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ConfigError(f"run_dir={str(run_dir)!r} (or a folder above it) is an existing file, not a folder; "
                              "choose another run_dir") from None
        except OSError as e:
            raise ConfigError(f"cannot create run_dir={str(run_dir)!r}: {e.strerror or e}; "
                              "choose a writable run_dir") from None
        problem = None
        if not _try_lock(run_dir):
            problem = f"run_dir {run_dir} is in use by a running process (see {run_dir / '.lock'})"
        elif (run_dir / "last.pt").is_file():
            try:
                saved = load_checkpoint(run_dir / "last.pt").get("config", {})
            except Exception:
                (run_dir / ".lock").unlink(missing_ok=True)
                raise
            diff = _differences(saved, cfg.to_dict())
            if diff:
                (run_dir / ".lock").unlink(missing_ok=True)
                if cfg.trainer.resume:
                    started = _started_with(run_dir)
                    problem = (f"trainer.resume={cfg.trainer.resume}: that run was started with other settings "
                               f"(differs in {'; '.join(diff)}). Resuming needs the run's own settings: repeat the "
                               f"command that started it" + (f" ({started})" if started else "") +
                               f" with trainer.resume={cfg.trainer.resume} added, or run that command unchanged "
                               f"if it named this run_dir.")
                else:
                    problem = (f"run_dir {run_dir} holds a different run; it cannot be resumed with this config "
                               f"(differs in {'; '.join(diff)}). Choose another run_dir.")
        if problem is None:
            job = cluster_job_id()
            if job:
                atomic_write_text(run_dir / "cluster_job", job + "\n")
            return run_dir
        if explicit:
            raise ConfigError(problem)
        run_dir = base.with_name(f"{base.name}_{i}")
    raise ConfigError(f"could not find a free run_dir next to {base}")


def _setup_logging(run_dir: Path) -> List[logging.Handler]:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: List[logging.Handler] = [logging.FileHandler(run_dir / "train.log"), logging.StreamHandler()]
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handlers


class _PreemptionSignals:
    """Turns SIGTERM / SIGUSR1 / SIGUSR2, and a first Ctrl-C (SIGINT), into a flag the loop checks after each
    optimizer step: the step finishes, last.pt is written, then the run stops. A second Ctrl-C aborts at once
    (KeyboardInterrupt; last.pt is then the latest periodic/epoch-end checkpoint)."""

    def __init__(self):
        self.received: Optional[int] = None
        self.stop_at_once = False   # set for the final evaluation: training is over and saved, Ctrl-C just stops
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in PREEMPT_SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handle)
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle_interrupt)
        return self

    def previous(self, signum: int) -> Any:
        return self._previous.get(signum)

    def _handle(self, signum, frame):
        self.received = signum
        log.warning("received %s: finishing the current step, then checkpointing", signal.Signals(signum).name)

    def _handle_interrupt(self, signum, frame):
        if self.received is not None or self.stop_at_once:   # second Ctrl-C, or nothing left to checkpoint
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.received = signum
        log.warning("Ctrl-C: finishing the current step, writing last.pt, then stopping "
                    "(press Ctrl-C again to stop at once without it)")

    def __exit__(self, *exc):
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        return False


# ------------------------------------------------------------------------------------------ wandb

def _wandb_start(cfg: TrainConfig, run_dir: Path, flat: Dict[str, Any]):
    if not cfg.logger.wandb:
        return None
    try:
        import wandb
    except ImportError as e:
        raise ConfigError("logger.wandb=true needs the wandb package (pip install wandb)") from e
    os.environ.setdefault("WANDB_SILENT", "true")
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    atomic_write_text(id_file, run_id)
    if wandb.run is not None:       # one wandb run per job
        wandb.run.finish()
    lg = cfg.logger
    return wandb.init(project=lg.project, mode=lg.mode, group=lg.group, tags=list(lg.tags) or None,
                      name=lg.name or f"{cfg.experiment_name}/{run_dir.name}", config=flat, dir=str(run_dir),
                      id=run_id, resume="allow")


# --------------------------------------------------------------------------------------------- run

def run(cfg: TrainConfig, *, command: Optional[str] = None, overrides: Sequence[str] = (),
        run_dir_explicit: bool = True) -> Dict[str, Any]:
    """Train and evaluate one configuration; returns the metrics.json dict.

    Raises ConfigError (bad config / data fit, before any work), DataError (missing data) and
    :class:`Preempted` (after SIGTERM/SIGUSR1, checkpoint written). Divergence and crashes are recorded in
    metrics.json (status "diverged" / "failed"); divergence is returned, crashes re-raised.
    """
    validate(cfg)
    device = resolve_device(cfg.device)
    run_dir = claim_run_dir(cfg, run_dir_explicit)
    handlers = _setup_logging(run_dir)
    command = command or " ".join(shlex.quote(a) for a in [Path(sys.executable).name] + sys.argv)
    wb = None
    status = "failed"
    try:
        t, o, d = cfg.trainer, cfg.optim, cfg.data
        seed_everything(cfg.seed, t.deterministic)
        log.info("run_dir %s | device %s | command: %s", run_dir, device, command)
        data = load_data(cfg)
        validate_data_fit(cfg, {k: (v.numel() if data.kind == "lm" else v[0].size(0))
                                for k, v in data.splits.items()})
        model = build_model(cfg, data).to(device)
        optimizer = build_optimizer(model.parameters(), **vars(o))
        state = LoopState()
        resumed = (run_dir / "last.pt").is_file()
        if resumed:
            ckpt = load_checkpoint(run_dir / "last.pt", map_location=device)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            state = LoopState.from_state_dict(ckpt["loop"])
            restore_rng_state(ckpt["rng"])
            log.info("resumed from %s: epoch %d, step %d, window %d of the epoch", run_dir / "last.pt",
                     state.epoch, state.step, state.position)
        cfg_dict = cfg.to_dict()
        cfg_dict["trainer"]["resume"] = None
        from omegaconf import OmegaConf
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg_dict))
        if data.info and data.info.get("permutation") is not None:
            atomic_write_text(run_dir / "permutation.json", json.dumps(data.info["permutation"]))
        n_params = count_parameters(model)
        log.info("%s: %d parameters; data %s (%s)", type(model).__name__, n_params, d.name,
                 {k: (v.numel() if data.kind == "lm" else v[0].size(0)) for k, v in data.splits.items()})
        flat = flatten(cfg_dict)
        wb = _wandb_start(cfg, run_dir, flat)

        eval_bs = d.eval_batch_size or d.batch_size
        if data.kind == "lm":
            train_b = batchify(data.splits["train"], d.batch_size)
            evals = {k: batchify(data.splits[k], eval_bs) for k in ("valid", "test")}

            def evaluate(split: str, max_batches=t.max_eval_batches):
                loss = evaluate_lm(model, evals[split], d.seq_len, max_batches=max_batches, device=device)
                return loss, from_nats(data.metric, loss)
        else:
            def evaluate(split: str, max_batches=t.max_eval_batches):
                x, y = data.splits[split]
                return evaluate_classifier(model, x, y, eval_bs, max_batches=max_batches, device=device)

        def payload() -> Dict[str, Any]:
            return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "loop": state.state_dict(),
                    "rng": capture_rng_state(), "config": cfg_dict, "format": 1}

        tick = [time.time()]

        def on_step(st: LoopState) -> None:
            now = time.time()
            st.train_seconds += now - tick[0]
            tick[0] = now
            if st.step % t.log_every_steps == 0:
                log.info("epoch %d step %d: train loss %.4f", st.epoch, st.step, st.loss_sum / max(st.count, 1))
            every = t.checkpoint_every_steps
            if signals.received is not None:
                save_checkpoint(run_dir / "last.pt", payload())
                raise Preempted(signals.received, run_dir, signals.previous(signals.received))
            if every and st.step % every == 0:
                save_checkpoint(run_dir / "last.pt", payload())

        def on_skip(st: LoopState, why: str) -> None:
            log.warning("skipped batch %d of %d allowed (trainer.max_skipped_batches): %s", st.skipped_batches,
                        t.max_skipped_batches, why)

        with _PreemptionSignals() as signals:
            for epoch in range(state.epoch, t.max_epochs + 1):
                if state.position == 0:
                    state.start_epoch(epoch)
                lr = lr_for_epoch(o.lr, epoch, o.lr_decay, o.lr_decay_start_epoch)
                set_lr(optimizer, lr)
                tick[0] = time.time()
                common = dict(clip_grad_norm=o.clip_grad_norm, max_steps=t.max_steps_per_epoch, device=device,
                              on_step=on_step, progress=t.progress, max_skipped_batches=t.max_skipped_batches,
                              on_skip=on_skip)
                if data.kind == "lm":
                    train_loss = train_lm_epoch(model, optimizer, train_b, d.seq_len, state, metric=data.metric,
                                                **common)
                    train_metric = from_nats(data.metric, train_loss)
                else:
                    x, y = data.splits["train"]
                    train_loss, train_metric = train_classifier_epoch(model, optimizer, x, y, d.batch_size, state,
                                                                      seed=cfg.seed, **common)
                valid_loss, valid_metric = evaluate("valid")
                row = {"epoch": epoch, "step": state.step, "train_loss": train_loss,
                       f"train_{data.metric}": train_metric, "valid_loss": valid_loss,
                       f"valid_{data.metric}": valid_metric, "lr": lr, "seconds": round(state.train_seconds, 3)}
                state.history.append(row)
                improved = valid_loss < state.best_valid
                if improved:
                    state.best_valid, state.best_epoch = valid_loss, epoch
                state.start_epoch(epoch + 1)
                if improved:
                    save_checkpoint(run_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch,
                                                          "valid_loss": valid_loss, "config": cfg_dict})
                save_checkpoint(run_dir / "last.pt", payload())
                atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state.history))
                log.info("epoch %d done: train %s %.4f | valid %s %.4f%s | lr %g", epoch, data.metric,
                         train_metric, data.metric, valid_metric, " (best)" if improved else "", lr)
                if wb is not None:
                    wb.log(row, step=state.step)
                if signals.received is not None:   # arrived during validation: last.pt was just written
                    raise Preempted(signals.received, run_dir, signals.previous(signals.received))

            signals.stop_at_once = True
            if (run_dir / "best.pt").is_file():
                model.load_state_dict(load_checkpoint(run_dir / "best.pt", map_location=device)["model"])
            # per-epoch validation may be bounded (max_eval_batches); the reported numbers are not
            valid_loss, valid_metric = evaluate("valid", max_batches=t.final_eval_batches)
            test_loss, test_metric = evaluate("test", max_batches=t.final_eval_batches)
        status = "completed"
        log.info("best epoch %d: valid %s %.4f | test %s %.4f", state.best_epoch, data.metric, valid_metric,
                 data.metric, test_metric)
        results = {f"valid_{data.metric}": valid_metric, f"test_{data.metric}": test_metric,
                   "valid_loss": valid_loss, "test_loss": test_loss}
    except DivergenceError as e:
        log.error("diverged: %s", e)
        status, results = "diverged", {"error": str(e)}
    except Preempted as e:
        interrupted = e.signum == signal.SIGINT
        log.warning("%s (exit code %d)", e, INTERRUPTED_EXIT_CODE if interrupted else REQUEUE_EXIT_CODE)
        status = "interrupted" if interrupted else "preempted"
        raise
    except (ConfigError, DataError) as e:   # bad input: the message says what to do; no traceback
        log.error("%s", e)
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        log.warning("interrupted: stopped at once; %s is the latest checkpoint; run the same command (or "
                    "trainer.resume=%s) to continue", run_dir / "last.pt", run_dir)
        raise
    except BaseException as e:
        log.exception("run failed: %s", e)
        if "data" in locals() and "state" in locals():  # record the failure once the run was under way
            try:
                _write_metrics(run_dir, cfg, locals(), "failed", {"error": f"{type(e).__name__}: {e}"}, command,
                               overrides, device)
            except OSError as write_error:   # e.g. the run folder is gone; keep the original error
                log.error("could not write metrics.json: %s", write_error)
        raise
    finally:
        if wb is not None:   # finish explicitly: completed -> 0; preempted -> marked, resumed later; else failed
            if status == "preempted" and hasattr(wb, "mark_preempting"):
                wb.mark_preempting()
            wb.finish(exit_code={"completed": 0, "preempted": REQUEUE_EXIT_CODE}.get(status, 1))
        (run_dir / ".lock").unlink(missing_ok=True)
        for h in handlers:
            log.removeHandler(h)
            h.close()
    return _write_metrics(run_dir, cfg, locals(), status, results, command, overrides, device)


def _write_metrics(run_dir: Path, cfg: TrainConfig, ns: Dict[str, Any], status: str, results: Dict[str, Any],
                   command: str, overrides: Sequence[str], device: torch.device) -> Dict[str, Any]:
    data: Data = ns["data"]
    state: LoopState = ns["state"]
    model = ns.get("model")
    metric = data.metric
    out = {
        "experiment": cfg.experiment_name, "table": cfg.meta.get("table"), "row": cfg.meta.get("row"),
        "dataset": cfg.data.name, "metric": metric, "best_epoch": state.best_epoch,
        f"valid_{metric}": None, f"test_{metric}": None,
        "epochs": len(state.history), "train_seconds": round(state.train_seconds, 3),
        "tokens_per_second": round(state.tokens_seen / state.train_seconds, 1) if state.train_seconds else None,
        "n_params": count_parameters(model) if model is not None else None, "seed": cfg.seed,
        "device": str(device), "hardware": hardware_name(device), "torch_version": torch.__version__,
        "skipped_batches": state.skipped_batches,
        "git_sha": git_sha(), "scale": run_scale(cfg, overrides), "command": command, "status": status,
        "run_dir": str(run_dir), "meta": cfg.meta, **(data.info or {}),
        "overrides": parse_overrides(overrides), "config": flatten(cfg.to_dict()),
    }
    out.pop("permutation", None)
    out.update(results)
    for k, v in list(out.items()):
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None  # strict JSON
    atomic_write_text(run_dir / "metrics.json", json.dumps(out, indent=2, sort_keys=False) + "\n")
    return out


# ------------------------------------------------------------------------------------------- Hydra

def config_from_container(values: Dict[str, Any]) -> TrainConfig:
    values = {k: v for k, v in values.items() if k != "hydra"}
    return validate(from_dict(values))


def compose(overrides: Sequence[str] = (), config_dir: Path = CONFIG_DIR) -> Dict[str, Any]:
    """Compose configs/train.yaml with Hydra's compose API (tests, notebooks, scripts) -> resolved plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf
    _register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="train"):
        cfg = hydra_compose(config_name="train", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


class JobFailed(RuntimeError):
    """A job of a multirun sweep that could not finish (bad config, missing data, divergence). Raised instead of
    ``sys.exit`` in multirun mode so Hydra records this job as failed and still runs the others."""


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - no Hydra context: a plain run
        return False


def _fail(message: str, code: int):
    print(message, file=sys.stderr)
    if _is_multirun():
        raise JobFailed(f"{message} (exit code {code} in a single run)")
    sys.exit(code)


def _hydra_main(cfg) -> Optional[float]:
    """Hydra task function. Returns the best validation metric (lower is better for every metric here), so
    sweepers that optimise (Optuna) can use it; ``inf`` for a diverged run."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf
    _register_resolvers()   # also in submitit workers, which unpickle this function without running main()
    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:
        overrides = []
    command = "python -m zoneout.train " + " ".join(shlex.quote(o) for o in overrides)
    try:
        tc = config_from_container(OmegaConf.to_container(cfg, resolve=True))
        result = run(tc, command=command.strip(), overrides=overrides,
                     run_dir_explicit=any(o.split("=")[0].lstrip("+") == "run_dir" for o in overrides))
    except ConfigError as e:
        _fail(f"config error: {e}", CONFIG_ERROR_EXIT_CODE)
    except Preempted as e:
        print(f"{'interrupted' if e.signum == signal.SIGINT else 'preempted'}: {e}", file=sys.stderr)
        exit_after_preemption(e)
    except KeyboardInterrupt:
        print("interrupted (second Ctrl-C): stopped at once; the run folder's last.pt is the latest checkpoint; "
              "run the same command to continue", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)
    except Exception as e:
        if isinstance(e, DataError):
            _fail(f"data error: {e}", CONFIG_ERROR_EXIT_CODE)
        raise
    metric = result["metric"]
    print(json.dumps({k: result.get(k) for k in ("run_dir", "status", "best_epoch", f"valid_{metric}",
                                                  f"test_{metric}")}))
    if result["status"] == "diverged":
        _fail(f"diverged: {result.get('run_dir')}", DIVERGED_EXIT_CODE)
    value = result.get(f"valid_{metric}")
    return float(value) if value is not None else math.inf


def _check_command_line(argv: Sequence[str]) -> None:
    """Checks Hydra would otherwise report with its own traceback or hint, or only after creating folders:
    a misspelled key (Hydra suggests ``+key``, which is the wrong fix), a run folder that cannot be created
    (Hydra creates it before the task runs), a ``trainer.resume`` folder without ``last.pt``."""
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or arg.startswith("-"):
            continue
        name = key.lstrip("+~")
        if key[:1] not in "+~" and not name.startswith("hydra") and "/" not in name and name not in groups:
            try:
                check_key(name)
            except ConfigError as e:
                _fail(f"config error: {e}", CONFIG_ERROR_EXIT_CODE)
        if name in ("run_dir", "trainer.resume", "hydra.run.dir", "hydra.sweep.dir") and value and "$" not in value:
            _check_folder(name, Path(value))
            if name == "trainer.resume" and not (Path(value) / "last.pt").is_file():
                _fail(f"config error: trainer.resume={value!r}: no last.pt in that folder", CONFIG_ERROR_EXIT_CODE)
    if not any(a.partition("=")[0].lstrip("+") in ("run_dir", "trainer.resume", "hydra.run.dir") for a in argv):
        _check_folder("run_dir (default experiments/...)", Path("experiments") / "_")


def _check_folder(key: str, path: Path) -> None:
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                _fail(f"config error: {key}={str(path)!r}: {p} is an existing file, not a folder; choose another "
                      "run_dir", CONFIG_ERROR_EXIT_CODE)
            if not os.access(p, os.W_OK | os.X_OK):
                _fail(f"config error: {key}={str(path)!r}: {p} is not writable; choose another run_dir",
                      CONFIG_ERROR_EXIT_CODE)
            return


def main() -> None:
    import hydra
    _register_resolvers()
    try:
        _check_command_line(sys.argv[1:])
        # Hand Hydra the function of the importable module, not of ``__main__``: launchers that pickle the task
        # (submitit) can then import it by name in the worker instead of failing to copy ``__main__`` by value.
        task = importlib.import_module("zoneout.train")._hydra_main
        hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")(task)()
    except KeyboardInterrupt:   # Ctrl-C before the run started (imports, composition): nothing to save
        print("interrupted before training started", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
