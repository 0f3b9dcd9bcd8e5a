"""The language model a ``char_lm`` job describes: spec fields -> :class:`hypermodels.CharLM`."""

from __future__ import annotations

from hypermodels import CharLM, count_parameters

from .spec import CharLMJob

PTB_SYMBOLS = 50  # PTB char's vocabulary, the newline included: the size assumed before data exists


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


def parameter_count(spec: CharLMJob) -> int:
    """Trainable parameters at PTB's 50 symbols (the vocabulary is known only once data is prepared)."""
    return count_parameters(build_model(spec, PTB_SYMBOLS))


__all__ = ["PTB_SYMBOLS", "build_model", "parameter_count"]
