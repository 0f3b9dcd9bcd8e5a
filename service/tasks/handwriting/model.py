"""The generator a ``handwriting`` job describes: spec fields -> :class:`hypermodels.HandwritingModel`."""

from __future__ import annotations

from hypermodels import HandwritingModel

from .spec import HandwritingJob


def build_model(spec: HandwritingJob) -> HandwritingModel:
    m = spec.model
    return HandwritingModel(
        m.cell,
        m.hidden_size,
        m.num_layers,
        num_mixtures=m.num_mixtures,
        hyper_size=m.hyper.hidden_size,
        embed_size=m.hyper.embed_size,
        layer_norm=m.layer_norm,
        dropout=m.dropout.output,
        recurrent_dropout=m.dropout.recurrent,
        fast=m.fast,
    )


__all__ = ["build_model"]
