"""The recurrent-layer factory and the recurrent-state tree map, shared by every model of the package.

* :func:`build_rnn` builds the recurrent stack a model names by ``cell`` (one of :data:`CELLS`).
* :func:`map_state` applies a function to every tensor of a recurrent state, whatever its shape:
  a :class:`~hypermodels.hyperlstm.HyperLSTMState` (named 4-tuple), an ``(h, c)`` tuple, lists or
  tuples of those (a stack of layers). :func:`detach_state`, :func:`state_to` and :func:`state_to_cpu`
  are its common uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .hyperlstm import HyperLSTM
from .lstm import LSTM, LayerNormLSTM

CELLS = ("hyperlstm", "lstm", "ln_lstm")


def build_rnn(
    cell: str,
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
    fast: bool = True,
) -> nn.Module:
    """The recurrent stack named by ``cell``; all share ``forward(x, state) -> output, state``.

    ``layer_norm`` applies to ``hyperlstm`` only (``ln_lstm`` is layer-normalised by definition,
    ``lstm`` never). ``lstm`` is the fused kernel unless recurrent dropout asks for the step loop.
    ``fast`` (``hyperlstm`` only): the fast path, or ``False`` for the reference implementation.
    """
    if cell == "hyperlstm":
        return HyperLSTM(
            input_size,
            hidden_size,
            num_layers,
            hyper_size=hyper_size,
            embed_size=embed_size,
            layer_norm=layer_norm,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            batch_first=batch_first,
            fast=fast,
        )
    if cell == "ln_lstm":
        return LayerNormLSTM(
            input_size,
            hidden_size,
            num_layers,
            layer_norm=True,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            batch_first=batch_first,
        )
    if cell == "lstm":
        if recurrent_dropout:
            return LayerNormLSTM(
                input_size,
                hidden_size,
                num_layers,
                layer_norm=False,
                dropout=dropout,
                recurrent_dropout=recurrent_dropout,
                batch_first=batch_first,
            )
        return LSTM(input_size, hidden_size, num_layers, dropout=dropout, batch_first=batch_first)
    raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")


def map_state(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    """Apply ``fn`` to every tensor of a recurrent state, keeping its structure.

    Works for a :class:`~hypermodels.hyperlstm.HyperLSTMState` (named 4-tuple), an ``(h, c)`` tuple, and
    lists/tuples of those (a stack of layers); ``None`` (no state yet) passes through. Anything else
    raises ``TypeError``.
    """
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, tuple):
        parts = [map_state(fn, s) for s in state]
        return type(state)(*parts) if hasattr(state, "_fields") else tuple(parts)
    if isinstance(state, list):
        return [map_state(fn, s) for s in state]
    if state is None:
        return None
    raise TypeError(f"not a recurrent state: {type(state).__name__}")


def detach_state(state: Any) -> Any:
    """Detach every tensor of a recurrent state: the truncated-BPTT boundary."""
    return map_state(Tensor.detach, state)


def state_to(state: Any, device: torch.device | str) -> Any:
    """Every tensor of a recurrent state moved to ``device`` (e.g. a resumed state onto the model's)."""
    return map_state(lambda t: t.to(device), state)


def state_to_cpu(state: Any) -> Any:
    """Every tensor of a recurrent state detached and on the CPU (e.g. for a checkpoint)."""
    return map_state(lambda t: t.detach().cpu(), state)


__all__ = ["CELLS", "build_rnn", "detach_state", "map_state", "state_to", "state_to_cpu"]
