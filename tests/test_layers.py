"""Pins every semantic point of the zoneout layers (issue 2 §1, paper §3) and the recurrent
baselines built into them (issue 4: recurrent dropout, stochastic depth, shared mask).

Statistical checks use n Bernoulli draws and a tolerance of 6 standard deviations
(sqrt(p(1-p)/n)), so a correct implementation fails about once in 10^9 runs.
"""
import math

import pytest
import torch
from torch import nn

import zoneout
from zoneout import (
    SequenceMasks,
    ZoneoutGRU,
    ZoneoutGRUCell,
    ZoneoutLSTM,
    ZoneoutLSTMCell,
    ZoneoutRNN,
    ZoneoutRNNCell,
)
from zoneout.functional import zoneout as zoneout_fn
from zoneout.rnn import lstm_sequence_reference, sample_masks

torch.set_num_threads(1)
DT = torch.float64
T, B, I, H = 5, 3, 4, 6


def within(rate, p, n, sigmas=6.0):
    return abs(rate - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def _ours_cls(kind):
    return {"lstm": ZoneoutLSTM, "gru": ZoneoutGRU, "rnn": ZoneoutRNN}[kind]


def _torch_cls(kind):
    return {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]


def _pair(kind, **kw):
    """A torch layer and ours with identical weights (float64)."""
    ref = _torch_cls(kind)(I, H, **kw).to(DT)
    ours = _ours_cls(kind)(I, H, **kw).to(DT)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _torch_cell_l0(layer, kind):
    cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}[kind](I, H).to(DT)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(layer, f"{name}_l0"))
    return cell


# ---------------------------------------------------------------------------------------------
# functional.zoneout
# ---------------------------------------------------------------------------------------------

def test_functional_train_picks_exactly_old_or_new_at_rate_p():
    torch.manual_seed(0)
    prev, new = torch.randn(200, 500), torch.randn(200, 500)
    out = zoneout_fn(prev, new, 0.3, training=True)
    kept, updated = out == prev, out == new
    assert torch.all(kept | updated)  # no rescaling, no mixing
    assert within(kept.double().mean().item(), 0.3, out.numel())


def test_functional_tiny_rate_still_acts():
    torch.manual_seed(0)
    prev, new = torch.zeros(400, 500), torch.ones(400, 500)
    out = zoneout_fn(prev, new, 0.01, training=True)
    rate = (out == 0).double().mean().item()
    assert rate > 0 and within(rate, 0.01, out.numel())


def test_functional_masks_are_fresh_per_element_and_call():
    torch.manual_seed(0)
    prev, new = torch.zeros(64, 64), torch.ones(64, 64)
    a = zoneout_fn(prev, new, 0.5, True)
    b = zoneout_fn(prev, new, 0.5, True)
    assert not torch.equal(a, b)
    # not constant along either axis
    assert (a.std(0) > 0).all() and (a.std(1) > 0).all()


def test_functional_eval_is_expectation_and_deterministic():
    prev, new = torch.randn(7, 3, dtype=DT), torch.randn(7, 3, dtype=DT)
    out = zoneout_fn(prev, new, 0.25, training=False)
    torch.testing.assert_close(out, 0.25 * prev + 0.75 * new, rtol=0, atol=1e-15)
    assert torch.equal(out, zoneout_fn(prev, new, 0.25, training=False))
    assert not torch.allclose(out, new)


def test_functional_explicit_mask_and_edge_rates():
    prev, new = torch.randn(4, 5), torch.randn(4, 5)
    mask = (torch.arange(20).reshape(4, 5) % 3 == 0).float()
    out = zoneout_fn(prev, new, 0.5, True, mask=mask)
    assert torch.equal(out, torch.where(mask.bool(), prev, new))
    assert torch.equal(zoneout_fn(prev, new, 0.0, True), new)
    assert torch.equal(zoneout_fn(prev, new, 1.0, True), prev)


def test_functional_gradient_follows_mask():
    prev = torch.randn(4, 5, requires_grad=True)
    new = torch.randn(4, 5, requires_grad=True)
    mask = torch.bernoulli(torch.full((4, 5), 0.5))
    zoneout_fn(prev, new, 0.5, True, mask=mask).sum().backward()
    assert torch.equal(prev.grad, mask) and torch.equal(new.grad, 1 - mask)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5"])
def test_functional_rejects_bad_rate_naming_argument(bad):
    with pytest.raises(ValueError, match=r"\bp\b"):
        zoneout_fn(torch.zeros(2), torch.ones(2), bad, True)


# ---------------------------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("training", [True, False])
def test_cells_rate_zero_equal_torch_forward_and_grad(kind, training):
    torch.manual_seed(0)
    ours = {"lstm": ZoneoutLSTMCell, "gru": ZoneoutGRUCell, "rnn": ZoneoutRNNCell}[kind](I, H).to(DT)
    ref = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}[kind](I, H).to(DT)
    ref.load_state_dict(ours.state_dict())
    ours.train(training), ref.train(training)
    x = torch.randn(B, I, dtype=DT, requires_grad=True)
    hx = torch.randn(B, H, dtype=DT) if kind != "lstm" else (torch.randn(B, H, dtype=DT), torch.randn(B, H, dtype=DT))
    for h in (None, hx):
        a, b = ours(x, h), ref(x, h)
        a = torch.cat(a, 1) if kind == "lstm" else a
        b = torch.cat(b, 1) if kind == "lstm" else b
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        ga = torch.autograd.grad(a.sum(), [x, *ours.parameters()])
        gb = torch.autograd.grad(b.sum(), [x, *ref.parameters()])
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v, rtol=0, atol=1e-12)
    # unbatched input works like torch's
    xu = torch.randn(I, dtype=DT)
    a, b = ours(xu), ref(xu)
    torch.testing.assert_close(a[0] if kind == "lstm" else a, b[0] if kind == "lstm" else b)


def test_lstm_cell_train_candidate_uses_unzoned_cell_and_eval_expectation():
    torch.manual_seed(1)
    cell = ZoneoutLSTMCell(I, H, zoneout_c=0.5, zoneout_h=0.5).to(DT)
    ref = nn.LSTMCell(I, H).to(DT)
    ref.load_state_dict(cell.state_dict())
    x, h0, c0 = (torch.randn(64, n, dtype=DT) for n in (I, H, H))
    h_new, c_new = ref(x, (h0, c0))  # un-zoned candidates
    h1, c1 = cell(x, (h0, c0))
    assert torch.all((h1 == h0) | (h1 == h_new)) and torch.all((c1 == c0) | (c1 == c_new))
    assert (h1 == h0).any() and (h1 == h_new).any()
    cell.eval()
    h1, c1 = cell(x, (h0, c0))
    torch.testing.assert_close(h1, 0.5 * h0 + 0.5 * h_new, rtol=0, atol=1e-14)
    torch.testing.assert_close(c1, 0.5 * c0 + 0.5 * c_new, rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    "ctor, arg",
    [
        (lambda v: ZoneoutLSTMCell(I, H, zoneout_c=v), "zoneout_c"),
        (lambda v: ZoneoutLSTMCell(I, H, zoneout_h=v), "zoneout_h"),
        (lambda v: ZoneoutGRUCell(I, H, zoneout_h=v), "zoneout_h"),
        (lambda v: ZoneoutRNNCell(I, H, zoneout_h=v), "zoneout_h"),
    ],
)
@pytest.mark.parametrize("bad", [-0.01, 1.01])
def test_cells_reject_bad_rates(ctor, arg, bad):
    with pytest.raises(ValueError, match=arg):
        ctor(bad)


# ---------------------------------------------------------------------------------------------
# layers: equal to torch with every rate 0
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("with_hx", [False, True])
def test_layers_rate_zero_equal_torch_forward_and_grads(kind, bidirectional, num_layers, batch_first, training, with_hx):
    torch.manual_seed(0)
    # inter-layer dropout only in eval, where torch ignores it too (train-mode dropout draws differ)
    dropout = 0.3 if (num_layers > 1 and not training) else 0.0
    ref, ours = _pair(kind, num_layers=num_layers, bidirectional=bidirectional,
                      batch_first=batch_first, dropout=dropout)
    ref.train(training), ours.train(training)
    D = 2 if bidirectional else 1
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=DT, requires_grad=True)
    hx = None
    leaves = [x]
    if with_hx:
        h0 = torch.randn(num_layers * D, B, H, dtype=DT, requires_grad=True)
        c0 = torch.randn(num_layers * D, B, H, dtype=DT, requires_grad=True)
        hx = (h0, c0) if kind == "lstm" else h0
        leaves += [h0, c0] if kind == "lstm" else [h0]
    out_r, st_r = ref(x, hx)
    out_o, st_o = ours(x, hx)
    flat_r = [out_r, *(st_r if kind == "lstm" else [st_r])]
    flat_o = [out_o, *(st_o if kind == "lstm" else [st_o])]
    for a, b in zip(flat_o, flat_r):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # gradients through every output (random cotangents) w.r.t. inputs, states and all parameters
    cot = [torch.randn_like(t) for t in flat_r]
    loss_r = sum((c * t).sum() for c, t in zip(cot, flat_r))
    loss_o = sum((c * t).sum() for c, t in zip(cot, flat_o))
    names = [n for n, _ in ref.named_parameters()]
    g_r = torch.autograd.grad(loss_r, leaves + [dict(ref.named_parameters())[n] for n in names])
    g_o = torch.autograd.grad(loss_o, leaves + [dict(ours.named_parameters())[n] for n in names])
    for a, b in zip(g_o, g_r):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_layers_unbatched_input_like_torch(kind):
    torch.manual_seed(0)
    ref, ours = _pair(kind, num_layers=2, bidirectional=True)
    x = torch.randn(T, I, dtype=DT)
    h = torch.randn(4, H, dtype=DT)
    hx = (h, torch.randn(4, H, dtype=DT)) if kind == "lstm" else h
    for state in (None, hx):
        a, b = ours(x, state), ref(x, state)
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-12)
        sa = torch.cat(a[1]) if kind == "lstm" else a[1]
        sb = torch.cat(b[1]) if kind == "lstm" else b[1]
        torch.testing.assert_close(sa, sb, rtol=0, atol=1e-12)


def test_relu_rnn_and_no_bias_equal_torch():
    torch.manual_seed(0)
    for kw in ({"nonlinearity": "relu"}, {"bias": False}):
        ref, ours = _pair("rnn", **kw)
        x = torch.randn(T, B, I, dtype=DT)
        torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=0, atol=1e-12)
    ref, ours = _pair("lstm", bias=False)
    x = torch.randn(T, B, I, dtype=DT)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=0, atol=1e-12)
    # nonlinearity is nn.RNN's 4th positional argument
    assert ZoneoutRNN(I, H, 1, "relu").nonlinearity == "relu"


# ---------------------------------------------------------------------------------------------
# layers: parameters, init, state_dict, constructor checks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_same_parameter_names_shapes_and_init_as_torch(kind):
    kw = dict(num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    ref = _torch_cls(kind)(I, H, **kw)
    torch.manual_seed(3)
    ours = _ours_cls(kind)(I, H, **kw)
    sr, so = ref.state_dict(), ours.state_dict()
    assert list(sr) == list(so)
    for k in sr:
        assert torch.equal(sr[k], so[k]), k  # same init, same RNG order


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_load_state_dict_both_ways(kind):
    kw = dict(num_layers=2, bidirectional=True, batch_first=True)
    ref = _torch_cls(kind)(I, H, **kw)
    ours = _ours_cls(kind)(I, H, zoneout_h=0.1, **kw)
    ours.load_state_dict(ref.state_dict())  # strict
    ours.eval()
    ref2 = _torch_cls(kind)(I, H, **kw)
    ref2.load_state_dict(ours.state_dict())  # strict
    for k, v in ref.state_dict().items():
        assert torch.equal(v, ref2.state_dict()[k])
    ours_off = _ours_cls(kind)(I, H, **kw)
    ours_off.load_state_dict(ref2.state_dict())
    x = torch.randn(B, T, I)
    torch.testing.assert_close(ours_off(x)[0], ref(x)[0])


def test_proj_size_refused_clearly():
    with pytest.raises(ValueError, match="proj_size"):
        ZoneoutLSTM(I, H, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        ZoneoutLSTM(I, H, 1, True, False, 0.0, False, 3)  # positional like torch


@pytest.mark.parametrize(
    "cls, arg, bad",
    [
        (ZoneoutLSTM, "zoneout_c", -0.1),
        (ZoneoutLSTM, "zoneout_c", 1.1),
        (ZoneoutLSTM, "zoneout_h", 2.0),
        (ZoneoutGRU, "zoneout_h", -1.0),
        (ZoneoutRNN, "zoneout_h", 1.5),
        (ZoneoutLSTM, "recurrent_dropout", 1.0),  # divides by 1 - p
        (ZoneoutGRU, "recurrent_dropout", -0.2),
        (ZoneoutLSTM, "stochastic_depth", 1.2),
        (ZoneoutRNN, "stochastic_depth", -0.5),
        (ZoneoutLSTM, "dropout", 1.5),
    ],
)
def test_layers_reject_rates_outside_unit_interval(cls, arg, bad):
    with pytest.raises(ValueError, match=arg):
        cls(I, H, **{arg: bad})


def test_rate_one_is_allowed_and_freezes_state():
    layer = ZoneoutGRU(I, H, zoneout_h=1.0)
    h0 = torch.randn(1, B, H)
    out, hn = layer(torch.randn(T, B, I), h0)
    assert torch.equal(hn, h0) and torch.equal(out, h0.expand(T, B, H))


def test_other_constructor_errors():
    with pytest.raises(ValueError, match="backend"):
        ZoneoutLSTM(I, H, backend="cudnn")
    with pytest.raises(ValueError, match="nonlinearity"):
        ZoneoutRNN(I, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="zoneout_shared_mask"):
        ZoneoutLSTM(I, H, zoneout_c=0.5, zoneout_h=0.05, zoneout_shared_mask=True)
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\) of two tensors, got tuple of length 3"):
        ZoneoutLSTM(I, H)(torch.randn(T, B, I), (torch.zeros(1, B, H),) * 3)
    for cls in (ZoneoutGRU, ZoneoutRNN):   # an LSTM-style (h, c) tuple given to a layer with one state
        with pytest.raises(TypeError, match=f"{cls.__name__}: hx must be one tensor h_0 .* got tuple"):
            cls(I, H)(torch.randn(T, B, I), (torch.zeros(1, B, H), torch.zeros(1, B, H)))
    for cls in (ZoneoutGRU, ZoneoutRNN):  # no cell state to share a mask with: refused, not ignored
        with pytest.raises(ValueError, match=f"zoneout_shared_mask=True .*{cls.__name__} has only h"):
            cls(I, H, zoneout_h=0.1, zoneout_shared_mask=True)
    with pytest.raises(TypeError, match="PackedSequence"):
        packed = nn.utils.rnn.pack_padded_sequence(torch.randn(T, B, I), [T] * B)
        ZoneoutLSTM(I, H)(packed)
    with pytest.raises(RuntimeError, match="hidden size"):
        ZoneoutLSTM(I, H)(torch.randn(T, B, I), (torch.zeros(1, B + 1, H), torch.zeros(1, B + 1, H)))
    assert ZoneoutLSTM(I, H, backend="reference")._sequence_fn() is lstm_sequence_reference


def test_missing_or_broken_kernels(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "zoneout.kernels", None)  # import now raises ImportError
    with pytest.raises(ValueError, match="fused"):
        ZoneoutLSTM(I, H, backend="fused")
    layer = ZoneoutLSTM(I, H, zoneout_c=0.5)  # auto falls back to the reference, silently
    assert layer._sequence_fn() is lstm_sequence_reference
    assert layer(torch.randn(T, B, I))[0].shape == (T, B, H)


def test_public_api_and_light_import():
    import subprocess
    import sys

    for name in ("ZoneoutLSTM", "ZoneoutGRU", "ZoneoutRNN", "ZoneoutLSTMCell", "ZoneoutGRUCell", "ZoneoutRNNCell"):
        assert hasattr(zoneout, name)
    code = "import sys, zoneout; bad = [m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf', 'wandb') or m.startswith(('zoneout.data', 'zoneout.train'))]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# layers: zoneout semantics
# ---------------------------------------------------------------------------------------------

def _lstm_by_hand(layer, x, h0, c0, keep_c, keep_h, update=None, zoned_candidate=False):
    """Single-layer unidirectional zoneout LSTM written out with torch's LSTMCell (the cell
    returns the UN-zoned candidates o*tanh(c_new) and c_new)."""
    cell = _torch_cell_l0(layer, "lstm")
    h, c, hs, cs = h0, c0, [], []
    for t in range(x.shape[0]):
        gates = x[t] @ layer.weight_ih_l0.T + layer.bias_ih_l0 + h @ layer.weight_hh_l0.T + layer.bias_hh_l0
        i, f, g, o = gates.chunk(4, 1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        if update is not None:
            g = g * update[t]
        c_new = f * c + i * g
        if update is None:
            hc, cc = cell(x[t], (h, c))  # cross-check against torch's own cell
            torch.testing.assert_close(cc, c_new, rtol=0, atol=1e-13)
            torch.testing.assert_close(hc, o * torch.tanh(c_new), rtol=0, atol=1e-13)
        kc = keep_c[t] if torch.is_tensor(keep_c) else keep_c
        kh = keep_h[t] if torch.is_tensor(keep_h) else keep_h
        c_next = kc * c + (1 - kc) * c_new
        h_new = o * torch.tanh(c_next if zoned_candidate else c_new)
        h = kh * h + (1 - kh) * h_new
        c = c_next
        hs.append(h)
        cs.append(c)
    return torch.stack(hs), h, c, torch.stack(cs)


def test_lstm_train_injected_masks_match_paper_equations_forward_and_grad():
    torch.manual_seed(0)
    layer = ZoneoutLSTM(I, H, zoneout_c=0.5, zoneout_h=0.3).to(DT)
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=DT, requires_grad=True)
    c0 = torch.randn(1, B, H, dtype=DT, requires_grad=True)
    masks = layer._sample_masks(T, B, x)
    m = masks[0]
    assert m.keep_c.shape == m.keep_h.shape == (T, B, H) and m.keep_c.dtype == DT
    layer.record_cells = True
    out, (hn, cn) = layer._forward(x, (h0, c0), masks=masks)
    exp_out, exp_h, exp_c, exp_cells = _lstm_by_hand(layer, x, h0[0], c0[0], m.keep_c, m.keep_h)
    torch.testing.assert_close(out, exp_out, rtol=0, atol=1e-13)
    torch.testing.assert_close(hn[0], exp_h, rtol=0, atol=1e-13)
    torch.testing.assert_close(cn[0], exp_c, rtol=0, atol=1e-13)
    torch.testing.assert_close(layer.last_cell_sequence, exp_cells, rtol=0, atol=1e-13)
    # the variant that feeds the ZONED cell into h is a different function: we are not it
    wrong, *_ = _lstm_by_hand(layer, x, h0[0], c0[0], m.keep_c, m.keep_h, zoned_candidate=True)
    assert not torch.allclose(out, wrong)
    # gradients equal the hand-written equations' gradients
    cot = torch.randn_like(out)
    params = [x, h0, c0, *layer.parameters()]
    g1 = torch.autograd.grad((cot * out).sum() + hn.sum() + 2 * cn.sum(), params)
    g2 = torch.autograd.grad((cot * exp_out).sum() + exp_h.sum() + 2 * exp_c.sum(), params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_lstm_train_every_element_is_exactly_old_or_new():
    torch.manual_seed(0)
    layer = ZoneoutLSTM(I, H, zoneout_c=0.6, zoneout_h=0.2).to(DT)
    cell = _torch_cell_l0(layer, "lstm")
    x = torch.randn(T, 20, I, dtype=DT)
    B = 20
    layer.record_cells = True
    out, _ = layer(x)
    cells = layer.last_cell_sequence
    h = c = torch.zeros(B, H, dtype=DT)
    kept_h = kept_c = 0
    for t in range(T):
        h_new, c_new = cell(x[t], (h, c))  # un-zoned candidates from the zoned previous state
        # bit-exact old value, or the new value (torch's fused cell rounds differently: 1e-13)
        assert torch.all((out[t] == h) | torch.isclose(out[t], h_new, rtol=0, atol=1e-13))
        assert torch.all((cells[t] == c) | torch.isclose(cells[t], c_new, rtol=0, atol=1e-13))
        kept_h += (out[t] == h).sum().item()
        kept_c += (cells[t] == c).sum().item()
        h, c = out[t], cells[t]
    assert 0 < kept_h < kept_c < T * B * H  # both masks act, at their different rates


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_gru_rnn_zoneout_on_h_matches_hand_computation(kind):
    torch.manual_seed(0)
    layer = _ours_cls(kind)(I, H, zoneout_h=0.4).to(DT)
    cell = _torch_cell_l0(layer, kind)
    x = torch.randn(T, B, I, dtype=DT)
    h0 = torch.randn(1, B, H, dtype=DT)
    masks = layer._sample_masks(T, B, x)
    out, hn = layer._forward(x, h0, masks=masks)
    h = h0[0]
    for t in range(T):
        k = masks[0].keep_h[t]
        h = k * h + (1 - k) * cell(x[t], h)
        torch.testing.assert_close(out[t], h, rtol=0, atol=1e-13)
    torch.testing.assert_close(hn[0], h, rtol=0, atol=1e-13)
    layer.eval()
    out_e, _ = layer(x, h0)
    h = h0[0]
    for t in range(T):
        h = 0.4 * h + 0.6 * cell(x[t], h)
    torch.testing.assert_close(out_e[-1], h, rtol=0, atol=1e-13)


def test_eval_is_expectation_deterministic_and_not_zoneout_off():
    torch.manual_seed(0)
    layer = ZoneoutLSTM(I, H, zoneout_c=0.5, zoneout_h=0.05).to(DT).eval()
    x = torch.randn(T, B, I, dtype=DT)
    h0, c0 = torch.randn(1, B, H, dtype=DT), torch.randn(1, B, H, dtype=DT)
    out, (hn, cn) = layer(x, (h0, c0))
    exp_out, exp_h, exp_c, _ = _lstm_by_hand(layer, x, h0[0], c0[0], 0.5, 0.05)
    torch.testing.assert_close(out, exp_out, rtol=0, atol=1e-13)
    torch.testing.assert_close(cn[0], exp_c, rtol=0, atol=1e-13)
    assert torch.equal(out, layer(x, (h0, c0))[0])
    off = ZoneoutLSTM(I, H).to(DT).eval()
    off.load_state_dict(layer.state_dict())
    assert not torch.allclose(out, off(x, (h0, c0))[0], atol=1e-3)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_masks_fresh_per_unit_example_timestep_at_stated_rate(kind):
    torch.manual_seed(0)
    kw = {"zoneout_c": 0.5, "zoneout_h": 0.05} if kind == "lstm" else {"zoneout_h": 0.3}
    layer = _ours_cls(kind)(I, 40, num_layers=2, **kw)
    Tm, Bm = 60, 50
    masks = layer._sample_masks(Tm, Bm, torch.zeros(1))
    assert len(masks) == 2
    for m in masks:
        for name, p in (("keep_h", kw["zoneout_h"]), ("keep_c", kw.get("zoneout_c"))):
            mk = getattr(m, name)
            if p is None:
                assert mk == 0.0
                continue
            assert mk.shape == (Tm, Bm, 40) and mk.dtype == torch.float32
            assert set(mk.unique().tolist()) <= {0.0, 1.0}
            assert within(mk.mean().item(), p, mk.numel())
            # independent along every axis: neighbours agree at the rate independent draws would
            agree = p * p + (1 - p) * (1 - p)
            for dim in range(3):
                a, b = mk.narrow(dim, 0, mk.shape[dim] - 1), mk.narrow(dim, 1, mk.shape[dim] - 1)
                assert within((a == b).double().mean().item(), agree, a.numel())
    if kind == "lstm":  # c and h masks are different draws
        assert not torch.equal(masks[0].keep_c[..., :1] > 0, masks[0].keep_h[..., :1] > 0)
    assert not torch.equal(masks[0].keep_h, masks[1].keep_h)  # per layer


def test_layer_kept_fraction_matches_rate_including_tiny_rate():
    torch.manual_seed(0)
    for p in (0.3, 0.01):
        layer = ZoneoutGRU(8, 32, zoneout_h=p)
        x = torch.randn(200, 32, 8)
        out, _ = layer(x)
        prev = torch.cat([torch.zeros(1, 32, 32), out[:-1]])
        kept = (out == prev).double().mean().item()
        assert kept > 0 and within(kept, p, out.numel())


def test_fresh_masks_every_forward_call():
    torch.manual_seed(0)
    layer = ZoneoutLSTM(I, H, zoneout_c=0.5, zoneout_h=0.5)
    x = torch.randn(T, B, I)
    assert not torch.equal(layer(x)[0], layer(x)[0])


def test_bidirectional_masks_independent_and_indexed_by_input_time():
    torch.manual_seed(0)
    layer = ZoneoutLSTM(I, H, bidirectional=True, zoneout_c=0.5, zoneout_h=0.5).to(DT)
    masks = layer._sample_masks(40, 20, torch.zeros(1, dtype=DT))
    fwd, bwd = masks
    assert within((fwd.keep_h == bwd.keep_h).double().mean().item(), 0.5, fwd.keep_h.numel())
    # reverse direction: mask[t] applies at the step that reads x[t] -> all-keep at t=T-1 (the
    # reverse direction's FIRST step) leaves its output there equal to its initial state
    x = torch.randn(T, B, I, dtype=DT)
    h0 = torch.randn(2, B, H, dtype=DT)
    c0 = torch.randn(2, B, H, dtype=DT)
    keep = torch.zeros(T, B, H, dtype=DT)
    keep[T - 1] = 1.0
    masks = [SequenceMasks(keep_h=0.0, keep_c=0.0), SequenceMasks(keep_h=keep, keep_c=keep)]
    out, _ = layer._forward(x, (h0, c0), masks=masks)
    assert torch.equal(out[T - 1, :, H:], h0[1])
    assert not torch.allclose(out[0, :, H:], h0[1])
    # and each direction's output equals a unidirectional layer with its own weights and masks
    uni = ZoneoutLSTM(I, H).to(DT)
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(uni, f"{n}_l0").copy_(getattr(layer, f"{n}_l0_reverse"))
    rev_masks = [SequenceMasks(keep_h=keep.flip(0), keep_c=keep.flip(0))]
    out_u, _ = uni._forward(x.flip(0), (h0[1:], c0[1:]), masks=rev_masks)
    torch.testing.assert_close(out[:, :, H:], out_u.flip(0), rtol=0, atol=1e-13)


def test_record_cells_layout():
    layer = ZoneoutLSTM(I, H, num_layers=2, bidirectional=True, batch_first=True, zoneout_c=0.3)
    x = torch.randn(B, T, I)
    layer(x)
    assert layer.last_cell_sequence is None
    layer.record_cells = True
    out, (hn, cn) = layer(x)
    cells = layer.last_cell_sequence
    assert cells.shape == out.shape == (B, T, 2 * H)
    torch.testing.assert_close(cells[:, -1, :H], cn[2])  # top layer forward: last step
    torch.testing.assert_close(cells[:, 0, H:], cn[3])  # top layer reverse: first step


# ---------------------------------------------------------------------------------------------
# recurrent baselines inside the layers
# ---------------------------------------------------------------------------------------------

def test_recurrent_dropout_masks_equation_and_eval():
    torch.manual_seed(0)
    p = 0.7
    layer = ZoneoutLSTM(I, 30, recurrent_dropout=p)
    m = layer._sample_masks(80, 40, torch.zeros(1))[0]
    u = m.update
    assert u.shape == (80, 40, 30)
    vals = u.unique()
    assert len(vals) == 2 and vals[0] == 0 and vals[1] == pytest.approx(1 / (1 - p))
    assert within((u == 0).double().mean().item(), p, u.numel())
    assert m.keep_c == 0.0 and m.keep_h == 0.0
    # equation: c = f*c_prev + i*(g*mask)/(1-p) with zoneout on top
    layer = ZoneoutLSTM(I, H, recurrent_dropout=0.5, zoneout_c=0.3, zoneout_h=0.3).to(DT)
    x = torch.randn(T, B, I, dtype=DT)
    masks = layer._sample_masks(T, B, x)
    out, (hn, cn) = layer._forward(x, None, masks=masks)
    zeros = torch.zeros(B, H, dtype=DT)
    exp_out, _, exp_c, _ = _lstm_by_hand(layer, x, zeros, zeros, masks[0].keep_c, masks[0].keep_h, masks[0].update)
    torch.testing.assert_close(out, exp_out, rtol=0, atol=1e-13)
    torch.testing.assert_close(cn[0], exp_c, rtol=0, atol=1e-13)
    # eval: no mask, no scaling -> identical to the layer without recurrent dropout
    layer.eval()
    assert layer._sample_masks(T, B, x)[0].update is None
    plain = ZoneoutLSTM(I, H, zoneout_c=0.3, zoneout_h=0.3).to(DT).eval()
    plain.load_state_dict(layer.state_dict())
    assert torch.equal(layer(x)[0], plain(x)[0])


def test_recurrent_dropout_gru_acts_on_candidate():
    torch.manual_seed(0)
    layer = ZoneoutGRU(I, H, recurrent_dropout=0.5).to(DT)
    cell = _torch_cell_l0(layer, "gru")
    x = torch.randn(T, B, I, dtype=DT)
    masks = layer._sample_masks(T, B, x)
    out, _ = layer._forward(x, None, masks=masks)
    h = torch.zeros(B, H, dtype=DT)
    for t in range(T):
        gx = x[t] @ cell.weight_ih.T + cell.bias_ih
        gh = h @ cell.weight_hh.T + cell.bias_hh
        r = (gx[:, :H] + gh[:, :H]).sigmoid()
        z = (gx[:, H:2 * H] + gh[:, H:2 * H]).sigmoid()
        n = torch.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:]) * masks[0].update[t]
        h = (1 - z) * n + z * h
        torch.testing.assert_close(out[t], h, rtol=0, atol=1e-13)


def test_stochastic_depth_mask_shape_rate_and_whole_step_skips():
    torch.manual_seed(0)
    z = 0.05
    layer = ZoneoutLSTM(I, 16, stochastic_depth=z)
    m = layer._sample_masks(400, 50, torch.zeros(1))[0]
    assert m.keep_c.shape == (400, 50, 16)
    assert torch.equal(m.keep_c, m.keep_h)  # one draw shared by c and h
    # one Bernoulli per example per timestep: constant across units
    assert torch.equal(m.keep_c, m.keep_c[..., :1].expand_as(m.keep_c))
    step = m.keep_c[..., 0]
    assert within(step.mean().item(), z, step.numel())
    assert within((step[1:] == step[:-1]).double().mean().item(), z * z + (1 - z) ** 2, step[1:].numel())
    # combined with zoneout: a unit keeps if the step is skipped OR zoneout keeps it
    layer = ZoneoutLSTM(I, 16, stochastic_depth=0.2, zoneout_c=0.5, zoneout_h=0.1)
    m = layer._sample_masks(400, 50, torch.zeros(1))[0]
    assert within(m.keep_c.mean().item(), 1 - 0.8 * 0.5, m.keep_c.numel(), sigmas=8)
    assert within(m.keep_h.mean().item(), 1 - 0.8 * 0.9, m.keep_h.numel(), sigmas=8)
    skipped = m.keep_c.amin(-1) == 1  # (almost surely) the skipped steps
    assert torch.all(m.keep_h.amin(-1)[skipped] == 1)
    # through the layer: a skipped step keeps both h and c of that example exactly
    layer = ZoneoutLSTM(I, H, stochastic_depth=0.5).to(DT)
    layer.record_cells = True
    x = torch.randn(T, B, I, dtype=DT)
    masks = layer._sample_masks(T, B, x)
    out, _ = layer._forward(x, None, masks=masks)
    cells = layer.last_cell_sequence
    prev_h, prev_c = torch.zeros(B, H, dtype=DT), torch.zeros(B, H, dtype=DT)
    for t in range(T):
        s = masks[0].keep_c[t, :, 0] == 1
        assert torch.equal(out[t][s], prev_h[s]) and torch.equal(cells[t][s], prev_c[s])
        assert not torch.isclose(out[t][~s], prev_h[~s]).all(-1).any()
        prev_h, prev_c = out[t], cells[t]


def test_stochastic_depth_eval_is_expectation():
    torch.manual_seed(0)
    z, pc, ph = 0.2, 0.5, 0.1
    layer = ZoneoutLSTM(I, H, stochastic_depth=z, zoneout_c=pc, zoneout_h=ph).to(DT).eval()
    eff = ZoneoutLSTM(I, H, zoneout_c=1 - (1 - z) * (1 - pc), zoneout_h=1 - (1 - z) * (1 - ph)).to(DT).eval()
    eff.load_state_dict(layer.state_dict())
    x = torch.randn(T, B, I, dtype=DT)
    torch.testing.assert_close(layer(x)[0], eff(x)[0], rtol=0, atol=1e-14)
    only = ZoneoutGRU(I, H, stochastic_depth=z).to(DT).eval()
    ref = ZoneoutGRU(I, H, zoneout_h=z).to(DT).eval()
    ref.load_state_dict(only.state_dict())
    torch.testing.assert_close(only(x)[0], ref(x)[0], rtol=0, atol=1e-14)


def test_shared_mask_semantics():
    torch.manual_seed(0)
    layer = ZoneoutLSTM(I, 30, zoneout_c=0.15, zoneout_shared_mask=True)
    m = layer._sample_masks(100, 40, torch.zeros(1))[0]
    assert m.keep_c is m.keep_h
    assert within(m.keep_h.mean().item(), 0.15, m.keep_h.numel())
    # zoneout_h equal to zoneout_c is accepted; eval uses zoneout_c for both c and h
    layer = ZoneoutLSTM(I, H, zoneout_c=0.15, zoneout_h=0.15, zoneout_shared_mask=True).to(DT)
    assert layer._sample_masks(T, B, torch.zeros(1)) is not None
    layer.eval()
    m = layer._sample_masks(T, B, torch.zeros(1))[0]
    assert m.keep_c == m.keep_h == 0.15
    # train: where the shared mask keeps, both h and c keep
    layer.train()
    layer.record_cells = True
    x = torch.randn(T, B, I, dtype=DT)
    masks = layer._sample_masks(T, B, x)
    out, _ = layer._forward(x, None, masks=masks)
    k = masks[0].keep_c.bool()
    prev_h = torch.cat([torch.zeros(1, B, H, dtype=DT), out[:-1]])
    prev_c = torch.cat([torch.zeros(1, B, H, dtype=DT), layer.last_cell_sequence[:-1]])
    assert torch.equal(out[k], prev_h[k]) and torch.equal(layer.last_cell_sequence[k], prev_c[k])


def test_sample_masks_eval_rates():
    m = sample_masks(3, 2, 4, torch.zeros(1), training=False, zoneout_c=0.5, zoneout_h=0.05)
    assert m == SequenceMasks(keep_h=0.05, keep_c=0.5, update=None)


# ---------------------------------------------------------------------------------------------
# backend dispatch: the layer's side of the kernels contract (the kernels' own tests live in
# tests/test_kernels*.py; this checks the glue with the pure-PyTorch kernel path, no compile)
# ---------------------------------------------------------------------------------------------

def _kernels_or_skip():
    try:
        import zoneout.kernels as kernels
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"zoneout.kernels not importable: {exc}")
    if not any(hasattr(kernels, f"lstm_{s}") for s in ("sequence", "recurrence")):
        pytest.skip("zoneout.kernels has no lstm_sequence / lstm_recurrence yet")
    return kernels


@pytest.mark.parametrize(
    "cls, kw",
    [
        (ZoneoutLSTM, dict(zoneout_c=0.5, zoneout_h=0.1, recurrent_dropout=0.3, stochastic_depth=0.1)),
        (ZoneoutLSTM, dict(zoneout_c=1.0, zoneout_h=0.3)),  # constant keep next to a random one
        (ZoneoutGRU, dict(zoneout_h=0.3, recurrent_dropout=0.2)),
        (ZoneoutRNN, dict(zoneout_h=0.3, nonlinearity="relu")),
    ],
)
def test_fused_backend_equals_reference_under_same_masks(cls, kw):
    kernels = _kernels_or_skip()
    if hasattr(kernels, "use_extension"):
        kernels.use_extension(False)
    try:
        torch.manual_seed(0)
        ref = cls(I, H, 2, bidirectional=True, backend="reference", **kw).to(DT)
        fused = cls(I, H, 2, bidirectional=True, backend="fused", **kw).to(DT)
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
        for training in (True, False):
            ref.train(training), fused.train(training)
            masks = ref._sample_masks(T, B, x)
            a, b = ref._forward(x, None, masks=masks), fused._forward(x, None, masks=masks)
            torch.testing.assert_close(b[0], a[0], rtol=0, atol=1e-12)
            ga = torch.autograd.grad(a[0].sum(), [x, *ref.parameters()])
            gb = torch.autograd.grad(b[0].sum(), [x, *fused.parameters()])
            for u, v in zip(gb, ga):
                torch.testing.assert_close(u, v, rtol=0, atol=1e-12)
        if cls is ZoneoutLSTM:  # record_cells still works on the fused backend
            fused.record_cells = True
            fused(x)
            assert fused.last_cell_sequence.shape == (T, B, 2 * H)
    finally:
        if hasattr(kernels, "use_extension"):
            kernels.use_extension(None)


def test_auto_backend_is_reference_until_kernels_opt_in(monkeypatch):
    import zoneout.rnn as rnn

    layer = ZoneoutLSTM(I, H)
    try:
        import zoneout.kernels as kernels
    except Exception:  # noqa: BLE001
        assert layer._sequence_fn() is lstm_sequence_reference
        return
    monkeypatch.setattr(kernels, "AUTO", False, raising=False)
    assert layer._sequence_fn() is lstm_sequence_reference
    monkeypatch.setattr(kernels, "AUTO", True, raising=False)
    if rnn._kernel_fn("lstm", "fused") is not None:
        assert layer._sequence_fn() is not lstm_sequence_reference


@pytest.mark.parametrize("training", [True, False])
def test_reference_sequence_gradcheck_with_masks(training):
    torch.manual_seed(0)
    t, b, h = 3, 2, 3
    x_proj = torch.randn(t, b, 4 * h, dtype=DT, requires_grad=True)
    h0, c0 = (torch.randn(b, h, dtype=DT, requires_grad=True) for _ in range(2))
    w_hh = torch.randn(4 * h, h, dtype=DT, requires_grad=True)
    b_hh = torch.randn(4 * h, dtype=DT, requires_grad=True)
    m = sample_masks(t, b, h, x_proj, training=training, zoneout_c=0.5, zoneout_h=0.3, recurrent_dropout=0.3)

    def f(*args):
        out, hn, cn, cells = lstm_sequence_reference(*args, m.keep_c, m.keep_h, m.update, True)
        return out, hn, cn, cells

    assert torch.autograd.gradcheck(f, (x_proj, h0, c0, w_hh, b_hh))


# ------------------------------------------------------------------ input checks and dtypes (drop-in behaviour)

def test_wrong_feature_size_and_dtype_are_named_like_torch():
    layer = ZoneoutLSTM(5, 8)
    with pytest.raises(ValueError, match="input.size\\(-1\\) must be equal to input_size. Expected 5, got 6"):
        layer(torch.randn(3, 2, 6))
    with pytest.raises(TypeError, match="torch.float64 but the layer's parameters are torch.float32"):
        layer(torch.randn(3, 2, 5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls", [ZoneoutLSTM, ZoneoutGRU, ZoneoutRNN])
def test_half_precision_runs_on_auto_backend(cls, dtype):
    """The kernels take float32/float64; 'auto' runs other dtypes through the reference loop."""
    torch.manual_seed(0)
    layer = cls(5, 8, zoneout_h=0.1).to(dtype)
    x = torch.randn(4, 3, 5, dtype=dtype)
    out = layer(x)[0]
    assert out.dtype == dtype and out.shape == (4, 3, 8) and torch.isfinite(out.float()).all()
    ref = cls(5, 8, zoneout_h=0.1, backend="reference").to(dtype)
    ref.load_state_dict(layer.state_dict())
    layer.eval(), ref.eval()
    assert torch.equal(layer(x)[0], ref(x)[0])


def test_torch_compile_runs_the_reference_loop_and_matches_eager():
    """torch.compile cannot see into the C++ kernels; under compile the layer runs the reference loop (same
    values), so compiling a default layer works in eval and train."""
    layer = ZoneoutLSTM(I, H, zoneout_c=0.5, zoneout_h=0.05).eval()
    x = torch.randn(T, B, I)
    compiled = torch.compile(layer)
    torch.testing.assert_close(compiled(x)[0], layer(x)[0], rtol=1e-5, atol=1e-6)
    layer.train()
    out = compiled(x)[0]
    out.sum().backward()
    assert layer.weight_hh_l0.grad is not None and torch.isfinite(layer.weight_hh_l0.grad).all()
