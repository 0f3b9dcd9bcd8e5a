"""HyperLSTM against the paper's equations (docs/paper.md §1), written here independently."""

from __future__ import annotations

import pytest
import torch

from hypermodels import CellState, HyperLSTM, HyperLSTMCell, HyperLSTMState, LayerNormLSTM, detach_state


def ln(v, gain, bias, eps=1e-5):
    """Layer norm written out: (v - mean) / sqrt(var + eps) * gain + bias."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + eps) * gain + bias


def reference_layer(cell: HyperLSTMCell, x, h, c, hh, hc):
    """A straightforward per-step loop over Eq. 10-13, gate by gate, using the cell's parameters."""
    H, Hh = cell.hidden_size, cell.hyper_size
    Wx = cell.weight_ih.split(H)  # W_x^y
    Wh = cell.weight_hh.split(H)  # W_h^y
    b0 = cell.bias.split(H)
    hWx = cell.hyper_weight_ih.split(Hh)  # on [h, x]
    hWh = cell.hyper_weight_hh.split(Hh)
    hb = cell.hyper_bias.split(Hh)
    outs = []
    for t in range(x.shape[0]):
        xhat = torch.cat([h, x[t]], dim=-1)
        hyper = []
        for y in range(4):  # i, g, f, o
            pre = hh @ hWh[y].T + xhat @ hWx[y].T + hb[y]
            if cell.layer_norm:
                pre = ln(pre, cell.hyper_ln_weight[y], cell.hyper_ln_bias[y])
            hyper.append(pre)
        hi, hg, hf, ho = hyper
        hc = torch.sigmoid(hf + cell.forget_bias) * hc + torch.sigmoid(hi) * torch.tanh(hg)
        hc_out = ln(hc, cell.hyper_ln_cell_weight, cell.hyper_ln_cell_bias) if cell.layer_norm else hc
        hh = torch.sigmoid(ho) * torch.tanh(hc_out)
        gates = []
        for y in range(4):
            z_h = hh @ cell.z_weight[0, y].T + cell.z_bias[0, y]
            z_x = hh @ cell.z_weight[1, y].T + cell.z_bias[1, y]
            z_b = hh @ cell.z_weight[2, y].T
            d_h = z_h @ cell.d_weight[0, y].T
            d_x = z_x @ cell.d_weight[1, y].T
            b = z_b @ cell.d_weight[2, y].T + b0[y]
            pre = d_h * (h @ Wh[y].T) + d_x * (x[t] @ Wx[y].T) + b
            if cell.layer_norm:
                pre = ln(pre, cell.ln_weight[y], cell.ln_bias[y])
            gates.append(pre)
        i, g, f, o = gates
        c = torch.sigmoid(f + cell.forget_bias) * c + torch.sigmoid(i) * torch.tanh(g)
        c_out = ln(c, cell.ln_cell_weight, cell.ln_cell_bias) if cell.layer_norm else c
        h = torch.sigmoid(o) * torch.tanh(c_out)
        outs.append(h)
    return torch.stack(outs), (h, c, hh, hc)


def randomize_(module, seed=0):
    """Random (not initial) weights: the init makes every d equal, which would hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return module


@pytest.mark.parametrize("layer_norm", [True, False])
def test_layer_matches_reference_equations(layer_norm):
    torch.manual_seed(0)
    layer = randomize_(HyperLSTM(5, 7, hyper_size=6, embed_size=3, layer_norm=layer_norm).double())
    x = torch.randn(6, 4, 5, dtype=torch.double)
    state = HyperLSTMState(*(torch.randn(1, 4, n, dtype=torch.double) for n in (7, 7, 6, 6)))
    out, new = layer(x, state)
    ref_out, (h, c, hh, hc) = reference_layer(
        layer.cells[0], x, state.h[0], state.c[0], state.hyper_h[0], state.hyper_c[0]
    )
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    for got, want in zip(new, (h, c, hh, hc), strict=True):
        torch.testing.assert_close(got[0], want, rtol=1e-6, atol=1e-6)


def test_multilayer_feeds_outputs_upward():
    layer = randomize_(HyperLSTM(3, 5, hyper_size=4, embed_size=2, num_layers=2).double(), seed=1)
    x = torch.randn(4, 2, 3, dtype=torch.double)
    out, state = layer(x)
    zeros = lambda n: torch.zeros(2, n, dtype=torch.double)  # noqa: E731
    mid, _ = reference_layer(layer.cells[0], x, zeros(5), zeros(5), zeros(4), zeros(4))
    top, (h, *_rest) = reference_layer(layer.cells[1], mid, zeros(5), zeros(5), zeros(4), zeros(4))
    torch.testing.assert_close(out, top)
    torch.testing.assert_close(state.h[1], h)


def test_gradcheck_cell_float64():
    torch.manual_seed(0)
    cell = randomize_(HyperLSTMCell(3, 4, hyper_size=3, embed_size=2).double(), seed=2)
    x = torch.randn(2, 3, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=torch.double, requires_grad=True)
    state = (
        h0,
        torch.randn(2, 4, dtype=torch.double),
        torch.randn(2, 3, dtype=torch.double),
        torch.randn(2, 3, dtype=torch.double),
    )

    def f(x, h0, *params):
        return cell(x, CellState(h0, *state[1:]))[1]

    assert torch.autograd.gradcheck(f, (x, h0, cell.weight_hh, cell.z_weight, cell.d_weight, cell.ln_weight))


def test_every_scaling_vector_is_one_tenth_at_init():
    torch.manual_seed(0)
    layer = HyperLSTM(11, 16, hyper_size=8, embed_size=4, num_layers=2)
    d_h, d_x = layer.scaling_vectors(torch.randn(9, 3, 11))
    assert d_h.shape == d_x.shape == (2, 9, 3, 4, 16)
    assert torch.equal(d_h, torch.full_like(d_h, 0.1)) and torch.equal(d_x, torch.full_like(d_x, 0.1))
    cell = layer.cells[0]
    assert torch.count_nonzero(cell.z_weight[:2]) == 0 and torch.all(cell.z_bias == 1)
    assert torch.count_nonzero(cell.d_weight[2]) == 0 and torch.count_nonzero(cell.bias) == 0
    assert 0.005 < cell.z_weight[2].std() < 0.015  # z_b ~ N(0, 0.01)
    w = cell.weight_hh[:16]  # each gate's block orthogonal
    torch.testing.assert_close(w @ w.T, torch.eye(16), atol=1e-5, rtol=0)


def test_scaling_vectors_move_once_trained():
    layer = randomize_(HyperLSTM(4, 6, hyper_size=5, embed_size=2), seed=3)
    d_h, _ = layer.scaling_vectors(torch.randn(5, 2, 4))
    assert d_h[0, 1:].sub(d_h[0, :-1]).abs().max() > 1e-3  # d changes over time


def test_forget_bias_is_added_after_layer_norm():
    # With all-zero pre-activations LN outputs its bias (0); the forget gate must still see +1.
    cell = HyperLSTMCell(2, 3, hyper_size=2, embed_size=1)
    with torch.no_grad():
        cell.weight_ih.zero_()
        cell.weight_hh.zero_()
    c0 = torch.ones(1, 3)
    h, state = cell(torch.zeros(1, 2), cell.zero_state(1, c0)._replace(c=c0))
    torch.testing.assert_close(state.c, torch.sigmoid(torch.tensor(1.0)) * c0 + 0.5 * 0.0)


def test_state_carried_across_segments_equals_one_pass():
    torch.manual_seed(0)
    layer = randomize_(HyperLSTM(3, 6, hyper_size=4, embed_size=2, num_layers=2).double(), seed=4)
    x = torch.randn(10, 2, 3, dtype=torch.double)
    full, full_state = layer(x)
    first, state = layer(x[:4])
    second, state = layer(x[4:], detach_state(state))
    torch.testing.assert_close(torch.cat([first, second]), full)
    for a, b in zip(state, full_state, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls", [HyperLSTM, LayerNormLSTM])
def test_batch_first_equivalence(cls):
    torch.manual_seed(0)
    seq_first = cls(3, 5, num_layers=2)
    batch_first = cls(3, 5, num_layers=2, batch_first=True)
    batch_first.load_state_dict(seq_first.state_dict())
    x = torch.randn(7, 2, 3)
    a, sa = seq_first(x)
    b, sb = batch_first(x.transpose(0, 1).contiguous())
    torch.testing.assert_close(b.transpose(0, 1), a)
    for u, v in zip(sa, sb, strict=True):
        torch.testing.assert_close(u, v)


def test_eval_deterministic_train_dropout_not():
    torch.manual_seed(0)
    layer = HyperLSTM(3, 8, hyper_size=4, embed_size=2, num_layers=2, dropout=0.3, recurrent_dropout=0.3)
    randomize_(layer, seed=5)
    x = torch.randn(6, 2, 3)
    layer.eval()
    torch.testing.assert_close(layer(x)[0], layer(x)[0], rtol=0, atol=0)
    layer.train()
    assert not torch.allclose(layer(x)[0], layer(x)[0])
    torch.manual_seed(7)
    a = layer(x)[0]
    torch.manual_seed(7)
    b = layer(x)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # masks reproducible under a fixed seed


def test_recurrent_dropout_only_touches_the_candidate():
    # p close to 1 with a fixed seed: the cell state loses the candidate term, and nothing else changes.
    cell = randomize_(HyperLSTMCell(2, 4, hyper_size=3, embed_size=2, recurrent_dropout=0.5), seed=6)
    x = torch.randn(3, 2)
    state = cell.zero_state(3, x)
    wx, hwx = cell.project_input(x)
    zero_mask = torch.zeros(3, 4)
    dropped, _, _ = cell.step(wx, hwx, state, zero_mask)
    assert torch.count_nonzero(dropped.c) == 0  # c0 = 0 and candidate dropped entirely
    kept, _, _ = cell.step(wx, hwx, state, None)
    assert torch.count_nonzero(kept.c) > 0
    torch.testing.assert_close(dropped.hyper_h, kept.hyper_h)  # hyper cell untouched


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="hidden_size"):
        HyperLSTM(3, 0)
    with pytest.raises(ValueError, match="recurrent_dropout"):
        HyperLSTM(3, 4, recurrent_dropout=1.5)
    with pytest.raises(ValueError, match="3-D input"):
        HyperLSTM(3, 4)(torch.zeros(2, 3))


def test_positional_arguments_follow_torch_lstm():
    # HyperLSTM(10, 20, 2) means what nn.LSTM(10, 20, 2) means: two layers; the rest is keyword-only.
    layer = HyperLSTM(10, 20, 2)
    assert layer.num_layers == 2 and len(layer.cells) == 2
    assert layer.hyper_size == 128 and all(cell.hyper_size == 128 for cell in layer.cells)
    assert layer.embed_size == 4
    with pytest.raises(TypeError):
        HyperLSTM(10, 20, 1, 64)  # hyper_size positionally
    with pytest.raises(TypeError):
        HyperLSTMCell(10, 20, 64)
    with pytest.raises(TypeError):
        LayerNormLSTM(10, 20, 1, False)  # layer_norm positionally
    assert len(LayerNormLSTM(10, 20, 2).cells) == 2


def test_input_projection_matches_functional_linear():
    cell = randomize_(HyperLSTMCell(3, 4, hyper_size=2, embed_size=1), seed=8)
    x = torch.randn(5, 2, 3)
    wx, hwx = cell.project_input(x)
    torch.testing.assert_close(wx, x @ cell.weight_ih.T)
    torch.testing.assert_close(hwx, x @ cell.hyper_weight_ih[:, 4:].T + cell.hyper_bias)
