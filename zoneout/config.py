"""Schemas of the training configuration (configs/*.yaml) as plain dataclasses, and their validation.

Keys equal the keyword arguments of what they build (STYLE.md). No Hydra here: ``zoneout.train`` composes
YAML with Hydra and hands a plain dict to :func:`from_dict`; a notebook can build a :class:`TrainConfig`
directly. Everything a run needs is checked by :func:`validate` (and :func:`validate_data_fit` once the data
sizes are known) before any training work starts; every message names the offending key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

DATASETS = ("ptb_char", "ptb_word", "text8", "enwik8", "mnist", "fashion_mnist", "stdlib")
SEQUENCE_CLASSIFICATION = ("mnist", "fashion_mnist")
LOCAL_FILE_DATASETS = ("text8", "enwik8")
CELLS = ("lstm", "gru", "rnn", "bnlstm")
NONLINEARITIES = ("tanh", "relu")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
BACKENDS = ("auto", "reference", "fused")
WANDB_MODES = ("offline", "online", "disabled")
MNIST_SOURCES = ("standard", "test_split")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what is allowed."""


@dataclass
class DataConfig:
    name: str = "ptb_char"
    data_dir: str = "data"
    mirror: Optional[str] = None
    seq_len: int = 100               # BPTT window (language models); (p)MNIST always uses its 784 pixels
    batch_size: int = 32
    eval_batch_size: Optional[int] = None   # null = batch_size
    train_tokens: Optional[int] = None      # null = whole train split; an int keeps a fixed prefix (CPU runs)
    permute: bool = False                   # permuted sequential MNIST
    permutation_seed: int = 1
    mnist_source: str = "standard"
    local_file: Optional[str] = None        # text8/enwik8 only: a local raw file (e.g. a real prefix) split 90/5/5
    prefix_bytes: Optional[int] = None      # text8/enwik8 only: the corpus = its first N bytes, split 90/5/5 (CPU)


@dataclass
class ModelConfig:
    cell: str = "lstm"
    nonlinearity: str = "tanh"
    embedding_size: Optional[int] = None    # null/0 = one-hot input
    hidden_size: int = 1000
    num_layers: int = 1
    zoneout_c: float = 0.0                  # probability a cell unit KEEPS its previous value
    zoneout_h: float = 0.0                  # probability a hidden unit KEEPS its previous value
    zoneout_shared_mask: bool = False
    recurrent_dropout: float = 0.0          # drop probability on the cell update (Semeniuta et al.)
    stochastic_depth: float = 0.0
    dropout: float = 0.0                    # non-recurrent: embeddings, between layers, before decoder
    variational_dropout: bool = False       # one dropout mask per sequence (Gal 2015)
    weight_noise_std: float = 0.0
    norm_stabilizer_beta: float = 0.0
    norm_stabilizer_on_cells: bool = False
    tie_weights: bool = False
    init_range: Optional[float] = None      # null = torch's default init
    batchnorm_gamma_init: float = 0.1       # cell=bnlstm only
    backend: str = "auto"


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 0.002
    momentum: float = 0.0
    alpha: float = 0.99                     # RMSprop decay
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_grad_norm: Optional[float] = 1.0   # null/0 = no clipping
    lr_decay: float = 1.0                   # lr(epoch) = lr * lr_decay ** max(0, epoch - lr_decay_start_epoch)
    lr_decay_start_epoch: int = 1


@dataclass
class TrainerConfig:
    max_epochs: int = 1
    max_steps_per_epoch: Optional[int] = None
    max_eval_batches: Optional[int] = None         # per-epoch validation only (model selection)
    final_eval_batches: Optional[int] = None       # final valid/test of the best model; null = whole splits
    checkpoint_every_steps: Optional[int] = None   # null/0 = only at the end of each epoch
    max_skipped_batches: int = 0                   # non-finite loss/gradient: skip up to this many batches, then stop
    resume: Optional[str] = None                   # a run dir holding last.pt
    progress: bool = True
    log_every_steps: int = 100
    deterministic: bool = False


@dataclass
class LoggerConfig:
    wandb: bool = False
    project: str = "zoneout"
    mode: str = "offline"
    group: Optional[str] = None
    name: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    seed: int = 1
    device: str = "auto"
    run_dir: Optional[str] = None
    experiment_name: str = "default"
    meta: Dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------- parsing

def _type_ok(value: Any, tp: Any) -> Any:
    """Return value coerced to tp (int -> float only), or raise TypeError."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _type_ok(value, args[0])
    if tp is Any:
        return value
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        (inner,) = typing.get_args(tp) or (Any,)
        return [_type_ok(v, inner) for v in value]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise TypeError
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    raise TypeError


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(args[0])} or null"
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, values: Dict[str, Any], prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key(key, names, prefix)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
            continue
        try:
            kwargs[key] = _type_ok(value, tp)
        except TypeError:
            raise ConfigError(f"config key '{prefix}{key}' must be {_type_name(tp)}, got {value!r} "
                              f"({type(value).__name__})") from None
    return cls(**kwargs)


def _unknown_key(key: str, names, prefix: str) -> ConfigError:
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{prefix}{key}'{hint}; allowed keys: {', '.join(names)}")


def check_key(dotted: str) -> None:
    """Raise ConfigError (with a close match and the allowed keys) unless ``dotted`` (e.g. ``model.hidden_size``)
    names a config key; anything below ``meta`` is allowed (free-form)."""
    cls: Any = TrainConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"config key '{'.'.join(parts[:i])}' has no sub-keys (got '{dotted}')")
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise _unknown_key(part, names, "".join(p + "." for p in parts[:i]))
        if cls is TrainConfig and part == "meta":
            return
        cls = typing.get_type_hints(cls)[part]


def from_dict(values: Dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from a plain (resolved) dict; unknown keys and wrong types are rejected."""
    return _build(TrainConfig, dict(values), "")


def flatten(values: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{'model': {'hidden_size': 3}} -> {'model.hidden_size': 3} (``meta`` kept as one value)."""
    out: Dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "meta":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ------------------------------------------------------------------------------------------- validation

def _choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(allowed), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{key}={value!r} is not allowed{hint}; allowed values: {', '.join(allowed)}")


def _rate(key: str, value: float, upper_open: bool = False) -> None:
    if not (0.0 <= value <= 1.0) or (upper_open and value >= 1.0) or math.isnan(value):
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise ConfigError(f"{key}={value} is outside {bound}: it is a probability")


def _positive(key: str, value, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None:
        if allow_none:
            return
        raise ConfigError(f"{key} must be set")
    if value < 0 or (value == 0 and not allow_zero) or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"{key}={value} must be {'>= 0' if allow_zero else '> 0'}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check choices, ranges and combinations; raise :class:`ConfigError` naming the key."""
    d, m, o, t, lg = cfg.data, cfg.model, cfg.optim, cfg.trainer, cfg.logger
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"device={cfg.device!r} is not allowed; allowed values: auto, cpu, cuda, cuda:<index>")
    _choice("data.name", d.name, DATASETS)
    _choice("data.mnist_source", d.mnist_source, MNIST_SOURCES)
    _positive("data.seq_len", d.seq_len)
    _positive("data.batch_size", d.batch_size)
    _positive("data.eval_batch_size", d.eval_batch_size, allow_none=True)
    _positive("data.train_tokens", d.train_tokens, allow_none=True)
    for key in ("local_file", "prefix_bytes"):
        if getattr(d, key) is not None and d.name not in LOCAL_FILE_DATASETS:
            raise ConfigError(f"data.{key} applies to data.name={' or '.join(LOCAL_FILE_DATASETS)} only, not "
                              f"data.name={d.name!r}; set data.{key}=null")
    if d.prefix_bytes is not None and d.prefix_bytes < 20:
        raise ConfigError(f"data.prefix_bytes={d.prefix_bytes} is too small to split 90/5/5; use null or >= 20")
    if d.permute and d.name not in SEQUENCE_CLASSIFICATION:
        raise ConfigError(f"data.permute=true applies to {', '.join(SEQUENCE_CLASSIFICATION)} only, "
                          f"not data.name={d.name!r}")

    _choice("model.cell", m.cell, CELLS)
    _choice("model.nonlinearity", m.nonlinearity, NONLINEARITIES)
    _choice("model.backend", m.backend, BACKENDS)
    _positive("model.hidden_size", m.hidden_size)
    _positive("model.num_layers", m.num_layers)
    _positive("model.embedding_size", m.embedding_size, allow_none=True, allow_zero=True)
    for key in ("zoneout_c", "zoneout_h", "stochastic_depth"):
        _rate(f"model.{key}", getattr(m, key))
    for key in ("recurrent_dropout", "dropout"):
        _rate(f"model.{key}", getattr(m, key), upper_open=True)  # inverted scaling divides by 1 - p
    _positive("model.weight_noise_std", m.weight_noise_std, allow_zero=True)
    _positive("model.norm_stabilizer_beta", m.norm_stabilizer_beta, allow_zero=True)
    _positive("model.init_range", m.init_range, allow_none=True)
    if m.cell in ("gru", "rnn") and m.zoneout_shared_mask:
        raise ConfigError(f"model.zoneout_shared_mask=true shares one mask between c and h; model.cell={m.cell!r} "
                          "has no cell state (set it to false and use model.zoneout_h)")
    if m.cell in ("gru", "rnn") and m.zoneout_c > 0:
        raise ConfigError(f"model.zoneout_c={m.zoneout_c} needs a cell state: it applies to cell=lstm|bnlstm, "
                          f"not model.cell={m.cell!r} (use model.zoneout_h)")
    if m.cell != "rnn" and m.nonlinearity != "tanh":
        raise ConfigError(f"model.nonlinearity={m.nonlinearity!r} applies to cell=rnn only")
    if m.norm_stabilizer_on_cells and m.cell not in ("lstm", "bnlstm"):
        raise ConfigError("model.norm_stabilizer_on_cells=true needs an LSTM cell (model.cell=lstm|bnlstm)")
    if m.tie_weights:
        if d.name in SEQUENCE_CLASSIFICATION:
            raise ConfigError("model.tie_weights=true applies to language models, not data.name="
                              f"{d.name!r}")
        if not m.embedding_size or m.embedding_size != m.hidden_size:
            raise ConfigError(f"model.tie_weights=true needs model.embedding_size == model.hidden_size "
                              f"(got {m.embedding_size} and {m.hidden_size})")

    _choice("optim.name", o.name, OPTIMIZERS)
    _positive("optim.lr", o.lr)
    _positive("optim.eps", o.eps)
    _positive("optim.weight_decay", o.weight_decay, allow_zero=True)
    _positive("optim.momentum", o.momentum, allow_zero=True)
    _rate("optim.alpha", o.alpha)
    _positive("optim.clip_grad_norm", o.clip_grad_norm, allow_none=True, allow_zero=True)
    if not (0.0 < o.lr_decay <= 1.0):
        raise ConfigError(f"optim.lr_decay={o.lr_decay} must be in (0, 1] (a factor per epoch; 1.0 = none)")
    _positive("optim.lr_decay_start_epoch", o.lr_decay_start_epoch, allow_zero=True)

    _positive("trainer.max_epochs", t.max_epochs)
    _positive("trainer.max_steps_per_epoch", t.max_steps_per_epoch, allow_none=True)
    _positive("trainer.max_eval_batches", t.max_eval_batches, allow_none=True)
    _positive("trainer.final_eval_batches", t.final_eval_batches, allow_none=True)
    _positive("trainer.checkpoint_every_steps", t.checkpoint_every_steps, allow_none=True, allow_zero=True)
    _positive("trainer.log_every_steps", t.log_every_steps)
    _positive("trainer.max_skipped_batches", t.max_skipped_batches, allow_zero=True)
    _choice("logger.mode", lg.mode, WANDB_MODES)
    return cfg


def validate_data_fit(cfg: TrainConfig, sizes: Dict[str, int]) -> None:
    """Reject a batch size / sequence length that the loaded splits cannot fill.

    ``sizes`` maps split name -> number of tokens (language models) or examples (classification).
    A language-model split laid out in ``batch_size`` columns needs at least ``seq_len + 1`` rows so that one
    full window of inputs and its shifted targets exists.
    """
    d = cfg.data
    eval_bs = d.eval_batch_size or d.batch_size
    classification = d.name in SEQUENCE_CLASSIFICATION
    for split, n in sizes.items():
        bs_key, bs = ("data.batch_size", d.batch_size) if split == "train" else ("data.eval_batch_size", eval_bs)
        if classification:
            if n < bs:
                raise ConfigError(f"{bs_key}={bs} does not fit the {split} split of {d.name} ({n} examples)")
            continue
        rows = n // bs
        if rows < 2:
            raise ConfigError(f"{bs_key}={bs} does not fit the {split} split of {d.name} ({n} tokens: "
                              f"{rows} row(s) per column; need at least 2)")
        if split == "train" and d.seq_len > rows - 1:
            raise ConfigError(f"data.seq_len={d.seq_len} does not fit the train split of {d.name}: {n} tokens in "
                              f"{bs} columns give windows of at most {rows - 1} steps")
