"""Handwriting generation (paper §4.3; Graves 2013, "Generating sequences with recurrent neural
networks", §4-5): an RNN stack over pen offsets with a mixture density output.

A sequence is ``(T, B, 3)`` points in the ``stroke-3`` layout: ``(Δx, Δy, pen_lifted)``, the offset
from the previous point and 1 where the pen leaves the paper after this point (end of stroke).
Step t reads point t and predicts point t + 1 as a mixture of ``M`` bivariate Gaussians over the
offset (weights π, means μ, standard deviations σ, correlations ρ) and a Bernoulli end-of-stroke
probability e (Graves Eq. 15-26).

The loss is the negative log-likelihood in nats (the paper's log-loss), computed per point by
:func:`mixture_nll` with a log-sum-exp over components; summed over a sequence's points it is the
per-sequence figure the paper reports (IAM-OnDB validation: LSTM 900 −1,055, HyperLSTM 900 −1,162).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .recurrent import build_rnn

POINT = 3  # (Δx, Δy, pen_lifted)
LOG_SIGMA_MIN, LOG_SIGMA_MAX = -10.0, 10.0  # σ in [4.5e-5, 2.2e4] data units: no zero or overflowing density
RHO_MAX = 1.0 - 1e-6  # |ρ| < 1 keeps 1 - ρ² > 0
_LOG_2PI = math.log(2.0 * math.pi)


class Mixture(NamedTuple):
    """The output distribution of every step; leading dims ``(T, B)``, ``M`` components.

    ``log_pi`` ``(T, B, M)`` (log-weights, normalised), ``mu`` ``(T, B, M, 2)``, ``log_sigma``
    ``(T, B, M, 2)`` (clamped to [LOG_SIGMA_MIN, LOG_SIGMA_MAX]), ``rho`` ``(T, B, M)`` (in
    (−RHO_MAX, RHO_MAX)), ``eos_logit`` ``(T, B)`` (logit of the end-of-stroke probability).
    """

    log_pi: Tensor
    mu: Tensor
    log_sigma: Tensor
    rho: Tensor
    eos_logit: Tensor


def mixture_from_output(y: Tensor, num_mixtures: int) -> Mixture:
    """Split the linear output ``y`` ``(..., 6M + 1)`` into a :class:`Mixture` (Graves Eq. 18-22)."""
    M = num_mixtures
    if y.shape[-1] != 6 * M + 1:
        raise ValueError(f"expected a last dimension of 6 * {M} + 1 = {6 * M + 1}, got {y.shape[-1]}")
    eos, logits, mu, log_sigma, rho = torch.split(y, [1, M, 2 * M, 2 * M, M], dim=-1)
    lead = y.shape[:-1]
    return Mixture(
        log_pi=F.log_softmax(logits, dim=-1),
        mu=mu.reshape(*lead, M, 2),
        log_sigma=log_sigma.reshape(*lead, M, 2).clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX),
        rho=RHO_MAX * torch.tanh(rho),  # smooth, strictly inside (-1, 1)
        eos_logit=eos.squeeze(-1),
    )


def mixture_nll(mix: Mixture, target: Tensor) -> Tensor:
    """Negative log-likelihood in nats of each target point; ``target`` ``(T, B, 3)`` -> ``(T, B)``.

    ``-log( Σ_k π_k N(Δx, Δy | μ_k, σ_k, ρ_k) ) - log(e if pen_lifted else 1 - e)``, the Gaussian
    part through log-sum-exp over components, the Bernoulli part from the logit.
    """
    dx = target[..., :2].unsqueeze(-2)  # (T, B, 1, 2)
    z = (dx - mix.mu) * torch.exp(-mix.log_sigma)  # standardised, (T, B, M, 2)
    one_minus_rho2 = 1.0 - mix.rho**2
    q = z[..., 0] ** 2 + z[..., 1] ** 2 - 2.0 * mix.rho * z[..., 0] * z[..., 1]
    log_density = (
        -_LOG_2PI - mix.log_sigma.sum(-1) - 0.5 * torch.log(one_minus_rho2) - q / (2.0 * one_minus_rho2)
    )  # (T, B, M)
    offset_nll = -torch.logsumexp(mix.log_pi + log_density, dim=-1)
    pen_nll = F.binary_cross_entropy_with_logits(
        mix.eos_logit, target[..., 2].to(mix.eos_logit.dtype), reduction="none"
    )
    return offset_nll + pen_nll


def teacher_inputs(points: Tensor) -> Tensor:
    """The inputs that predict ``points`` ``(T, B, 3)``: the start point (0, 0, 1) (the pen is up
    before the first stroke) followed by ``points[:-1]``; so every point of a sequence is predicted."""
    start = points.new_zeros(1, points.shape[1], POINT)
    start[..., 2] = 1.0
    return torch.cat([start, points[:-1]])


def sequence_nll(mix: Mixture, points: Tensor, lengths: Tensor) -> Tensor:
    """:func:`mixture_nll` of padded ``points`` ``(T, B, 3)``, zero beyond each of ``lengths`` ``(B,)``."""
    per_point = mixture_nll(mix, points.to(mix.mu.dtype))
    mask = torch.arange(points.shape[0], device=points.device).unsqueeze(1) < lengths.to(points.device)
    return per_point.masked_fill(~mask, 0.0)


class HandwritingModel(nn.Module):
    """Unconditional handwriting generator (Graves 2013 §4, the paper's §4.3 setup).

    Args:
        cell: ``"hyperlstm"`` | ``"lstm"`` | ``"ln_lstm"`` (see :func:`~hypermodels.build_rnn`).
        hidden_size, num_layers: of the RNN stack.
        num_mixtures: bivariate Gaussian components M (the output has 6M + 1 units).
        hyper_size, embed_size, layer_norm, fast: HyperLSTM settings (N_ĥ, N_z, LN, fast path).
        dropout: on the RNN output before the mixture layer and between layers.
        recurrent_dropout: on the cell candidate (Semeniuta et al.).

    ``forward(points, state=None)``: ``points`` ``(T, B, 3)`` (stroke-3, float) -> a
    :class:`Mixture` with leading dims ``(T, B)`` (the distribution of each next point) and the
    recurrent state.
    """

    def __init__(
        self,
        cell: str = "hyperlstm",
        hidden_size: int = 900,
        num_layers: int = 1,
        *,
        num_mixtures: int = 20,
        hyper_size: int = 128,
        embed_size: int = 4,
        layer_norm: bool = False,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        fast: bool = True,
    ) -> None:
        super().__init__()
        if num_mixtures < 1:
            raise ValueError(f"num_mixtures must be >= 1, got {num_mixtures}")
        self.cell, self.num_mixtures, self.dropout = cell, num_mixtures, dropout
        self.rnn = build_rnn(
            cell,
            POINT,
            hidden_size,
            num_layers,
            hyper_size=hyper_size,
            embed_size=embed_size,
            layer_norm=layer_norm,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            fast=fast,
        )
        self.head = nn.Linear(hidden_size, 6 * num_mixtures + 1)

    def forward(self, points: Tensor, state: Any = None) -> tuple[Mixture, Any]:
        if points.dim() != 3 or points.shape[-1] != POINT:
            raise ValueError(f"expected points of shape (T, B, 3), got {tuple(points.shape)}")
        output, state = self.rnn(points.to(self.head.weight.dtype), state)
        output = F.dropout(output, self.dropout, self.training)
        return mixture_from_output(self.head(output), self.num_mixtures), state

    def nll(self, points: Tensor, lengths: Tensor) -> Tensor:
        """Per-point NLL (nats) of padded sequences: ``points`` ``(T, B, 3)``, ``lengths`` ``(B,)``
        -> ``(T, B)``, zero beyond each length (:func:`teacher_inputs`, :func:`sequence_nll`)."""
        mix, _ = self(teacher_inputs(points), None)
        return sequence_nll(mix, points, lengths)

    @torch.no_grad()
    def sample(
        self,
        length: int,
        batch: int = 1,
        *,
        bias: float = 0.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``batch`` unconditional samples of ``length`` points, ``(length, batch, 3)`` stroke-3.

        ``bias`` b >= 0 (Graves §5, Eq. 61-62) sharpens the weights (logits × (1 + b)) and shrinks σ
        (σ e^(−b)): larger b gives cleaner, more probable writing. ``temperature`` τ > 0 further
        divides the weight logits and end-of-stroke logit by τ and scales σ by √τ. ``generator``
        makes the draws reproducible without touching the global RNG (draws happen on the CPU).
        """
        if length < 1 or batch < 1:
            raise ValueError(f"length and batch must be >= 1, got {length} and {batch}")
        if bias < 0 or temperature <= 0:
            raise ValueError(f"expected bias >= 0 and temperature > 0, got {bias} and {temperature}")
        was_training = self.training
        self.eval()
        device = self.head.weight.device
        point = torch.zeros(1, batch, POINT, device=device)
        point[..., 2] = 1.0
        state: Any = None
        out = torch.empty(length, batch, POINT)
        for t in range(length):
            mix, state = self(point, state)
            m = Mixture(*(p[0].double().cpu() for p in mix))  # (B, ...)
            weights = torch.softmax(m.log_pi * (1.0 + bias) / temperature, dim=-1)
            k = torch.multinomial(weights, 1, generator=generator).squeeze(1)  # (B,)
            rows = torch.arange(batch)
            mu, rho = m.mu[rows, k], m.rho[rows, k]
            sigma = torch.exp(m.log_sigma[rows, k] - bias) * math.sqrt(temperature)
            n = torch.randn(batch, 2, generator=generator, dtype=torch.float64)
            dx = mu[:, 0] + sigma[:, 0] * n[:, 0]
            dy = mu[:, 1] + sigma[:, 1] * (rho * n[:, 0] + torch.sqrt(1.0 - rho**2) * n[:, 1])
            p_eos = torch.sigmoid(m.eos_logit / temperature)
            pen = (torch.rand(batch, generator=generator, dtype=torch.float64) < p_eos).double()
            out[t] = torch.stack([dx, dy, pen], dim=-1).float()
            point = out[t : t + 1].to(device)
        self.train(was_training)
        return out


def pad_sequences(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack ``(n_i, 3)`` sequences into ``points`` ``(max n_i, B, 3)`` (zero-padded) and ``lengths`` ``(B,)``."""
    if not seqs:
        raise ValueError("expected at least one sequence")
    lengths = torch.tensor([len(s) for s in seqs])
    return nn.utils.rnn.pad_sequence(seqs), lengths


@torch.no_grad()
def log_loss(model: HandwritingModel, seqs: list[Tensor], batch_size: int = 64) -> tuple[float, float]:
    """The paper's log-loss of ``seqs`` (eval mode): mean NLL per sequence (nats, summed over its
    points) and per point. Sequences are batched in length order (less padding); sums in float64."""
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    total, points = 0.0, 0
    for k in range(0, len(order), batch_size):
        batch = [seqs[i] for i in order[k : k + batch_size]]
        x, lengths = pad_sequences(batch)
        total += float(model.nll(x.to(device), lengths).double().sum())
        points += int(lengths.sum())
    model.train(was_training)
    return total / max(len(seqs), 1), total / max(points, 1)


__all__ = [
    "LOG_SIGMA_MAX",
    "LOG_SIGMA_MIN",
    "Mixture",
    "HandwritingModel",
    "RHO_MAX",
    "log_loss",
    "mixture_from_output",
    "mixture_nll",
    "pad_sequences",
    "sequence_nll",
    "teacher_inputs",
]
