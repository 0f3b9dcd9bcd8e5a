"""The model a job spec describes: the one place that maps spec fields to hypermodels arguments."""
from __future__ import annotations

from hypermodels import CharLM, count_parameters

from .spec import JobSpec


def build_model(spec: JobSpec, vocab_size: int) -> CharLM:
    m = spec.model
    return CharLM(vocab_size, cell=m.cell, hidden_size=m.hidden_size, num_layers=m.num_layers,
                  hyper_size=m.hyper.hidden_size, embed_size=m.hyper.embed_size, layer_norm=m.layer_norm,
                  dropout=m.dropout.output, recurrent_dropout=m.dropout.recurrent, input_dropout=m.dropout.input)


def model_parameter_count(spec: JobSpec, vocab_size: int = 50) -> int:
    return count_parameters(build_model(spec, vocab_size))
