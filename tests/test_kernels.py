"""Fused kernels (zoneout.kernels) == the reference sequence functions (zoneout.rnn) under shared masks.

Both implementations of the fused path are checked: the C++ extension (compiled once per machine
and cached; the first test that needs it pays the ~1 min build) and its pure-PyTorch twin.
Outputs and every gradient, train (0/1 masks, recurrent-dropout update masks) and eval
(expectation rates), float64 gradcheck on tiny sizes and float32 tolerance tests.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import zoneout.kernels as kernels
from zoneout import ZoneoutGRU, ZoneoutLSTM, ZoneoutRNN
from zoneout.kernels import _build, fused
from zoneout.rnn import gru_sequence_reference, lstm_sequence_reference, rnn_sequence_reference

T, B, I, H = 5, 3, 4, 6
F64 = torch.float64


@pytest.fixture(scope="module")
def ext_available():
    return _build.load() is not None


@pytest.fixture(params=["cpp", "pytorch"])
def path(request, ext_available):
    """Run the test on the C++ extension and on the pure-PyTorch twin."""
    if request.param == "cpp" and not ext_available:
        pytest.skip(f"C++ extension unavailable: {_build.error()}")
    kernels.use_extension(request.param == "cpp")
    yield request.param
    kernels.use_extension(None)


def _masks(dtype, update: bool, seed=0):
    g = torch.Generator().manual_seed(seed)
    kc = torch.rand(T, B, H, generator=g).lt(0.5).to(dtype)
    kh = torch.rand(T, B, H, generator=g).lt(0.3).to(dtype)
    u = torch.rand(T, B, H, generator=g).lt(0.7).to(dtype) / 0.7 if update else None
    return kc, kh, u


def _inputs(gates, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    xw = torch.randn(T, B, gates * H, generator=g, dtype=dtype)
    h0 = torch.randn(B, H, generator=g, dtype=dtype)
    c0 = torch.randn(B, H, generator=g, dtype=dtype)
    w = torch.randn(gates * H, H, generator=g, dtype=dtype) * 0.5
    b = torch.randn(gates * H, generator=g, dtype=dtype) * 0.5
    return [t.requires_grad_() for t in (xw, h0, c0, w, b)]


def _grads(outs, params, seed=2):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    return torch.autograd.grad(loss, params)


def _close(a, b, dtype):
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == F64 else dict(rtol=1e-4, atol=2e-5)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, **tol)


CASES = [  # (training, zoneout masks, update mask)
    (True, True, False),
    (True, True, True),
    (True, False, False),
    (True, False, True),
    (False, False, False),
]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("training,zoned,update", CASES)
def test_lstm_equals_reference(path, dtype, training, zoned, update):
    xw, h0, c0, w, b = _inputs(4, dtype)
    kc, kh, u = _masks(dtype, update)
    if training:
        ref_c, ref_h = (kc, kh) if zoned else (0.0, 0.0)
        k_c, k_h, p_c, p_h = (kc, kh, 0.0, 0.0) if zoned else (None, None, 0.0, 0.0)
    else:
        ref_c, ref_h, k_c, k_h, p_c, p_h = 0.5, 0.3, None, None, 0.5, 0.3
    ref = lstm_sequence_reference(xw, h0, c0, w, b, ref_c, ref_h, u)[:3]
    out = kernels.lstm_recurrence(xw, h0, c0, w, keep_c=k_c, keep_h=k_h, update_mask=u, p_c=p_c, p_h=p_h,
                                  training=training, b_hh=b)
    params = [xw, h0, c0, w, b]
    _close(out, ref, dtype)
    _close(_grads(out, params), _grads(ref, params), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("training,zoned,update", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_gru_equals_reference(path, dtype, training, zoned, update, bias):
    xw, h0, _, w, b = _inputs(3, dtype)
    b = b if bias else None
    _, kh, u = _masks(dtype, update)
    if training:
        ref_h, k_h, p_h = (kh, kh, 0.0) if zoned else (0.0, None, 0.0)
    else:
        ref_h, k_h, p_h = 0.3, None, 0.3
    ref = gru_sequence_reference(xw, h0, w, b, ref_h, u)
    out = kernels.gru_recurrence(xw, h0, w, keep_h=k_h, update_mask=u, p_h=p_h, training=training, b_hh=b)
    params = [xw, h0, w] + ([b] if bias else [])
    _close(out, ref, dtype)
    _close(_grads(out, params), _grads(ref, params), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("training,zoned,update", CASES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_equals_reference(path, dtype, training, zoned, update, nonlinearity):
    xw, h0, _, w, b = _inputs(1, dtype)
    _, kh, u = _masks(dtype, update)
    if training:
        ref_h, k_h, p_h = (kh, kh, 0.0) if zoned else (0.0, None, 0.0)
    else:
        ref_h, k_h, p_h = 0.3, None, 0.3
    ref = rnn_sequence_reference(xw, h0, w, b, ref_h, u, nonlinearity)
    out = kernels.rnn_recurrence(xw, h0, w, keep_h=k_h, update_mask=u, p_h=p_h, training=training,
                                 nonlinearity=nonlinearity, b_hh=b)
    params = [xw, h0, w, b]
    _close(out, ref, dtype)
    _close(_grads(out, params), _grads(ref, params), dtype)


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_float64(path, training):
    """torch.autograd.gradcheck of the hand-written BPTT (all outputs, all differentiable inputs)."""
    t, b, h = 3, 2, 3
    g = torch.Generator().manual_seed(4)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=F64) * scale).requires_grad_()

    kc, kh, u = (torch.rand(t, b, h, generator=g, dtype=F64).lt(q).to(F64) for q in (0.5, 0.3, 0.7))
    u = u / 0.7
    if not training:
        kc = kh = u = None
    assert torch.autograd.gradcheck(
        lambda *a: kernels.lstm_recurrence(*a, kc, kh, u, 0.5, 0.3, training),
        (rnd(t, b, 4 * h), rnd(b, h), rnd(b, h), rnd(4 * h, h, scale=0.5)))
    assert torch.autograd.gradcheck(
        lambda *a: kernels.gru_recurrence(a[0], a[1], a[2], kh, u, 0.3, training, b_hh=a[3]),
        (rnd(t, b, 3 * h), rnd(b, h), rnd(3 * h, h, scale=0.5), rnd(3 * h, scale=0.5)))
    assert torch.autograd.gradcheck(
        lambda *a: kernels.rnn_recurrence(*a, kh, u, 0.3, training, "tanh"),
        (rnd(t, b, h), rnd(b, h), rnd(h, h, scale=0.5)))


def test_no_grad_path_equals_grad_path(path):
    """Inference (no saved activations, ping-pong buffers) returns what the training path returns."""
    xw, h0, c0, w, b = _inputs(4, torch.float32)
    kc, kh, u = _masks(torch.float32, True)
    for training in (True, False):
        with_grad = kernels.lstm_recurrence(xw, h0, c0, w, kc, kh, u, 0.5, 0.3, training)
        with torch.no_grad():
            without = kernels.lstm_recurrence(xw, h0, c0, w, kc, kh, u, 0.5, 0.3, training)
        for a, b_ in zip(with_grad, without):
            torch.testing.assert_close(a.detach(), b_, rtol=0, atol=0)
    xw, h0, _, w, b = _inputs(3, torch.float32)
    for rec, args in ((kernels.gru_recurrence, (xw, h0, w, kh, u, 0.3, True, b)),
                      (kernels.rnn_recurrence, (xw[..., :H].contiguous(), h0, w[:H], kh, u, 0.3, True))):
        a = rec(*args)
        with torch.no_grad():
            b_ = rec(*args)
        torch.testing.assert_close(a[0].detach(), b_[0], rtol=0, atol=0)


@pytest.mark.parametrize("cls,kw", [
    (ZoneoutLSTM, dict(zoneout_c=0.5, zoneout_h=0.3, recurrent_dropout=0.2, stochastic_depth=0.1)),
    (ZoneoutLSTM, dict(zoneout_c=0.4, zoneout_shared_mask=True)),
    (ZoneoutGRU, dict(zoneout_h=0.3, recurrent_dropout=0.2, stochastic_depth=0.1)),
    (ZoneoutRNN, dict(zoneout_h=0.3, nonlinearity="relu")),
])
@pytest.mark.parametrize("training", [True, False])
def test_layer_fused_equals_reference(path, cls, kw, training):
    """Whole layers (2 layers, bidirectional, batch_first, given initial state) under the same masks."""
    torch.manual_seed(0)
    ref = cls(I, H, 2, batch_first=True, bidirectional=True, dropout=0.0, backend="reference", **kw)
    fast = cls(I, H, 2, batch_first=True, bidirectional=True, dropout=0.0, backend="fused", **kw)
    fast.load_state_dict(ref.state_dict())
    ref.train(training), fast.train(training)
    x = torch.randn(B, T, I, requires_grad=True)
    h0 = torch.randn(4, B, H)
    hx = (h0, torch.randn(4, B, H)) if cls is ZoneoutLSTM else h0
    masks = ref._sample_masks(T, B, x)
    a = ref._forward(x, hx, masks=masks)
    b_ = fast._forward(x, hx, masks=masks)
    flat = lambda o: [o[0], *o[1]] if cls is ZoneoutLSTM else [o[0], o[1]]  # noqa: E731
    _close(flat(b_), flat(a), torch.float32)
    ga = _grads(flat(a), [x, *ref.parameters()])
    gb = _grads(flat(b_), [x, *fast.parameters()])
    _close(gb, ga, torch.float32)


def test_auto_backend_uses_kernels():
    assert kernels.AUTO is True
    layer = ZoneoutLSTM(I, H, zoneout_c=0.5)
    assert layer._sequence_fn() is not lstm_sequence_reference


def test_keep_mask_rates_and_reproducibility(ext_available):
    if not ext_available:
        pytest.skip("C++ extension unavailable")
    like = torch.empty(0)
    n = 400_000
    for p in (0.05, 0.5, 0.9):
        m = kernels.keep_mask((n,), p, like)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(m.mean().item() - p) < 5 * sigma, (p, m.mean().item())
    # neighbouring elements are uncorrelated (hash, not a short-period generator)
    m = kernels.keep_mask((n,), 0.5, like)
    c = torch.corrcoef(torch.stack([m[:-1], m[1:]]))[0, 1].item()
    assert abs(c) < 5 / n ** 0.5
    assert kernels.keep_mask((1000,), 0.0, like).sum() == 0
    assert kernels.keep_mask((1000,), 1.0, like).sum() == 1000
    torch.manual_seed(3)
    a = kernels.keep_mask((7, 5, 3), 0.3, like.double())
    torch.manual_seed(3)
    b = kernels.keep_mask((7, 5, 3), 0.3, like.double())
    assert a.dtype == F64 and a.shape == (7, 5, 3) and torch.equal(a, b)
    assert not torch.equal(a, kernels.keep_mask((7, 5, 3), 0.3, like.double()))


def test_no_compiler_falls_back_with_one_warning(monkeypatch):
    """A failed build warns once and the recurrences still work (pure-PyTorch path)."""
    monkeypatch.setattr(_build, "_state", {"tried": False, "module": None, "error": None})

    def broken(**kwargs):
        raise RuntimeError("no compiler here")

    import torch.utils.cpp_extension as cpp_extension
    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.delenv("ZONEOUT_NO_EXT", raising=False)
    xw, h0, c0, w, b = _inputs(4, torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = kernels.lstm_recurrence(xw, h0, c0, w, None, None, None, 0.5, 0.3, False)
        kernels.lstm_recurrence(xw, h0, c0, w, None, None, None, 0.5, 0.3, False)
    assert [str(c.message) for c in caught if "C++ kernels" in str(c.message)].__len__() == 1
    ref = lstm_sequence_reference(xw, h0, c0, w, None, 0.5, 0.3)[:3]
    _close(out, ref, torch.float32)
    assert not kernels.extension_loaded()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("training", [True, False])
def test_lstm_sequence_returns_cells_like_reference(path, dtype, training):
    """``lstm_sequence(..., return_cells=True)``: the zoned cell sequence and gradients through it."""
    xw, h0, c0, w, b = _inputs(4, dtype)
    kc, kh, u = _masks(dtype, True)
    keeps = (kc, kh) if training else (0.5, 0.3)
    got = kernels.lstm_sequence(xw, h0, c0, w, b, *keeps, u, return_cells=True)
    ref = lstm_sequence_reference(xw, h0, c0, w, b, *keeps, u, return_cells=True)
    assert got[3].shape == (T, B, H)
    _close(got, ref, dtype)
    params = [xw, h0, c0, w, b]
    _close(_grads(got, params), _grads(ref, params), dtype)
    # cells only (the norm stabilizer's use): the gradient reaches every input through dcs alone
    got = kernels.lstm_sequence(xw, h0, c0, w, b, *keeps, u, return_cells=True)
    ref = lstm_sequence_reference(xw, h0, c0, w, b, *keeps, u, return_cells=True)
    g1 = torch.autograd.grad(got[3].pow(2).sum(), params)
    g2 = torch.autograd.grad(ref[3].pow(2).sum(), params)
    _close(g1, g2, dtype)
    with torch.no_grad():
        _close(kernels.lstm_sequence(xw, h0, c0, w, b, *keeps, u, return_cells=True), ref, dtype)
    out = kernels.lstm_sequence(xw, h0, c0, w, b, *keeps, u)
    assert out[3] is None
    _close(out[:3], ref[:3], dtype)


def test_layer_record_cells_on_fused_path(path):
    """``record_cells`` (norm stabilizer on cells) no longer falls back to the reference loop."""
    torch.manual_seed(0)
    kw = dict(zoneout_c=0.5, zoneout_h=0.3, bidirectional=True, batch_first=True)
    ref = ZoneoutLSTM(I, H, 2, backend="reference", **kw)
    fast = ZoneoutLSTM(I, H, 2, backend="fused", **kw)
    fast.load_state_dict(ref.state_dict())
    ref.record_cells = fast.record_cells = True
    x = torch.randn(B, T, I, requires_grad=True)
    masks = ref._sample_masks(T, B, x)
    a = ref._forward(x, None, masks=masks)[0]
    b_ = fast._forward(x, None, masks=masks)[0]
    ca, cb = ref.last_cell_sequence, fast.last_cell_sequence
    assert cb.shape == (B, T, 2 * H)
    _close([b_, cb], [a, ca], torch.float32)
    ga = torch.autograd.grad(a.sum() + ca.pow(2).sum(), [x, *ref.parameters()])
    gb = torch.autograd.grad(b_.sum() + cb.pow(2).sum(), [x, *fast.parameters()])
    _close(gb, ga, torch.float32)


def test_per_step_products_full_tiles_and_tails(path):
    """Shapes with full 6x16 register tiles plus row/column tails of the C++ small GEMM
    (forward W [80, 20], backward W^T [20, 80]) still equal the reference."""
    g = torch.Generator().manual_seed(5)
    T_, B_, H_ = 3, 13, 20
    xw = torch.randn(T_, B_, 4 * H_, generator=g, requires_grad=True)
    h0 = torch.randn(B_, H_, generator=g, requires_grad=True)
    c0 = torch.randn(B_, H_, generator=g, requires_grad=True)
    w = (torch.randn(4 * H_, H_, generator=g) * 0.3).requires_grad_()
    kc = torch.rand(T_, B_, H_, generator=g).lt(0.5).float()
    kh = torch.rand(T_, B_, H_, generator=g).lt(0.3).float()
    got = kernels.lstm_recurrence(xw, h0, c0, w, kc, kh, None, 0.0, 0.0, True)
    ref = lstm_sequence_reference(xw, h0, c0, w, None, kc, kh)[:3]
    _close(got, ref, torch.float32)
    _close(_grads(got, [xw, h0, c0, w]), _grads(ref, [xw, h0, c0, w]), torch.float32)


def test_input_projection_equals_linear():
    """``input_projection`` (oneDNN in float32 on CPU) == ``F.linear``: values, gradients, layouts."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(7, 5, 12, generator=g, requires_grad=True)
    w = torch.randn(20, 12, generator=g, requires_grad=True)
    b = torch.randn(20, generator=g, requires_grad=True)
    for xx, bb in ((x, b), (x.transpose(0, 1), b), (x, None)):
        got, ref = kernels.input_projection(xx, w, bb), torch.nn.functional.linear(xx, w, bb)
        assert got.shape == ref.shape
        _close([got], [ref], torch.float32)
        params = [p for p in (x, w, bb) if p is not None]
        _close(_grads([got], params), _grads([ref], params), torch.float32)
    with torch.no_grad():
        _close([kernels.input_projection(x, w, b)], [torch.nn.functional.linear(x, w, b)], torch.float32)
    xd, wd = x.double(), w.double()  # not float32: exactly F.linear
    assert torch.equal(kernels.input_projection(xd, wd), torch.nn.functional.linear(xd, wd))


def test_stale_torch_build_lock_is_cleared_under_our_os_lock(tmp_path):
    """A build killed mid-compile leaves torch's ``lock`` file, on which every later process would wait
    forever; holding zoneout's fcntl lock (freed when a process dies) proves nobody else is building."""
    from zoneout.kernels import _build
    cache = tmp_path / "zoneout_cpu_x"
    cache.mkdir()
    (cache / "lock").write_text("")
    with _build._build_lock(cache):
        assert not (cache / "lock").exists()
    assert (cache / "zoneout.flock").exists()


@pytest.mark.parametrize("batch,hidden", [(1, 40), (7, 37), (13, 40), (29, 37), (32, 64)])
def test_lstm_float32_gemm_tile_edges(ext_available, batch, hidden):
    """The compiled per-step products (small_gemm.h: AVX2 6x16 or AVX-512 12x32 register tiles) at batch sizes
    that give full, partial and single-row blocks and hidden sizes that leave a partial column panel, forward
    (4H columns) and backward (H columns): float32 results equal the float64 reference."""
    if not ext_available:
        pytest.skip(f"C++ extension unavailable: {_build.error()}")
    g = torch.Generator().manual_seed(batch * 100 + hidden)
    steps = 4
    xw = torch.randn(steps, batch, 4 * hidden, generator=g)
    h0, c0 = torch.randn(2, batch, hidden, generator=g).unbind(0)
    w = torch.randn(4 * hidden, hidden, generator=g) / hidden ** 0.5
    b = torch.randn(4 * hidden, generator=g)
    kc = torch.rand(steps, batch, hidden, generator=g).lt(0.5).float()
    kh = torch.rand(steps, batch, hidden, generator=g).lt(0.3).float()
    params = [t.clone().requires_grad_() for t in (xw, h0, c0, w, b)]
    kernels.use_extension(True)
    try:
        out = kernels.lstm_recurrence(*params[:4], keep_c=kc, keep_h=kh, b_hh=params[4])
    finally:
        kernels.use_extension(None)
    weights = [torch.randn(o.shape, generator=g, dtype=F64) for o in out]   # same loss weights for both
    grads = torch.autograd.grad(sum((o * wt.float()).sum() for o, wt in zip(out, weights)), params)
    ref_params = [p.detach().double().requires_grad_() for p in params]
    ref = lstm_sequence_reference(*ref_params[:4], ref_params[4], kc.double(), kh.double())[:3]
    ref_grads = torch.autograd.grad(sum((o * wt).sum() for o, wt in zip(ref, weights)), ref_params)
    for a, r in zip([*out, *grads], [*ref, *ref_grads]):
        torch.testing.assert_close(a, r.float(), rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("cls", [ZoneoutLSTM, ZoneoutGRU, ZoneoutRNN])
def test_double_backward_is_refused_by_the_fused_path_and_works_on_reference(path, cls):
    """A gradient penalty (create_graph=True) through the fused kernels would silently lose its graph: it is
    refused with the fix named; backend='reference' differentiates twice and agrees with torch's own layer."""
    torch.manual_seed(0)
    fused_layer = cls(I, H, zoneout_h=0.3, backend="fused").double()
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    out = fused_layer(x)[0]
    with pytest.raises(RuntimeError, match="does not support double backward.*backend='reference'"):
        torch.autograd.grad(out.sum(), x, create_graph=True)
    # single backward is unaffected
    (gx,) = torch.autograd.grad(fused_layer(x)[0].sum(), x)
    assert gx.shape == x.shape and torch.isfinite(gx).all()
    # the reference loop with zoneout off equals torch's layer to second order
    torch_cls = {ZoneoutLSTM: torch.nn.LSTM, ZoneoutGRU: torch.nn.GRU, ZoneoutRNN: torch.nn.RNN}[cls]
    ref, theirs = cls(I, H, backend="reference").double(), torch_cls(I, H).double()
    ref.load_state_dict(theirs.state_dict())
    second = []
    for m in (ref, theirs):
        (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
        second.append(torch.autograd.grad(g.pow(2).sum(), m.weight_hh_l0)[0])
    torch.testing.assert_close(second[0], second[1], rtol=1e-9, atol=1e-10)
