"""The recurrent baselines that live inside zoneout/rnn.py (recurrent dropout, stochastic depth, shared mask), as
the paper's Table 1 uses them, and every regularizer of zoneout/regularizers.py combined with zoneout.
Statistical checks state their tolerance (about 5 standard errors or more)."""
import pytest
import torch
from torch import nn

from zoneout import ZoneoutGRU, ZoneoutLSTM, ZoneoutRNN
from zoneout.regularizers import BNLSTM, SequenceDropout, norm_stabilizer_loss, weight_noise
from zoneout.rnn import SequenceMasks

torch.set_num_threads(1)


def _manual_lstm_step(layer, x, h, c, update=None):
    """torch's LSTM equations, written out, with recurrent dropout's multiplier on g (Semeniuta et al. 2016)."""
    gates = x @ layer.weight_ih_l0.t() + layer.bias_ih_l0 + h @ layer.weight_hh_l0.t() + layer.bias_hh_l0
    i, f, g, o = gates.chunk(4, 1)
    g = torch.tanh(g) if update is None else torch.tanh(g) * update
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * g
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


def _inputs(T=1, B=4, I=3, H=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, B, I, generator=g), torch.randn(1, B, H, generator=g), torch.randn(1, B, H, generator=g))


# ------------------------------------------------------------------------------------------- recurrent dropout
def test_recurrent_dropout_train_equation_and_inverted_scaling():
    torch.manual_seed(0)
    p = 0.3
    layer = ZoneoutLSTM(3, 5, recurrent_dropout=p)
    x, h0, c0 = _inputs()
    mask = torch.bernoulli(torch.full((1, 4, 5), 0.7))
    upd = mask / (1 - p)
    out, (h1, c1) = layer._forward(x, (h0, c0), masks=[SequenceMasks(0.0, 0.0, upd)])
    with torch.no_grad():
        h_ref, c_ref = _manual_lstm_step(layer, x[0], h0[0], c0[0], upd[0])
    assert torch.allclose(c1[0], c_ref, atol=1e-6) and torch.allclose(h1[0], h_ref, atol=1e-6)
    # dropped units: c_t = f * c_{t-1} exactly (no memory loss: the old cell is never dropped)
    (m,) = layer._sample_masks(200, 50, x)
    assert torch.all((m.update == 0) | torch.isclose(m.update, torch.tensor(1 / 0.7)))
    # n = 50000, std error 0.002; allow 0.01
    assert abs((m.update == 0).float().mean().item() - p) < 0.01


def test_recurrent_dropout_is_off_in_eval_and_equals_torch_lstm():
    torch.manual_seed(0)
    layer = ZoneoutLSTM(3, 5, recurrent_dropout=0.5).eval()
    ref = nn.LSTM(3, 5)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(7, 2, 3)
    (m,) = layer._sample_masks(7, 2, x)
    assert m.update is None
    assert torch.allclose(layer(x)[0], ref(x)[0], atol=1e-6)


def test_recurrent_dropout_on_gru_candidate_is_off_in_eval():
    torch.manual_seed(0)
    layer = ZoneoutGRU(3, 5, recurrent_dropout=0.5).eval()
    ref = nn.GRU(3, 5)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(4, 2, 3)
    assert torch.allclose(layer(x)[0], ref(x)[0], atol=1e-6)


# ------------------------------------------------------------------------------------------- stochastic depth
def test_stochastic_depth_mask_is_one_bernoulli_per_example_and_step_shared_by_c_and_h():
    torch.manual_seed(0)
    z = 0.05
    layer = ZoneoutLSTM(3, 16, stochastic_depth=z)
    (m,) = layer._sample_masks(400, 50, torch.zeros(1))
    assert m.keep_c.shape == (400, 50, 16)
    assert torch.equal(m.keep_c, m.keep_h)
    assert torch.all(m.keep_c == m.keep_c[..., :1])  # whole step: every unit of c and h together
    # n = 20000 (example, step) pairs, std error 0.0015; allow 0.008
    assert abs(m.keep_c[..., 0].mean().item() - z) < 0.008


def test_stochastic_depth_skips_whole_steps_in_training():
    torch.manual_seed(0)
    layer = ZoneoutLSTM(3, 8, stochastic_depth=0.3)
    layer.record_cells = True
    out, _ = layer(torch.randn(60, 40, 3))
    cells = layer.last_cell_sequence
    same_h = (out[1:] == out[:-1])
    same_c = (cells[1:] == cells[:-1])
    skipped = same_h.all(-1)
    # a step is either skipped as a whole (c and h) or (generically) changes every unit
    assert torch.equal(skipped, same_c.all(-1))
    assert not (same_h.any(-1) & ~skipped).any()
    # n = 2360 pairs, std error 0.0094; allow 0.05
    assert abs(skipped.float().mean().item() - 0.3) < 0.05


def test_stochastic_depth_eval_is_the_expectation():
    torch.manual_seed(0)
    z = 0.05
    layer = ZoneoutLSTM(3, 5, stochastic_depth=z).eval()
    x, h0, c0 = _inputs()
    _, (h1, c1) = layer(x, (h0, c0))
    with torch.no_grad():
        h_new, c_new = _manual_lstm_step(layer, x[0], h0[0], c0[0])
    assert torch.allclose(c1[0], z * c0[0] + (1 - z) * c_new, atol=1e-6)
    assert torch.allclose(h1[0], z * h0[0] + (1 - z) * h_new, atol=1e-6)


# ------------------------------------------------------------------------------------------- zoneout variants
def test_shared_mask_c_and_h_keep_the_same_units():
    torch.manual_seed(0)
    layer = ZoneoutLSTM(3, 8, zoneout_c=0.5, zoneout_shared_mask=True)
    layer.record_cells = True
    out, _ = layer(torch.randn(30, 10, 3))
    cells = layer.last_cell_sequence
    kept_h, kept_c = out[1:] == out[:-1], cells[1:] == cells[:-1]
    assert torch.equal(kept_h, kept_c)
    assert abs(kept_c.float().mean().item() - 0.5) < 0.05  # n = 2320, std error 0.01


@pytest.mark.parametrize("cls,kw", [(ZoneoutGRU, {}), (ZoneoutRNN, {"nonlinearity": "tanh"})])
def test_gru_and_tanh_rnn_zoneout_eval_expectation(cls, kw):
    torch.manual_seed(0)
    p = 0.3
    layer = cls(3, 5, zoneout_h=p, **kw).eval()
    ref = {ZoneoutGRU: nn.GRU, ZoneoutRNN: nn.RNN}[cls](3, 5, **kw)
    ref.load_state_dict(layer.state_dict())
    x, h0, _ = _inputs()
    _, h1 = layer(x, h0)
    _, h_new = ref(x, h0)
    assert torch.allclose(h1, p * h0 + (1 - p) * h_new, atol=1e-6)


# ------------------------------------------------------------------------------------------- combined with zoneout
def test_stochastic_depth_with_zoneout_eval_rate():
    torch.manual_seed(0)
    z, pc, ph = 0.05, 0.5, 0.05
    layer = ZoneoutLSTM(3, 5, zoneout_c=pc, zoneout_h=ph, stochastic_depth=z).eval()
    x, h0, c0 = _inputs()
    _, (h1, c1) = layer(x, (h0, c0))
    with torch.no_grad():
        h_new, c_new = _manual_lstm_step(layer, x[0], h0[0], c0[0])
    rc, rh = 1 - (1 - z) * (1 - pc), 1 - (1 - z) * (1 - ph)
    assert torch.allclose(c1[0], rc * c0[0] + (1 - rc) * c_new, atol=1e-6)
    assert torch.allclose(h1[0], rh * h0[0] + (1 - rh) * h_new, atol=1e-6)


def test_recurrent_dropout_with_zoneout_eval_is_plain_zoneout():
    torch.manual_seed(0)
    a = ZoneoutLSTM(3, 5, zoneout_c=0.5, zoneout_h=0.05, recurrent_dropout=0.3).eval()
    b = ZoneoutLSTM(3, 5, zoneout_c=0.5, zoneout_h=0.05).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(6, 2, 3)
    assert torch.allclose(a(x)[0], b(x)[0], atol=1e-6)


def _lm_step_loss(rnn, head, x, y):
    out, _ = rnn(x)
    return nn.functional.cross_entropy(head(out).reshape(-1, head.out_features), y.reshape(-1))


def test_weight_noise_with_zoneout_layer_restores_and_steps_clean_weights():
    torch.manual_seed(0)
    rnn = ZoneoutLSTM(4, 6, zoneout_c=0.5, zoneout_h=0.05)
    head = nn.Linear(6, 4)
    model = nn.ModuleDict({"rnn": rnn, "head": head})
    clean = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(5, 3, 4), torch.randint(0, 4, (5, 3))
    with weight_noise(model, 0.075) as noise:
        assert len(noise) == 3  # weight_ih_l0, weight_hh_l0, head.weight; no biases
        _lm_step_loss(rnn, head, x, y).backward()
    for k, v in model.state_dict().items():
        assert torch.equal(v, clean[k]), k
    assert all(p.grad is not None for p in model.parameters())


def test_norm_stabilizer_on_zoneout_cells_and_hiddens():
    torch.manual_seed(0)
    rnn = ZoneoutLSTM(3, 6, zoneout_c=0.5, zoneout_h=0.05)
    rnn.record_cells = True
    out, _ = rnn(torch.randn(8, 4, 3))
    loss_h = norm_stabilizer_loss(out, 50.0)
    loss_c = norm_stabilizer_loss(rnn.last_cell_sequence, 50.0)
    (loss_h + loss_c).backward()
    assert loss_h.item() > 0 and loss_c.item() > 0
    assert torch.isfinite(rnn.weight_hh_l0.grad).all() and rnn.weight_hh_l0.grad.abs().sum() > 0


@pytest.mark.parametrize("variational", [False, True])
def test_sequence_dropout_between_zoneout_layers(variational):
    torch.manual_seed(0)
    l1, l2 = ZoneoutLSTM(3, 6, zoneout_c=0.5, zoneout_h=0.05), ZoneoutLSTM(6, 6, zoneout_c=0.5, zoneout_h=0.05)
    drop = SequenceDropout(0.5, variational=variational)
    x = torch.randn(5, 2, 3)
    out = l2(drop(l1(x)[0]))[0]
    out.sum().backward()
    assert out.shape == (5, 2, 6) and l1.weight_ih_l0.grad is not None
    for m in (l1, l2, drop):
        m.eval()
    a = l2(drop(l1(x)[0]))[0]
    assert torch.equal(a, l2(drop(l1(x)[0]))[0])  # eval is deterministic


def test_bnlstm_with_zoneout_matches_zoneout_lstm_mask_convention():
    """BNLSTM and ZoneoutLSTM draw the same masks from the same RNG state (shared sample_masks; the fused path draws with the kernels generator instead)."""
    kw = dict(zoneout_c=0.15, zoneout_h=0.15, zoneout_shared_mask=True)
    bn, lstm = BNLSTM(1, 8, **kw), ZoneoutLSTM(1, 8, backend="reference", **kw)
    torch.manual_seed(3)
    (mb,) = bn._sample_masks(20, 4, torch.zeros(1))
    torch.manual_seed(3)
    (ml,) = lstm._sample_masks(20, 4, torch.zeros(1))
    assert torch.equal(mb.keep_c, ml.keep_c) and torch.equal(mb.keep_h, ml.keep_h)
    with pytest.raises(ValueError):  # same rule as ZoneoutLSTM: a shared mask has one rate
        BNLSTM(1, 8, zoneout_c=0.5, zoneout_h=0.05, zoneout_shared_mask=True)
