"""Checks of a validated spec against the world: files, URIs, cluster resources.

Placeholder owned by the data/storage work; ``check_job`` raises JobSpecError naming the field.
"""
from __future__ import annotations

from hypermodels import CharLM, count_parameters

from .spec import JobSpec


def build_model(spec: JobSpec, vocab_size: int) -> CharLM:
    """The model a spec describes (one place, used by training, validation and the CLI)."""
    m = spec.model
    return CharLM(vocab_size, cell=m.cell, hidden_size=m.hidden_size, num_layers=m.num_layers,
                  hyper_size=m.hyper.hidden_size, embed_size=m.hyper.embed_size, layer_norm=m.layer_norm,
                  dropout=m.dropout.output, recurrent_dropout=m.dropout.recurrent, input_dropout=m.dropout.input)


def model_parameter_count(spec: JobSpec, vocab_size: int = 50) -> int:
    return count_parameters(build_model(spec, vocab_size))


def check_job(spec: JobSpec) -> None:
    """Raise JobSpecError for problems only the environment can reveal (to be completed)."""
