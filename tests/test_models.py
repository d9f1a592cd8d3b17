"""The paper's networks built from plain kwargs: exact equality with torch's LSTM at rate 0, shapes, one-hot vs
embedding, tied weights, init range, dropout placement and regularizer plumbing."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoneout.models import LanguageModel, SequenceClassifier, count_parameters, detach_hidden

torch.set_num_threads(1)

V, H = 11, 8


def _torch_copy(model: LanguageModel, layers: int) -> nn.LSTM:
    ref = nn.LSTM(model.rnns[0].input_size, H, layers)
    state = {}
    for l, rnn in enumerate(model.rnns):
        for k, v in rnn.state_dict().items():
            state[k.replace("_l0", f"_l{l}")] = v
    ref.load_state_dict(state)
    return ref


@pytest.mark.parametrize("embedding_size", [None, 5])
def test_rate_zero_equals_torch_lstm_stack(embedding_size):
    torch.manual_seed(0)
    m = LanguageModel(V, backend="reference", embedding_size=embedding_size, hidden_size=H, num_layers=2).eval()
    ref = _torch_copy(m, 2)
    tokens = torch.randint(0, V, (6, 3))
    logits, hidden = m(tokens)
    x = m.embedding(tokens) if embedding_size else F.one_hot(tokens, V).float()
    out, (h, c) = ref(x)
    torch.testing.assert_close(logits, m.decoder(out), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([hidden[0][0], hidden[1][0]]), h, rtol=0, atol=1e-6)
    # carrying the state across two windows equals one pass over the concatenation
    a, hid = m(tokens[:3])
    b, _ = m(tokens[3:], detach_hidden(hid))
    torch.testing.assert_close(torch.cat([a, b]), logits, rtol=0, atol=1e-6)


def test_shapes_and_parameter_count_one_hot():
    m = LanguageModel(V, backend="reference", hidden_size=H)
    assert m(torch.randint(0, V, (4, 2)))[0].shape == (4, 2, V)
    # one-hot: LSTM (4H*(V+H) + 8H) + decoder (H*V + V)
    assert count_parameters(m) == 4 * H * (V + H) + 8 * H + H * V + V


def test_tied_weights_share_and_count_once():
    m = LanguageModel(V, backend="reference", embedding_size=H, hidden_size=H, tie_weights=True)
    assert m.decoder.weight is m.embedding.weight
    untied = LanguageModel(V, backend="reference", embedding_size=H, hidden_size=H)
    assert count_parameters(untied) - count_parameters(m) == V * H
    with pytest.raises(ValueError, match="embedding_size == hidden_size"):
        LanguageModel(V, backend="reference", embedding_size=4, hidden_size=H, tie_weights=True)


def test_init_range_uniform():
    m = LanguageModel(V, backend="reference", embedding_size=5, hidden_size=H, init_range=0.04)
    for p in m.parameters():
        assert p.abs().max() <= 0.04
    assert max(p.abs().max() for p in m.parameters()) > 0.03


def test_init_range_keeps_batchnorm_gamma_and_beta():
    """bnlstm: init_range draws the weights and LSTM bias, never the batch-norm γ (= batchnorm_gamma_init) / β (= 0)."""
    m = SequenceClassifier(cell="bnlstm", hidden_size=H, init_range=0.5, batchnorm_gamma_init=0.1, max_length=5)
    norms = [mod for mod in m.modules() if "BatchNorm" in type(mod).__name__]
    assert norms
    for mod in norms:
        assert torch.equal(mod.weight, torch.full_like(mod.weight, 0.1))
        assert mod.bias is None or torch.equal(mod.bias, torch.zeros_like(mod.bias))
    normed = {id(p) for mod in norms for p in mod.parameters()}
    others = [p for p in m.parameters() if id(p) not in normed]
    assert all(p.abs().max() <= 0.5 for p in others) and max(p.abs().max() for p in others) > 0.4


def test_zoneout_rates_reach_the_layers_and_eval_is_deterministic():
    m = LanguageModel(V, backend="reference", hidden_size=H, num_layers=2, zoneout_c=0.5, zoneout_h=0.05)
    assert all((r.zoneout_c, r.zoneout_h) == (0.5, 0.05) for r in m.rnns)
    tokens = torch.randint(0, V, (5, 2))
    m.eval()
    torch.testing.assert_close(m(tokens)[0], m(tokens)[0], rtol=0, atol=0)
    m.train()
    assert not torch.equal(m(tokens)[0], m(tokens)[0])


def test_dropout_only_in_training_and_variational_mask_shared_over_time():
    m = LanguageModel(V, backend="reference", embedding_size=6, hidden_size=H, dropout=0.5, variational_dropout=True)
    x = torch.ones(7, 3, 6)
    m.train()
    y = m.drop_in(x)
    assert torch.equal(y, y[:1].expand_as(y)) and (y == 0).any()
    m.eval()
    assert torch.equal(m.drop_in(x), x)


def test_norm_stabilizer_penalty_only_in_training():
    m = LanguageModel(V, backend="reference", hidden_size=H, norm_stabilizer_beta=50.0)
    m.train()
    m(torch.randint(0, V, (6, 2)))
    assert m.regularization_loss() is not None and m.regularization_loss() > 0
    m.eval()
    m(torch.randint(0, V, (6, 2)))
    assert m.regularization_loss() is None
    cells = LanguageModel(V, backend="reference", hidden_size=H, norm_stabilizer_beta=1.0, norm_stabilizer_on_cells=True).train()
    cells(torch.randint(0, V, (6, 2)))
    assert cells.rnns[0].record_cells and cells.regularization_loss() > 0


def test_weight_noise_context_perturbs_then_restores():
    m = LanguageModel(V, backend="reference", hidden_size=H, weight_noise_std=0.1).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    tokens = torch.randint(0, V, (4, 2))
    with m.weight_noise():
        assert not torch.equal(m.decoder.weight, before["decoder.weight"])
        assert torch.equal(m.decoder.bias, before["decoder.bias"])  # biases are not perturbed
        m(tokens)[0].sum().backward()
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    m.eval()
    with m.weight_noise():
        assert torch.equal(m.decoder.weight, before["decoder.weight"])


@pytest.mark.parametrize("cell", ["gru", "rnn", "bnlstm"])
def test_other_cells_build_and_run(cell):
    kw = {"zoneout_h": 0.1} if cell != "bnlstm" else {"zoneout_c": 0.1, "zoneout_h": 0.1}
    m = LanguageModel(V, backend="reference", cell=cell, hidden_size=H, num_layers=2, max_length=6, **kw)
    logits, hidden = m(torch.randint(0, V, (6, 2)))
    assert logits.shape == (6, 2, V) and len(hidden) == 2


def test_sequence_classifier_reads_last_hidden_state():
    torch.manual_seed(0)
    m = SequenceClassifier(backend="reference", num_classes=10, hidden_size=H, zoneout_c=0.15, zoneout_h=0.15).eval()
    x = torch.rand(3, 20)
    logits = m(x)
    assert logits.shape == (3, 10)
    out, _ = m.rnns[0](x.t().unsqueeze(-1))
    torch.testing.assert_close(logits, m.classifier(out[-1]), rtol=0, atol=1e-6)
    # pMNIST paper size: 1 x 100 LSTM on one pixel per step -> ~42k parameters (paper §4.2)
    assert 41_000 < count_parameters(SequenceClassifier(backend="reference", hidden_size=100)) < 43_000
