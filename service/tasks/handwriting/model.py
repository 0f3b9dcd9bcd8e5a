"""The generator a ``handwriting`` job describes: spec fields -> :class:`hypermodels.HandwritingModel`."""

from __future__ import annotations

from hypermodels import HandwritingModel, count_parameters

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


def parameter_count(spec: HandwritingJob) -> int:
    """Trainable parameters (the input is always 3 wide: the size does not depend on the data)."""
    return count_parameters(build_model(spec))


__all__ = ["build_model", "parameter_count"]
