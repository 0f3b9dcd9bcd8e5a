"""The handwriting generator (hypermodels/handwriting.py): the mixture density loss against an
independent per-point computation, gradients, learning, sampling, and the paper's parameter counts."""

from __future__ import annotations

import math

import pytest
import torch

from hypermodels import HandwritingModel, count_parameters, mixture_from_output, mixture_nll


def reference_nll(y: torch.Tensor, target: torch.Tensor, M: int) -> float:
    """Graves (2013) Eq. 18-26 for one point, written out with plain floats: ``y`` (6M+1,) in the
    order (e, π logits, μ, log σ, ρ raw), ``target`` (3,)."""
    v = y.tolist()
    e_hat, logits = v[0], v[1 : 1 + M]
    mu = v[1 + M : 1 + 3 * M]
    log_sigma = v[1 + 3 * M : 1 + 5 * M]
    rho_hat = v[1 + 5 * M :]
    top = max(logits)
    pi = [math.exp(a - top) for a in logits]
    pi = [p / sum(pi) for p in pi]
    x1, x2, pen = target.tolist()
    density = 0.0
    for k in range(M):
        m1, m2 = mu[2 * k], mu[2 * k + 1]
        s1, s2 = math.exp(log_sigma[2 * k]), math.exp(log_sigma[2 * k + 1])
        rho = (1 - 1e-6) * math.tanh(rho_hat[k])
        z = ((x1 - m1) / s1) ** 2 + ((x2 - m2) / s2) ** 2 - 2 * rho * (x1 - m1) * (x2 - m2) / (s1 * s2)
        density += pi[k] * math.exp(-z / (2 * (1 - rho**2))) / (2 * math.pi * s1 * s2 * math.sqrt(1 - rho**2))
    e = 1 / (1 + math.exp(-e_hat))
    return -math.log(density) - math.log(e if pen == 1 else 1 - e)


def test_mixture_nll_matches_a_per_point_computation() -> None:
    M, T, B = 3, 5, 4
    g = torch.Generator().manual_seed(0)
    y = torch.randn(T, B, 6 * M + 1, generator=g, dtype=torch.float64)
    target = torch.randn(T, B, 3, generator=g, dtype=torch.float64)
    target[..., 2] = (torch.rand(T, B, generator=g) < 0.3).double()
    got = mixture_nll(mixture_from_output(y, M), target)
    assert got.shape == (T, B) and got.dtype == torch.float64
    for t in range(T):
        for b in range(B):
            assert float(got[t, b]) == pytest.approx(reference_nll(y[t, b], target[t, b], M), abs=1e-9, rel=1e-9)


def test_mixture_nll_gradcheck() -> None:
    M = 2
    g = torch.Generator().manual_seed(1)
    y = torch.randn(3, 2, 6 * M + 1, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 2, 3, generator=g, dtype=torch.float64)
    target[..., 2] = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    assert torch.autograd.gradcheck(lambda y: mixture_nll(mixture_from_output(y, M), target), (y,))


class SummedNLL(torch.nn.Module):
    def __init__(self, model: HandwritingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, points: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model.nll(points, lengths).sum()


@pytest.mark.parametrize("cell", ["lstm", "hyperlstm"])
def test_model_gradcheck(cell: str) -> None:
    """Every parameter's gradient through the RNN stack and the mixture layer, in float64 (the
    HyperLSTM's reference path: autograd differentiates it end to end)."""
    torch.manual_seed(0)
    loss = SummedNLL(HandwritingModel(cell, 5, num_mixtures=2, hyper_size=4, embed_size=2, fast=False).double())
    points = torch.randn(4, 2, 3, dtype=torch.float64)
    points[..., 2] = (points[..., 2] > 0).double()
    lengths = torch.tensor([4, 3])
    names = [n for n, _ in loss.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for p in loss.parameters())
    assert torch.autograd.gradcheck(
        lambda *ps: torch.func.functional_call(loss, dict(zip(names, ps, strict=True)), (points, lengths)), values
    )


def test_padding_is_ignored() -> None:
    torch.manual_seed(0)
    model = HandwritingModel("lstm", 8, num_mixtures=3).double()
    points = torch.randn(6, 2, 3, dtype=torch.float64)
    points[..., 2] = 0.0
    full = model.nll(points, torch.tensor([6, 4]))
    assert torch.all(full[4:, 1] == 0)
    alone = model.nll(points[:4, 1:], torch.tensor([4]))
    torch.testing.assert_close(full[:4, 1], alone[:, 0], rtol=0, atol=1e-12)


def test_long_sequence_stays_finite() -> None:
    """2,000 points with jumps of 10,000 standard deviations (far beyond what the data's outlier
    clipping lets through) and many pen lifts: no NaN or inf in the loss or gradients. (It caught
    the fused kernel's sigmoid overflowing to NaN under -ffast-math.)"""
    torch.manual_seed(0)
    model = HandwritingModel("hyperlstm", 32, hyper_size=8, embed_size=4)
    points = torch.randn(2000, 2, 3)
    points[::97, :, :2] = 1e4  # long jumps
    points[..., 2] = (torch.rand(2000, 2) < 0.1).float()
    nll = model.nll(points, torch.tensor([2000, 1500]))
    nll.sum().backward()
    assert torch.isfinite(nll).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def handful(n: int = 4, T: int = 30) -> torch.Tensor:
    """``n`` distinct smooth pen trajectories (circles of different radii), one stroke each, with
    offsets scaled to unit standard deviation per axis (as the task's preparation does)."""
    t = torch.linspace(0, 2 * math.pi, T + 1)
    seqs = []
    for k in range(n):
        r = 1.0 + 0.5 * k
        xy = torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1)
        pen = torch.zeros(T, 1)
        pen[-1] = 1.0
        seqs.append(torch.cat([xy[1:] - xy[:-1], pen], dim=1))
    points = torch.stack(seqs, dim=1)  # (T, n, 3)
    points[..., :2] /= points[..., :2].reshape(-1, 2).std(0)
    return points


@pytest.mark.parametrize("cell", ["lstm", "hyperlstm"])
def test_overfits_a_handful_of_sequences(cell: str) -> None:
    """Four deterministic sequences with unit-variance offsets. A model that ignores the history
    can do no better than a density over the offsets' marginal distribution, about +2.8 nats per
    point for unit variance on each axis (log 2π + 1; the untrained model starts above +3). Once
    the sequences are memorised each next offset is known up to the network's precision, so the
    loss goes well below zero: the bar, -1.5 nats per point (mean of the last 10 steps, which
    smooths the spikes of a collapsing σ), needs σ ≈ 0.2 on each axis."""
    torch.manual_seed(0)
    points = handful()
    lengths = torch.full((points.shape[1],), points.shape[0])
    model = HandwritingModel(cell, 32, num_mixtures=3, hyper_size=16, embed_size=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = model.nll(points, lengths).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 3.0 and sum(losses[-10:]) / 10 < -1.5, losses[::30]


def test_sampling_length_pen_states_and_reproducibility() -> None:
    torch.manual_seed(0)
    model = HandwritingModel("hyperlstm", 16, num_mixtures=4, hyper_size=8, embed_size=2)
    model.train()
    a = model.sample(50, batch=3, generator=torch.Generator().manual_seed(7))
    assert model.training  # restored
    assert a.shape == (50, 3, 3) and torch.isfinite(a).all()
    assert set(a[..., 2].unique().tolist()) <= {0.0, 1.0}
    b = model.sample(50, batch=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    sharp = model.sample(60, batch=2, bias=3.0, generator=torch.Generator().manual_seed(7))
    wide = model.sample(60, batch=2, bias=0.0, generator=torch.Generator().manual_seed(7))
    assert sharp[..., :2].std() < wide[..., :2].std()  # Graves' bias shrinks the spread
    with pytest.raises(ValueError, match="temperature"):
        model.sample(5, temperature=0.0)


def test_paper_parameter_counts() -> None:
    """PAPER.md §3, IAM-OnDB: LSTM 900 3.36M, HyperLSTM 900 (128 / 4) 3.94M; one layer, M = 20,
    no layer norm (LN HyperLSTM is a separate row)."""
    lstm = count_parameters(HandwritingModel("lstm", 900, num_mixtures=20))
    hyper = count_parameters(HandwritingModel("hyperlstm", 900, num_mixtures=20, hyper_size=128, embed_size=4))
    assert lstm == pytest.approx(3.36e6, rel=0.01)
    assert hyper == pytest.approx(3.94e6, rel=0.01)


def test_bad_shapes() -> None:
    model = HandwritingModel("lstm", 8, num_mixtures=2)
    with pytest.raises(ValueError, match=r"\(T, B, 3\)"):
        model(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="6 \\* 2 \\+ 1"):
        mixture_from_output(torch.zeros(3, 12), 2)


def test_fast_hyperlstm_without_layer_norm_matches_the_reference_at_large_preactivations() -> None:
    """Without layer norm (the paper's handwriting HyperLSTM) pre-activations can pass exp's float
    overflow; the fast path must still give the reference's loss and finite gradients. (The
    gradients themselves are not compared: with every gate saturated they are float32 rounding.)"""
    torch.manual_seed(0)
    fast = HandwritingModel("hyperlstm", 8, num_mixtures=2, hyper_size=4, embed_size=2)
    ref = HandwritingModel("hyperlstm", 8, num_mixtures=2, hyper_size=4, embed_size=2, fast=False)
    ref.load_state_dict(fast.state_dict())
    points = torch.full((5, 2, 3), 3000.0)
    points[:, 1, :2] *= -1
    points[..., 2] = 0.0
    lengths = torch.tensor([5, 5])
    losses = [m.nll(points, lengths) for m in (fast, ref)]
    for m, loss in zip((fast, ref), losses, strict=True):
        loss.sum().backward()
        assert torch.isfinite(loss).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-3)
