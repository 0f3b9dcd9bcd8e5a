"""The language model a ``char_lm`` job describes: spec fields -> :class:`hypermodels.CharLM`."""

from __future__ import annotations

from hypermodels import CharLM

from .spec import CharLMJob


def build_model(spec: CharLMJob, vocab_size: int) -> CharLM:
    m = spec.model
    return CharLM(
        vocab_size,
        cell=m.cell,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        hyper_size=m.hyper.hidden_size,
        embed_size=m.hyper.embed_size,
        layer_norm=m.layer_norm,
        dropout=m.dropout.output,
        recurrent_dropout=m.dropout.recurrent,
        input_dropout=m.dropout.input,
        fast=m.fast,
    )


__all__ = ["build_model"]
