"""Baselines with the HyperLSTM's conventions: the fused LSTM and the layer-norm LSTM."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hyperlstm import GATES, gate_layer_norm, orthogonal_per_gate_, recurrent_dropout_mask


class LSTM(nn.LSTM):
    """``torch.nn.LSTM`` (the fused kernel) with the paper's init and the project's constructor.

    Orthogonal weights per gate, zero biases, forget-gate bias ``forget_bias``. The fused kernel has
    no recurrent dropout: use :class:`LayerNormLSTM` with ``layer_norm=False`` for that.
    ``forward(x, (h, c))`` returns ``output, (h, c)`` with ``h``, ``c`` ``(num_layers, B, hidden_size)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        dropout: float = 0.0,
        batch_first: bool = False,
        forget_bias: float = 1.0,
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers=num_layers, dropout=dropout, batch_first=batch_first)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("weight"):
                    orthogonal_per_gate_(p)
                else:
                    p.zero_()
                    if name.startswith("bias_ih"):  # torch gate order is (i, f, g, o)
                        p[hidden_size : 2 * hidden_size].fill_(forget_bias)


class LayerNormLSTMCell(nn.Module):
    """LSTM cell with per-gate layer norm and LN on the output path (Ba et al. 2016).

    Same equations as the HyperLSTM's main cell with every d = 1 and no dynamic bias.
    ``layer_norm=False`` gives a plain LSTM cell that supports recurrent dropout.
    """

    # Layer-norm parameters: None without layer norm (registered as None, so state_dict has no entry).
    ln_weight: nn.Parameter | None
    ln_bias: nn.Parameter | None
    ln_cell_weight: nn.Parameter | None
    ln_cell_bias: nn.Parameter | None

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        layer_norm: bool = True,
        recurrent_dropout: float = 0.0,
        forget_bias: float = 1.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if not 0.0 <= recurrent_dropout < 1.0:
            raise ValueError(f"recurrent_dropout must be in [0, 1), got {recurrent_dropout}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.layer_norm, self.recurrent_dropout = layer_norm, recurrent_dropout
        self.forget_bias, self.eps = forget_bias, eps
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(GATES * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(GATES * H, H))
        self.bias = nn.Parameter(torch.zeros(GATES * H))
        if layer_norm:
            self.ln_weight = nn.Parameter(torch.ones(GATES, H))
            self.ln_bias = nn.Parameter(torch.zeros(GATES, H))
            self.ln_cell_weight = nn.Parameter(torch.ones(H))
            self.ln_cell_bias = nn.Parameter(torch.zeros(H))
        else:
            for name in ("ln_weight", "ln_bias", "ln_cell_weight", "ln_cell_bias"):
                self.register_parameter(name, None)
        orthogonal_per_gate_(self.weight_ih)
        orthogonal_per_gate_(self.weight_hh)

    def step(
        self, wx: Tensor, state: tuple[Tensor, Tensor], dropout_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One step from ``wx`` = W_x x_t + b ``(B, 4H)``; returns the new ``(h, c)``."""
        h, c = state
        B, H = h.shape[0], self.hidden_size
        pre = (wx + F.linear(h, self.weight_hh)).view(B, GATES, H)
        if self.layer_norm:
            pre = gate_layer_norm(pre, self.ln_weight, self.ln_bias, self.eps)
        i, g, f, o = pre.unbind(1)
        candidate = torch.tanh(g)
        if dropout_mask is not None:
            candidate = candidate * dropout_mask
        c = torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * candidate
        c_out = F.layer_norm(c, (H,), self.ln_cell_weight, self.ln_cell_bias, self.eps) if self.layer_norm else c
        return torch.sigmoid(o) * torch.tanh(c_out), c

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One step: ``x`` ``(B, input_size)`` -> ``h`` ``(B, H)``, ``(h, c)``."""
        if state is None:
            state = (x.new_zeros(x.shape[0], self.hidden_size),) * 2
        mask = recurrent_dropout_mask(self.recurrent_dropout, self.training, x.shape[0], self.hidden_size, x)
        h, c = self.step(F.linear(x, self.weight_ih, self.bias), state, mask)
        return h, (h, c)


class LayerNormLSTM(nn.Module):
    """Multi-layer layer-norm LSTM with the conventions of ``torch.nn.LSTM``.

    ``forward(x, (h, c)=None)``: ``x`` ``(T, B, input_size)`` (or batch first) -> ``output, (h, c)``,
    ``h``, ``c`` ``(num_layers, B, hidden_size)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        layer_norm: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        batch_first: bool = False,
        forget_bias: float = 1.0,
    ) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.batch_first = dropout, batch_first
        self.cells = nn.ModuleList(
            LayerNormLSTMCell(
                input_size if k == 0 else hidden_size,
                hidden_size,
                layer_norm=layer_norm,
                recurrent_dropout=recurrent_dropout,
                forget_bias=forget_bias,
            )
            for k in range(num_layers)
        )

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if self.batch_first:
            x = x.transpose(0, 1)
        T, B, _ = x.shape
        if state is None:
            zeros = x.new_zeros(self.num_layers, B, self.hidden_size)
            state = (zeros, zeros)
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        layer_input = x
        for k, cell in enumerate(cast(Iterable[LayerNormLSTMCell], self.cells)):
            hc = (state[0][k], state[1][k])
            # Whole sequence at once; unbind (not indexing) keeps backward O(T).
            wx_all = F.linear(layer_input, cell.weight_ih, cell.bias).unbind(0)
            outputs: list[Tensor] = []
            for t in range(T):
                mask = recurrent_dropout_mask(cell.recurrent_dropout, self.training, B, self.hidden_size, x)
                hc = cell.step(wx_all[t], hc, mask)
                outputs.append(hc[0])
            layer_input = torch.stack(outputs)
            if self.dropout and k < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, self.training)
            hs.append(hc[0])
            cs.append(hc[1])
        output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        return output, (torch.stack(hs), torch.stack(cs))


__all__ = ["LSTM", "LayerNormLSTM", "LayerNormLSTMCell"]
