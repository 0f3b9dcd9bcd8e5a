"""The parameter count a handwriting job describes, without building it (no torch: ``validate`` is quick)."""

from __future__ import annotations

from hypermodels.sizes import handwriting_parameters

from .spec import HandwritingJob


def parameter_count(spec: HandwritingJob) -> int:
    """Trainable parameters of :func:`.model.build_model` (the input is always 3 wide: the size does not
    depend on the data)."""
    m = spec.model
    return handwriting_parameters(
        m.cell,
        m.hidden_size,
        m.num_layers,
        num_mixtures=m.num_mixtures,
        hyper_size=m.hyper.hidden_size,
        embed_size=m.hyper.embed_size,
        layer_norm=m.layer_norm,
        recurrent_dropout=m.dropout.recurrent,
    )


__all__ = ["parameter_count"]
