"""zoneout/regularizers.py: each baseline's equations pinned with numbers, its masks' shapes and rates, and its
train vs eval behaviour. Statistical checks state their tolerance (about 5 standard errors or more)."""
import math

import pytest
import torch
from torch import nn

from zoneout.regularizers import (
    BNLSTM,
    BNLSTMCell,
    SequenceDropout,
    TimestepBatchNorm,
    keep_to_drop,
    noisy_parameters,
    norm_stabilizer_loss,
    weight_noise,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ conventions
def test_keep_to_drop_converts_the_authors_keep_probabilities():
    assert keep_to_drop(0.7) == 0.3  # char-PTB --drop_prob_igates=0.7
    assert keep_to_drop(0.5) == 0.5  # pMNIST / text8
    assert keep_to_drop(keep_to_drop(0.05)) == 0.05
    with pytest.raises(ValueError):
        keep_to_drop(1.2)


# ------------------------------------------------------------------------------------------------ weight noise
class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(11, 6)
        self.rnn = nn.LSTM(6, 8)
        self.norm = nn.LayerNorm(8)
        self.decoder = nn.Linear(8, 11)

    def forward(self, x):
        return self.decoder(self.norm(self.rnn(self.embedding(x))[0]))


def _lm_loss(model, x, y):
    out = model(x)
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def test_weight_noise_targets_weight_matrices_not_biases():
    names = [n for n, _ in noisy_parameters(TinyLM())]
    assert names == ["embedding.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "decoder.weight"]


def test_weight_noise_has_the_requested_std_and_is_fresh_each_time():
    lin = nn.Linear(200, 200)
    with weight_noise(lin, 0.075) as noise1:
        pass
    with weight_noise(lin, 0.075) as noise2:
        pass
    (e1,), (e2,) = noise1, noise2
    # 40000 samples: the std estimate's relative standard error is ~0.35 %; allow 3 %
    assert abs(e1.std().item() / 0.075 - 1) < 0.03
    assert abs(e1.mean().item()) < 0.075 * 5 / 200  # 5 standard errors of the mean
    assert not torch.equal(e1, e2)


def test_weight_noise_gradient_at_noisy_point_step_on_clean_weights_and_exact_restore():
    torch.manual_seed(0)
    model = TinyLM()
    x = torch.randint(0, 11, (5, 3))
    y = torch.randint(0, 11, (5, 3))
    clean = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    with weight_noise(model, 0.1) as noise:
        noisy = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss = _lm_loss(model, x, y)
        loss.backward()
    for (n, p), eps in zip(noisy_parameters(model), noise):
        assert torch.equal(noisy[n], clean[n] + eps)
    # restored bit for bit
    for k, v in model.state_dict().items():
        assert torch.equal(v, clean[k]), k
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    # the same gradient computed by hand at W + eps
    ref = TinyLM()
    ref.load_state_dict({**clean, **{n: noisy[n] for n in noisy}})
    _lm_loss(ref, x, y).backward()
    for n, p in ref.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-6), n

    opt.step()
    for n, p in model.named_parameters():
        assert torch.allclose(p, clean[n] - 0.5 * grads[n], atol=1e-7), n


def test_weight_noise_is_off_in_eval_and_for_zero_std():
    model = TinyLM().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with weight_noise(model, 0.5) as noise:
        assert noise == []
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k])
    model.train()
    with weight_noise(model, 0.0) as noise:
        assert noise == []


def test_weight_noise_restores_after_an_exception():
    lin = nn.Linear(4, 4)
    w = lin.weight.clone()
    with pytest.raises(RuntimeError):
        with weight_noise(lin, 1.0):
            assert not torch.equal(lin.weight, w)
            raise RuntimeError("boom")
    assert torch.equal(lin.weight, w)


# ------------------------------------------------------------------------------------------------ norm stabilizer
def test_norm_stabilizer_equation():
    # example 0: norms 1, 2, 4 -> squared steps 1, 4 -> 5 / (T-1) = 2.5 ; example 1: norms 3, 3, 3 -> 0
    h = torch.tensor([[[1.0, 0.0], [3.0, 0.0]],
                      [[0.0, 2.0], [0.0, 3.0]],
                      [[0.0, 4.0], [3.0, 0.0]]])  # [T=3, B=2, H=2]
    assert norm_stabilizer_loss(h, beta=1.0).item() == pytest.approx(1.25)
    assert norm_stabilizer_loss(h, beta=50.0).item() == pytest.approx(62.5)
    assert norm_stabilizer_loss(h.transpose(0, 1), beta=1.0, batch_first=True).item() == pytest.approx(1.25)
    assert norm_stabilizer_loss([h, h], beta=1.0).item() == pytest.approx(2.5)  # one per layer, summed
    assert norm_stabilizer_loss(h[:1], beta=1.0).item() == 0.0
    assert norm_stabilizer_loss(h, beta=0.0).item() == 0.0


def test_norm_stabilizer_gradient_is_finite_for_zero_states():
    h = torch.zeros(4, 2, 3, requires_grad=True)
    norm_stabilizer_loss(h, 50.0).backward()
    assert torch.isfinite(h.grad).all()


def test_norm_stabilizer_on_recorded_cells():
    layer = BNLSTM(3, 5)
    layer.record_cells = True
    out, (h_n, c_n) = layer(torch.randn(6, 4, 3))
    cells = layer.last_cell_sequence
    assert cells.shape == (6, 4, 5) and torch.equal(cells[-1], c_n[0])
    loss = norm_stabilizer_loss(cells, 50.0)
    loss.backward()
    assert loss.item() > 0 and layer.cells[0].weight_hh.grad is not None


# ------------------------------------------------------------------------------------------------ dropout
def test_sequence_dropout_rate_scaling_and_eval():
    torch.manual_seed(0)
    d = SequenceDropout(0.3)
    x = torch.ones(50, 20, 40)
    y = d(x)
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / 0.7)))
    dropped = (y == 0).float().mean().item()
    # n = 40000, std error of the rate ~0.0023; allow 0.015
    assert abs(dropped - 0.3) < 0.015
    assert not torch.equal(y[0], y[1])  # fresh mask per step (Zaremba)
    d.eval()
    assert torch.equal(d(x), x)


def test_variational_dropout_mask_is_constant_over_time():
    torch.manual_seed(0)
    x = torch.randn(30, 16, 50)
    d = SequenceDropout(0.5, variational=True)
    mask = d(x) / x
    assert torch.allclose(mask, mask[:1].expand_as(mask))
    assert abs((mask[0] == 0).float().mean().item() - 0.5) < 0.05  # n = 800, std error 0.018
    db = SequenceDropout(0.5, variational=True, batch_first=True)
    mb = db(x.transpose(0, 1)) / x.transpose(0, 1)
    assert torch.allclose(mb, mb[:, :1].expand_as(mb))
    assert SequenceDropout(0.5, variational=True).mask(x).shape == (1, 16, 50)


# ------------------------------------------------------------------------------------------------ recurrent BN
def test_timestep_batchnorm_train_uses_batch_stats_eval_uses_per_step_population_stats():
    bn = TimestepBatchNorm(3, max_length=4, momentum=0.5)
    assert torch.all(bn.weight == 0.1) and torch.all(bn.bias == 0)
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 6.0, 0.0]])  # mean 2, 4, 0 ; biased var 1, 4, 0
    y = bn(x, t=1)
    expected = 0.1 * (x - torch.tensor([2.0, 4.0, 0.0])) / torch.sqrt(torch.tensor([1.0, 4.0, 0.0]) + 1e-5)
    assert torch.allclose(y, expected)
    # only step 1's statistics moved: mean -> 0.5*0 + 0.5*batch mean ; var -> 0.5*1 + 0.5*unbiased var
    assert torch.allclose(bn.running_mean[1], torch.tensor([1.0, 2.0, 0.0]))
    assert torch.allclose(bn.running_var[1], torch.tensor([0.5 + 0.5 * 2.0, 0.5 + 0.5 * 8.0, 0.5]))
    for t in (0, 2, 3):
        assert torch.all(bn.running_mean[t] == 0) and torch.all(bn.running_var[t] == 1)

    bn.eval()
    bn.running_mean[3] = torch.tensor([1.0, 1.0, 1.0])
    x2 = torch.tensor([[2.0, 2.0, 2.0]])
    y1 = bn(x2, t=1)
    assert torch.allclose(y1, 0.1 * (x2 - bn.running_mean[1]) / torch.sqrt(bn.running_var[1] + 1e-5))
    # beyond max_length: reuse the last step's statistics
    assert torch.equal(bn(x2, t=10), bn(x2, t=3))
    assert torch.allclose(bn(x2, t=3), 0.1 * (x2 - 1.0) / math.sqrt(1 + 1e-5))


def _manual_bn(x, gamma, beta=None, eps=1e-5):
    y = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps) * gamma
    return y if beta is None else y + beta


def test_bnlstm_cell_equations():
    torch.manual_seed(0)
    cell = BNLSTMCell(3, 4)
    H = 4
    assert torch.all(cell.bias[H:2 * H] == 1) and torch.all(cell.bias[:H] == 0)
    w = cell.weight_hh.detach()
    for k in range(4):  # orthogonal recurrent blocks
        blk = w[k * H:(k + 1) * H]
        assert torch.allclose(blk @ blk.t(), torch.eye(H), atol=1e-5)
    x, h, c = torch.randn(5, 3), torch.randn(5, 4), torch.randn(5, 4)
    h1, c1 = cell(x, (h, c), t=0)
    with torch.no_grad():
        gates = _manual_bn(h @ cell.weight_hh.t(), 0.1) + _manual_bn(x @ cell.weight_ih.t(), 0.1) + cell.bias
        i, f, g, o = gates.chunk(4, 1)
        c_ref = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_ref = torch.sigmoid(o) * torch.tanh(_manual_bn(c_ref, 0.1, 0.0))
    assert torch.allclose(c1, c_ref, atol=1e-6) and torch.allclose(h1, h_ref, atol=1e-6)


def test_bnlstm_shapes_batch_first_and_per_timestep_statistics():
    torch.manual_seed(0)
    layer = BNLSTM(2, 6, num_layers=2, max_length=5)
    x = torch.randn(7, 3, 2)
    out, (h_n, c_n) = layer(x)
    assert out.shape == (7, 3, 6) and h_n.shape == (2, 3, 6) and c_n.shape == (2, 3, 6)
    assert torch.equal(out[-1], h_n[-1])
    stats = layer.cells[0].bn_ih.running_mean
    assert stats.shape == (5, 24)
    assert not torch.equal(stats[0], stats[1])  # each step its own statistics
    layer.eval()
    out_e, _ = layer(x)
    lb = BNLSTM(2, 6, num_layers=2, max_length=5, batch_first=True)
    lb.load_state_dict(layer.state_dict())
    lb.eval()
    assert torch.allclose(lb(x.transpose(0, 1))[0].transpose(0, 1), out_e, atol=1e-6)
    # eval is deterministic and does not touch the population statistics
    before = stats.clone()
    assert torch.equal(layer(x)[0], out_e)
    assert torch.equal(stats, before)


def test_bnlstm_zoneout_train_masks_and_eval_expectation():
    torch.manual_seed(0)
    layer = BNLSTM(3, 4, zoneout_c=0.5, zoneout_h=0.05)
    x = torch.randn(6, 5, 3)
    h0 = torch.randn(1, 5, 4)
    c0 = torch.randn(1, 5, 4)
    ones = torch.ones(6, 5, 4)
    # keep everything: states never change
    out, (h_n, c_n) = layer(x, (h0, c0), _masks=[(ones, ones, None)])
    assert torch.equal(h_n, h0) and torch.equal(c_n, c0) and torch.equal(out, h0.expand(6, 5, 4))
    # keep nothing: plain BN-LSTM
    plain = BNLSTM(3, 4)
    plain.load_state_dict(layer.state_dict())
    zeros = torch.zeros(6, 5, 4)
    assert torch.allclose(layer(x, (h0, c0), _masks=[(zeros, zeros, None)])[0], plain(x, (h0, c0))[0], atol=1e-6)

    # eval: one step equals p*prev + (1-p)*new with the cell's own eval output
    layer.eval()
    out1, (h1, c1) = layer(x[:1], (h0, c0))
    cell = layer.cells[0].eval()
    hn, cn = cell(x[0], (h0[0], c0[0]), 0)
    assert torch.allclose(c1[0], 0.5 * c0[0] + 0.5 * cn, atol=1e-6)
    assert torch.allclose(h1[0], 0.05 * h0[0] + 0.95 * hn, atol=1e-6)


def test_bnlstm_shared_mask_and_rates():
    torch.manual_seed(0)
    layer = BNLSTM(2, 64, zoneout_c=0.15, zoneout_shared_mask=True)
    (m,) = layer._sample_masks(50, 32, torch.zeros(1))
    assert m.keep_c is m.keep_h and m.update is None and m.keep_c.shape == (50, 32, 64)
    # n = 102400, std error 0.0011; allow 0.01
    assert abs(m.keep_c.mean().item() - 0.15) < 0.01
    layer.eval()
    (m,) = layer._sample_masks(50, 32, torch.zeros(1))
    assert (m.keep_h, m.keep_c) == pytest.approx((0.15, 0.15))  # eval expectation rates
    layer.train()
    # behaviour: with a shared mask, a unit keeps c exactly where it keeps h
    layer.record_cells = True
    x = torch.randn(10, 8, 2)
    out, _ = layer(x)
    cells = layer.last_cell_sequence
    kept_h = out[1:] == out[:-1]
    kept_c = cells[1:] == cells[:-1]
    assert torch.equal(kept_h, kept_c)


def test_bnlstm_stochastic_depth_and_recurrent_dropout_masks():
    torch.manual_seed(0)
    layer = BNLSTM(2, 16, stochastic_depth=0.05, recurrent_dropout=0.3)
    (m,) = layer._sample_masks(400, 50, torch.zeros(1))
    keep_c, keep_h, upd = m.keep_c, m.keep_h, m.update
    # whole step shared by all units of c and h
    assert torch.equal(keep_c, keep_h)
    assert torch.all(keep_c == keep_c[..., :1])
    assert abs(keep_c[..., 0].mean().item() - 0.05) < 0.01  # n = 20000, std error 0.0015
    # recurrent dropout: values 0 or 1/(1-p), drop rate p
    assert torch.all((upd == 0) | torch.isclose(upd, torch.tensor(1 / 0.7)))
    assert abs((upd == 0).float().mean().item() - 0.3) < 0.01
    # eval: no update mask, the step rate is 1 - (1 - 0)(1 - z)
    (m,) = layer.eval()._sample_masks(400, 50, torch.zeros(1))
    assert m.update is None and (m.keep_c, m.keep_h) == pytest.approx((0.05, 0.05))
    z = BNLSTM(2, 16, zoneout_c=0.5, zoneout_h=0.05, stochastic_depth=0.05).eval()
    (m,) = z._sample_masks(3, 2, torch.zeros(1))
    assert (m.keep_c, m.keep_h) == pytest.approx((1 - 0.5 * 0.95, 1 - 0.95 * 0.95))


def test_bnlstm_recurrent_dropout_off_in_eval():
    torch.manual_seed(0)
    a = BNLSTM(3, 4, recurrent_dropout=0.5)
    b = BNLSTM(3, 4)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(5, 2, 3)
    assert torch.equal(a(x)[0], b(x)[0])


def test_bnlstm_trains_with_zoneout_and_weight_noise():
    torch.manual_seed(0)
    layer = BNLSTM(1, 8, zoneout_c=0.15, zoneout_h=0.15, zoneout_shared_mask=True)
    head = nn.Linear(8, 2)
    model = nn.ModuleDict({"rnn": layer, "head": head})
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x = torch.randn(12, 16, 1)
    y = (x.sum(0)[:, 0] > 0).long()
    losses = []
    for _ in range(15):
        opt.zero_grad()
        with weight_noise(model, 0.01):
            loss = nn.functional.cross_entropy(head(layer(x)[0][-1]), y)
            loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
