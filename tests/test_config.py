"""Every config file composes and validates; bad configs are rejected before any work with a message naming the
key (issue 7)."""
from pathlib import Path
import warnings

import pytest

from zoneout.config import ConfigError, TrainConfig, from_dict, validate, validate_data_fit
from zoneout.train import CONFIG_DIR, compose, config_from_container

GROUPS = ["data", "model", "optim", "trainer", "logger"]
with warnings.catch_warnings():   # the marker is registered by scripts/reliability_report.py / pyproject
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    reliability = pytest.mark.reliability


def _options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _experiments():
    root = CONFIG_DIR / "experiment"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def test_default_composition_matches_schema_defaults():
    cfg = config_from_container(compose())
    assert cfg.data.name == "ptb_char" and cfg.model.cell == "lstm" and cfg.optim.name == "adam"
    assert cfg.logger.wandb is False and cfg.device == "auto" and cfg.seed == 1
    assert cfg.run_dir.startswith("experiments/default/") and cfg.run_dir.endswith("_seed1")


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if group == "model" and option == "rnn":
        overrides.append("model.nonlinearity=tanh")
    cfg = config_from_container(compose(overrides))
    section = getattr(cfg, group)
    name = {"data": "name", "model": "cell", "optim": "name"}.get(group)
    if name:
        assert getattr(section, name) == option


def test_group_files_list_every_schema_key():
    """Each group file spells out all keys of its schema (the YAML is the documentation of the defaults)."""
    import yaml
    schema = TrainConfig().to_dict()
    for group in GROUPS:
        for option in _options(group):
            keys = set(yaml.safe_load((CONFIG_DIR / group / f"{option}.yaml").read_text()))
            assert keys == set(schema[group]), (group, option, keys ^ set(schema[group]))


@pytest.mark.parametrize("experiment", _experiments())
def test_every_experiment_composes_with_meta(experiment):
    cfg = config_from_container(compose([f"experiment={experiment}"]))
    assert cfg.experiment_name == experiment
    head = (CONFIG_DIR / "experiment" / f"{experiment}.yaml").read_text().splitlines()
    assert head[0] == "# @package _global_" and head[1].startswith("# ")
    for key in ("table", "row", "metric", "paper_valid", "paper_test", "source", "tolerance"):
        assert key in cfg.meta, (experiment, key)
    assert cfg.meta["metric"] in {"test_bpc", "test_ppl", "test_error"}


def test_char_ptb_rows_carry_paper_settings():
    z = config_from_container(compose(["experiment=char_ptb/lstm_zoneout"]))
    assert (z.model.hidden_size, z.model.num_layers, z.data.seq_len, z.data.batch_size) == (1000, 1, 100, 32)
    assert (z.optim.name, z.optim.lr, z.optim.clip_grad_norm) == ("adam", 0.002, 1.0)
    assert (z.model.zoneout_c, z.model.zoneout_h) == (0.5, 0.05)
    assert (z.meta["paper_valid"], z.meta["paper_test"]) == (1.362, 1.27)
    b = config_from_container(compose(["experiment=char_ptb/lstm_baseline"]))
    assert (b.model.zoneout_c, b.model.zoneout_h, b.model.dropout) == (0.0, 0.0, 0.0)
    assert (b.meta["paper_valid"], b.meta["paper_test"]) == (1.466, 1.356)


def test_command_line_overrides_reach_the_schema():
    cfg = config_from_container(compose(["experiment=char_ptb/lstm_zoneout", "model.hidden_size=256",
                                         "trainer.max_epochs=1", "device=cpu"]))
    assert (cfg.model.hidden_size, cfg.trainer.max_epochs, cfg.device) == (256, 1, "cpu")
    assert cfg.model.zoneout_c == 0.5


def test_data_dir_follows_environment(monkeypatch):
    monkeypatch.setenv("ZONEOUT_DATA", "/somewhere/else")
    assert compose()["data"]["data_dir"] == "/somewhere/else"


# ----------------------------------------------------------------------------------------- rejections

def _reject(values, *fragments):
    with pytest.raises(ConfigError) as e:
        validate(from_dict(values))
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))
    return str(e.value)


@reliability(failure='misspelled config key',
             provoked='model.hiden_size=10, sed=3',
             expected="ConfigError naming the key, 'did you mean model.hidden_size' and the allowed keys")
def test_misspelled_key_is_named_with_suggestion():
    _reject({"model": {"hiden_size": 10}}, "model.hiden_size", "did you mean 'model.hidden_size'")
    _reject({"sed": 3}, "'sed'", "did you mean 'seed'")


@reliability(failure='wrong value type',
             provoked="hidden_size='big', progress='yes', zoneout_c=True",
             expected='ConfigError naming the key, the expected type and the value given')
def test_wrong_type_is_named():
    _reject({"model": {"hidden_size": "big"}}, "model.hidden_size", "must be int", "'big'")
    _reject({"trainer": {"progress": "yes"}}, "trainer.progress", "bool")
    _reject({"model": {"zoneout_c": True}}, "model.zoneout_c", "float")


@reliability(failure='rate outside [0, 1]',
             provoked='zoneout_c=1.5, zoneout_h=-0.1, stochastic_depth=2, recurrent_dropout=1.0, dropout=-0.5',
             expected="ConfigError 'model.<key>=<v> is outside [0, 1]' ([0, 1) for dropouts)")
@pytest.mark.parametrize("key,value", [("zoneout_c", 1.5), ("zoneout_h", -0.1), ("stochastic_depth", 2.0),
                                       ("recurrent_dropout", 1.0), ("dropout", -0.5)])
def test_rates_outside_unit_interval(key, value):
    _reject({"model": {key: value}}, f"model.{key}={value}", "outside")


@reliability(failure='unknown dataset / cell / optimizer / device / logger mode',
             provoked='data.name=ptb, model.cell=lstn, optim.name=adamw, device=tpu, logger.mode=cloud',
             expected='ConfigError naming the key, a close match when there is one, and every allowed value')
@pytest.mark.parametrize("values,fragments", [
    ({"data": {"name": "ptb"}}, ["data.name='ptb'", "allowed values: ptb_char, ptb_word, text8, enwik8, mnist"]),
    ({"model": {"cell": "lstn"}}, ["model.cell='lstn'", "did you mean 'lstm'", "lstm, gru, rnn, bnlstm"]),
    ({"optim": {"name": "adamw"}}, ["optim.name='adamw'", "adam, sgd, rmsprop"]),
    ({"device": "tpu"}, ["device='tpu'", "auto, cpu, cuda"]),
    ({"logger": {"mode": "cloud"}}, ["logger.mode='cloud'", "offline, online, disabled"]),
])
def test_unknown_choices_list_allowed_values(values, fragments):
    _reject(values, *fragments)


@reliability(failure='settings that contradict each other',
             provoked='zoneout_c on a GRU, tie_weights with unequal sizes, permute on PTB, lr_decay 1.5, batch_size '
                      '0',
             expected='ConfigError naming the offending key and what it needs')
def test_inconsistent_combinations():
    _reject({"model": {"cell": "gru", "zoneout_c": 0.5}}, "model.zoneout_c", "model.cell='gru'")
    _reject({"model": {"cell": "rnn", "zoneout_shared_mask": True}}, "model.zoneout_shared_mask", "model.cell='rnn'")
    _reject({"trainer": {"max_epochs": 0}}, "trainer.max_epochs=0 must be > 0")
    _reject({"data": {"name": "ptb_char", "prefix_bytes": 1000}}, "data.prefix_bytes applies to data.name=text8 or enwik8")
    _reject({"model": {"tie_weights": True, "embedding_size": 10, "hidden_size": 20}}, "model.tie_weights")
    _reject({"data": {"name": "ptb_char", "permute": True}}, "data.permute")
    _reject({"optim": {"lr_decay": 1.5}}, "optim.lr_decay")
    _reject({"data": {"batch_size": 0}}, "data.batch_size=0")


@reliability(failure='sequence length / batch size larger than a split',
             provoked='validate_data_fit with splits one token too short (LM) and fewer examples than a batch '
                      '(MNIST)',
             expected="ConfigError naming data.seq_len / data.batch_size / data.eval_batch_size and the split's size")
def test_sizes_that_do_not_fit_the_data():
    cfg = validate(from_dict({"data": {"name": "stdlib", "seq_len": 100, "batch_size": 32}}))
    validate_data_fit(cfg, {"train": 32 * 101, "valid": 64, "test": 64})
    with pytest.raises(ConfigError, match=r"data.seq_len=100 does not fit the train split"):
        validate_data_fit(cfg, {"train": 32 * 100, "valid": 64, "test": 64})
    with pytest.raises(ConfigError, match=r"data.batch_size=32 does not fit the train split"):
        validate_data_fit(cfg, {"train": 40, "valid": 64, "test": 64})
    with pytest.raises(ConfigError, match=r"data.eval_batch_size=32 does not fit the valid split"):
        validate_data_fit(cfg, {"train": 32 * 101, "valid": 63, "test": 64})
    mnist = validate(from_dict({"data": {"name": "mnist", "batch_size": 100}}))
    with pytest.raises(ConfigError, match=r"data.batch_size=100 does not fit the train split of mnist \(50"):
        validate_data_fit(mnist, {"train": 50, "valid": 1000, "test": 1000})


@reliability(failure="data.local_file given for a dataset it does not apply to",
             provoked="data=ptb_char data.local_file=/tmp/x; data=text8 with the sweep's prefix file",
             expected="ptb_char: ConfigError naming data.local_file and the allowed datasets (text8 or enwik8); "
                      "text8: accepted")
def test_local_file_only_for_text8_and_enwik8():
    _reject({"data": {"name": "ptb_char", "local_file": "/tmp/x"}}, "data.local_file",
            "data.name=text8 or enwik8", "not data.name='ptb_char'")
    cfg = config_from_container(compose(["data=text8", "data.local_file=../shared/data/text8/prefix"]))
    assert cfg.data.local_file == "../shared/data/text8/prefix"
    _reject({"trainer": {"max_skipped_batches": -1}}, "trainer.max_skipped_batches=-1", ">= 0")


def test_loaders_receive_mirror_local_file_and_train_prefix(monkeypatch):
    import zoneout.data as zd
    import zoneout.train as zt
    seen = {}

    class Corpus:
        train, valid, test, vocab, metric, unit, variant = (None,) * 4 + ("bpc", "char", "prefix")
        meta = {"source_sha256": "ab" * 32, "source_bytes": 3000}

    def load_corpus(name, data_dir, download=False, **kw):
        seen.update(name=name, data_dir=data_dir, download=download, **kw)
        import torch
        c = Corpus()
        c.train, c.valid, c.test, c.vocab = torch.arange(50), torch.arange(9), torch.arange(9), list("ab")
        return c

    monkeypatch.setattr(zd, "load_corpus", load_corpus)
    cfg = from_dict({"data": {"name": "text8", "local_file": "p.txt", "mirror": "file:///m", "train_tokens": 20,
                              "prefix_bytes": 3000}})
    data = zt.load_data(cfg)
    assert seen == {"name": "text8", "data_dir": "data", "download": True, "mirror": "file:///m",
                    "local_file": "p.txt", "train_tokens": 20, "prefix_bytes": 3000}
    assert data.splits["train"].numel() == 20 and data.info["data_local_file"] == "p.txt"
    assert (data.info["data_prefix_sha256"], data.info["data_prefix_bytes"]) == ("ab" * 32, 3000)
    zt.load_data(from_dict({"data": {"name": "ptb_char"}}))
    assert (seen["download"], seen["mirror"], seen["local_file"]) == (False, None, None)
