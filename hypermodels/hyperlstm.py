"""HyperLSTM (Ha, Dai, Le 2017, App. A.2.2, Eq. 9-13): an LSTM whose weights are
scaled, row by row and step by step, by a small "hyper" LSTM running beside it.

Notation follows ``docs/paper.md`` §1: ``hidden_size`` = N_h, ``hyper_size`` = N_ĥ,
``embed_size`` = N_z; the four gates are stacked in the order (i, g, f, o).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fast_hyperlstm import fast_forward

GATES = 4  # i, g, f, o


class HyperLSTMState(NamedTuple):
    """Recurrent state of a (multi-layer) HyperLSTM.

    ``h``, ``c``: main cell, shape ``(num_layers, batch, hidden_size)``.
    ``hyper_h``, ``hyper_c``: hyper cell, shape ``(num_layers, batch, hyper_size)``.
    """

    h: Tensor
    c: Tensor
    hyper_h: Tensor
    hyper_c: Tensor


class CellState(NamedTuple):
    """State of one :class:`HyperLSTMCell`, each ``(batch, size)``."""

    h: Tensor
    c: Tensor
    hyper_h: Tensor
    hyper_c: Tensor


def orthogonal_per_gate_(weight: Tensor, gates: int = GATES) -> Tensor:
    """Orthogonal init of each gate's ``(rows, in)`` block of a stacked ``(gates*rows, in)`` matrix."""
    with torch.no_grad():
        for block in weight.chunk(gates, dim=0):
            nn.init.orthogonal_(block)
    return weight


def gate_layer_norm(pre: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """Layer norm of each gate separately: ``pre`` is ``(batch, gates, size)``; ``weight``/``bias`` ``(gates, size)``.

    Normalises with sqrt(var + eps), the standard form (not std + eps).
    """
    out = F.layer_norm(pre, pre.shape[-1:], eps=eps)
    if weight is None:
        return out
    if bias is None:
        raise ValueError("gate_layer_norm: a weight needs its bias")
    return out * weight + bias


class HyperLSTMCell(nn.Module):
    r"""One step of the HyperLSTM (memory-efficient form, Eq. 7-8 and 9-13).

    Args:
        input_size: features of x_t.
        hidden_size: main units N_h.
        hyper_size: hyper-cell units N_ĥ.
        embed_size: embedding size N_z of each z vector.
        layer_norm: per-gate layer norm in both cells and on the output path (LN(c_t)).
            The hyper cell follows the same switch, as in the paper's reference cell.
        recurrent_dropout: dropout probability on the candidate ``tanh(g_t)`` (Semeniuta et al.).
        forget_bias: added to the forget gate after layer norm (LN would cancel it before).
        eps: layer-norm epsilon.

    Parameters (per gate y of i, g, f, o, stacked along the first axis):
        ``weight_ih`` (4N_h, input) = W_x; ``weight_hh`` (4N_h, N_h) = W_h; ``bias`` (4N_h) = b_0;
        ``hyper_weight_ih`` (4N_ĥ, N_h + input) on x̂ = [h_{t-1}, x_t]; ``hyper_weight_hh`` (4N_ĥ, N_ĥ);
        ``hyper_bias`` (4N_ĥ);
        ``z_weight`` (3, 4, N_z, N_ĥ): z_h, z_x, z_b projections from ĥ_t; ``z_bias`` (2, 4, N_z)
        for z_h and z_x (z_b has none);
        ``d_weight`` (3, 4, N_h, N_z): W_hz, W_xz, W_bz.

    Shapes: ``forward(x, state)`` with ``x`` ``(batch, input_size)``, state a :class:`CellState`
    (or None for zeros); returns ``(h, state)``.
    """

    # Layer-norm parameters: None without layer norm (registered as None, so state_dict has no entry).
    ln_weight: nn.Parameter | None
    ln_bias: nn.Parameter | None
    ln_cell_weight: nn.Parameter | None
    ln_cell_bias: nn.Parameter | None
    hyper_ln_weight: nn.Parameter | None
    hyper_ln_bias: nn.Parameter | None
    hyper_ln_cell_weight: nn.Parameter | None
    hyper_ln_cell_bias: nn.Parameter | None

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        hyper_size: int = 128,
        embed_size: int = 4,
        layer_norm: bool = True,
        recurrent_dropout: float = 0.0,
        forget_bias: float = 1.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        for name, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("hyper_size", hyper_size),
            ("embed_size", embed_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= recurrent_dropout < 1.0:
            raise ValueError(f"recurrent_dropout must be in [0, 1), got {recurrent_dropout}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.hyper_size, self.embed_size = hyper_size, embed_size
        self.layer_norm, self.recurrent_dropout = layer_norm, recurrent_dropout
        self.forget_bias, self.eps = forget_bias, eps
        H, Hh, Nz = hidden_size, hyper_size, embed_size

        # Main cell: W_x, W_h, b_0.
        self.weight_ih = nn.Parameter(torch.empty(GATES * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(GATES * H, H))
        self.bias = nn.Parameter(torch.empty(GATES * H))
        # Hyper cell: an LSTM on x̂_t = [h_{t-1}, x_t].
        self.hyper_weight_ih = nn.Parameter(torch.empty(GATES * Hh, H + input_size))
        self.hyper_weight_hh = nn.Parameter(torch.empty(GATES * Hh, Hh))
        self.hyper_bias = nn.Parameter(torch.empty(GATES * Hh))
        # ĥ_t -> z_h, z_x, z_b for each gate; then z -> d_h, d_x, dynamic bias.
        self.z_weight = nn.Parameter(torch.empty(3, GATES, Nz, Hh))
        self.z_bias = nn.Parameter(torch.empty(2, GATES, Nz))
        self.d_weight = nn.Parameter(torch.empty(3, GATES, H, Nz))
        if layer_norm:
            self.ln_weight = nn.Parameter(torch.empty(GATES, H))
            self.ln_bias = nn.Parameter(torch.empty(GATES, H))
            self.ln_cell_weight = nn.Parameter(torch.empty(H))
            self.ln_cell_bias = nn.Parameter(torch.empty(H))
            self.hyper_ln_weight = nn.Parameter(torch.empty(GATES, Hh))
            self.hyper_ln_bias = nn.Parameter(torch.empty(GATES, Hh))
            self.hyper_ln_cell_weight = nn.Parameter(torch.empty(Hh))
            self.hyper_ln_cell_bias = nn.Parameter(torch.empty(Hh))
        else:
            for name in (
                "ln_weight",
                "ln_bias",
                "ln_cell_weight",
                "ln_cell_bias",
                "hyper_ln_weight",
                "hyper_ln_bias",
                "hyper_ln_cell_weight",
                "hyper_ln_cell_bias",
            ):
                self.register_parameter(name, None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialisation of App. A.2.3; every d starts at exactly 0.1."""
        with torch.no_grad():
            orthogonal_per_gate_(self.weight_ih)
            orthogonal_per_gate_(self.weight_hh)
            self.bias.zero_()
            orthogonal_per_gate_(self.hyper_weight_ih)
            orthogonal_per_gate_(self.hyper_weight_hh)
            self.hyper_bias.zero_()
            self.z_weight[:2].zero_()  # z_h, z_x: weights 0 ...
            self.z_bias.fill_(1.0)  # ... biases 1
            self.z_weight[2].normal_(0.0, 0.01)  # z_b ~ N(0, 0.01)
            self.d_weight[:2].fill_(0.1 / self.embed_size)  # d = (0.1/N_z) * sum(z = 1) = 0.1
            self.d_weight[2].zero_()  # W_bz = 0
            # The layer-norm parameters exist (are not None) exactly when layer_norm is on.
            for w in (self.ln_weight, self.ln_cell_weight, self.hyper_ln_weight, self.hyper_ln_cell_weight):
                if w is not None:
                    w.fill_(1.0)
            for b in (self.ln_bias, self.ln_cell_bias, self.hyper_ln_bias, self.hyper_ln_cell_bias):
                if b is not None:
                    b.zero_()

    def zero_state(self, batch: int, like: Tensor) -> CellState:
        def zeros(n: int) -> Tensor:
            return like.new_zeros(batch, n)

        return CellState(
            zeros(self.hidden_size), zeros(self.hidden_size), zeros(self.hyper_size), zeros(self.hyper_size)
        )

    def project_input(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The input-only parts of both cells, for any leading shape ``(..., input_size)``.

        Returns ``W_x x`` ``(..., 4N_h)`` and the x-part of the hyper input projection
        plus the hyper bias ``(..., 4N_ĥ)``. Computed once for a whole sequence by :class:`HyperLSTM`.
        """
        hyper_wx = self.hyper_weight_ih[:, self.hidden_size :]
        return F.linear(x, self.weight_ih), F.linear(x, hyper_wx, self.hyper_bias)

    def step(
        self, wx: Tensor, hyper_wx: Tensor, state: CellState, dropout_mask: Tensor | None = None
    ) -> tuple[CellState, Tensor, Tensor]:
        """Advance one step from the projected input (see :meth:`project_input`).

        Returns the new state and the weight-scaling vectors ``d_h``, ``d_x``, each ``(batch, 4, N_h)``.
        ``dropout_mask`` (``(batch, N_h)``, already scaled by 1/(1-p)) multiplies the candidate.
        """
        h, c, hh, hc = state
        B, H, Hh = h.shape[0], self.hidden_size, self.hyper_size
        ln = self.layer_norm

        # Hyper cell on x̂ = [h_{t-1}, x_t] (Eq. 10).
        hyper_pre = (hyper_wx + F.linear(h, self.hyper_weight_ih[:, :H]) + F.linear(hh, self.hyper_weight_hh)).view(
            B, GATES, Hh
        )
        if ln:
            hyper_pre = gate_layer_norm(hyper_pre, self.hyper_ln_weight, self.hyper_ln_bias, self.eps)
        hi, hg, hf, ho = hyper_pre.unbind(1)
        hc = torch.sigmoid(hf + self.forget_bias) * hc + torch.sigmoid(hi) * torch.tanh(hg)
        hc_out = F.layer_norm(hc, (Hh,), self.hyper_ln_cell_weight, self.hyper_ln_cell_bias, self.eps) if ln else hc
        hh = torch.sigmoid(ho) * torch.tanh(hc_out)

        # Embeddings z_h, z_x, z_b (Eq. 11) and their projections d_h, d_x, b (Eq. 12).
        z = torch.einsum("kgzn,bn->kbgz", self.z_weight, hh)  # (3, B, 4, Nz)
        z = torch.cat([z[:2] + self.z_bias.unsqueeze(1), z[2:]], dim=0)
        d = torch.einsum("kghz,kbgz->kbgh", self.d_weight, z)  # (3, B, 4, H)
        d_h, d_x, dyn_bias = d.unbind(0)

        # Main cell (Eq. 12-13).
        pre = (
            d_h * F.linear(h, self.weight_hh).view(B, GATES, H)
            + d_x * wx.view(B, GATES, H)
            + dyn_bias
            + self.bias.view(GATES, H)
        )
        if ln:
            pre = gate_layer_norm(pre, self.ln_weight, self.ln_bias, self.eps)
        i, g, f, o = pre.unbind(1)
        candidate = torch.tanh(g)
        if dropout_mask is not None:
            candidate = candidate * dropout_mask
        c = torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * candidate
        c_out = F.layer_norm(c, (H,), self.ln_cell_weight, self.ln_cell_bias, self.eps) if ln else c
        h = torch.sigmoid(o) * torch.tanh(c_out)
        return CellState(h, c, hh, hc), d_h, d_x

    def forward(self, x: Tensor, state: CellState | None = None) -> tuple[Tensor, CellState]:
        """One step: ``x`` ``(batch, input_size)`` -> ``h`` ``(batch, N_h)``, new state."""
        if state is None:
            state = self.zero_state(x.shape[0], x)
        wx, hyper_wx = self.project_input(x)
        mask = recurrent_dropout_mask(self.recurrent_dropout, self.training, x.shape[0], self.hidden_size, x)
        state, _, _ = self.step(wx, hyper_wx, state, mask)
        return state.h, state


def recurrent_dropout_mask(p: float, training: bool, batch: int, size: int, like: Tensor) -> Tensor | None:
    """A fresh inverted-dropout mask ``(batch, size)`` for one step, or None when inactive."""
    if not training or p == 0.0:
        return None
    return F.dropout(like.new_ones(batch, size), p=p, training=True)


def recurrent_dropout_masks(p: float, training: bool, steps: int, batch: int, size: int, like: Tensor) -> Tensor | None:
    """Inverted-dropout masks ``(steps, batch, size)`` for a whole sequence, or None when inactive.

    :class:`HyperLSTM` draws a layer's masks up front, in one call, on both its reference and its fast
    path, so that under one seed both paths use the same masks.
    """
    if not training or p == 0.0:
        return None
    return F.dropout(like.new_ones(steps, batch, size), p=p, training=True)


class HyperLSTM(nn.Module):
    """Multi-layer HyperLSTM with the conventions of :class:`torch.nn.LSTM`.

    Args:
        input_size, hidden_size, num_layers, batch_first: as in ``torch.nn.LSTM``; the first three are
            the only positional arguments (``HyperLSTM(10, 20, 2)`` is two layers, as ``nn.LSTM(10, 20, 2)``),
            the rest are keyword-only.
        hyper_size, embed_size, layer_norm, recurrent_dropout, forget_bias: see :class:`HyperLSTMCell`.
        dropout: dropout on the outputs of every layer but the last (as ``torch.nn.LSTM``).
        fast: run :func:`~hypermodels.fast_hyperlstm.fast_forward` (one autograd node per layer,
            hand-written BPTT; same results to rounding, several times faster to train). ``False`` runs
            the step-by-step reference, which autograd differentiates (needed for double backward).

    ``forward(x, state=None)``: ``x`` ``(T, B, input_size)`` (``(B, T, ·)`` if batch_first);
    returns ``output`` ``(T, B, hidden_size)`` and a :class:`HyperLSTMState`, which can be
    passed to the next truncated-BPTT segment (detach it first).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        hyper_size: int = 128,
        embed_size: int = 4,
        layer_norm: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        batch_first: bool = False,
        forget_bias: float = 1.0,
        fast: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.hyper_size, self.embed_size = hyper_size, embed_size
        self.dropout, self.batch_first = dropout, batch_first
        self.fast = fast
        self.cells = nn.ModuleList(
            HyperLSTMCell(
                input_size if k == 0 else hidden_size,
                hidden_size,
                hyper_size=hyper_size,
                embed_size=embed_size,
                layer_norm=layer_norm,
                recurrent_dropout=recurrent_dropout,
                forget_bias=forget_bias,
            )
            for k in range(num_layers)
        )

    def zero_state(self, batch: int, like: Tensor) -> HyperLSTMState:
        L = self.num_layers
        return HyperLSTMState(
            like.new_zeros(L, batch, self.hidden_size),
            like.new_zeros(L, batch, self.hidden_size),
            like.new_zeros(L, batch, self.hyper_size),
            like.new_zeros(L, batch, self.hyper_size),
        )

    def forward(self, x: Tensor, state: HyperLSTMState | None = None) -> tuple[Tensor, HyperLSTMState]:
        if self.fast:  # same results, one autograd node per layer (hypermodels/fast_hyperlstm.py)
            return fast_forward(self, x, state)
        output, state, _ = self._run(x, state, keep_scales=False)
        return output, state

    @torch.no_grad()
    def scaling_vectors(self, x: Tensor, state: HyperLSTMState | None = None) -> tuple[Tensor, Tensor]:
        """The weight-scaling vectors of a forward pass (the paper's Fig. 5-6 view).

        Returns ``d_h`` and ``d_x``, each ``(num_layers, T, B, 4, hidden_size)`` (gates i, g, f, o).
        """
        _, _, scales = self._run(x, state, keep_scales=True)
        d_h = torch.stack([torch.stack(layer[0]) for layer in scales])
        d_x = torch.stack([torch.stack(layer[1]) for layer in scales])
        if self.batch_first:
            d_h, d_x = d_h.transpose(1, 2), d_x.transpose(1, 2)
        return d_h, d_x

    def _run(
        self, x: Tensor, state: HyperLSTMState | None, keep_scales: bool
    ) -> tuple[Tensor, HyperLSTMState, list[tuple[list[Tensor], list[Tensor]]]]:
        if x.dim() != 3:
            raise ValueError(f"expected a 3-D input (seq, batch, features), got shape {tuple(x.shape)}")
        if self.batch_first:
            x = x.transpose(0, 1)
        T, B, _ = x.shape
        if state is None:
            state = self.zero_state(B, x)
        new_state: list[CellState] = []
        scales: list[tuple[list[Tensor], list[Tensor]]] = []
        layer_input = x
        for k, cell in enumerate(cast(Iterable[HyperLSTMCell], self.cells)):
            cell_state = CellState(state.h[k], state.c[k], state.hyper_h[k], state.hyper_c[k])
            # Input projections of the whole sequence at once; unbind (not indexing) keeps backward O(T).
            wx_all, hyper_wx_all = (p.unbind(0) for p in cell.project_input(layer_input))
            # All of the layer's masks up front, as the fast path draws them.
            masks = recurrent_dropout_masks(cell.recurrent_dropout, self.training, T, B, self.hidden_size, x)
            outputs: list[Tensor] = []
            d_hs: list[Tensor] = []
            d_xs: list[Tensor] = []
            for t in range(T):
                mask = None if masks is None else masks[t]
                cell_state, d_h, d_x = cell.step(wx_all[t], hyper_wx_all[t], cell_state, mask)
                outputs.append(cell_state.h)
                if keep_scales:
                    d_hs.append(d_h)
                    d_xs.append(d_x)
            layer_input = torch.stack(outputs)
            if self.dropout and k < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, self.training)
            new_state.append(cell_state)
            scales.append((d_hs, d_xs))
        output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        stacked = HyperLSTMState(*(torch.stack(parts) for parts in zip(*new_state, strict=True)))
        return output, stacked, scales


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "HyperLSTM",
    "HyperLSTMCell",
    "HyperLSTMState",
    "CellState",
    "count_parameters",
    "gate_layer_norm",
    "orthogonal_per_gate_",
    "recurrent_dropout_mask",
    "recurrent_dropout_masks",
]
