"""The parameter count a ``char_lm`` job describes, without building it (no torch: ``validate`` is quick)."""

from __future__ import annotations

from hypermodels.sizes import charlm_parameters

from .spec import CharLMJob

PTB_SYMBOLS = 50  # PTB char's vocabulary, the newline included: the size assumed before data exists
ENWIK8_SYMBOLS = 205  # the distinct bytes of the real enwik8 file (the paper's count)


def parameter_count(spec: CharLMJob, vocab_size: int | None = None) -> int:
    """Trainable parameters of :func:`.model.build_model` at ``vocab_size`` symbols (default: 205 for
    enwik8, else PTB's 50; the vocabulary is known only once data is prepared)."""
    if vocab_size is None:
        vocab_size = ENWIK8_SYMBOLS if spec.data.dataset == "enwik8" else PTB_SYMBOLS
    m = spec.model
    return charlm_parameters(
        vocab_size,
        m.cell,
        m.hidden_size,
        m.num_layers,
        hyper_size=m.hyper.hidden_size,
        embed_size=m.hyper.embed_size,
        layer_norm=m.layer_norm,
        recurrent_dropout=m.dropout.recurrent,
    )


__all__ = ["ENWIK8_SYMBOLS", "PTB_SYMBOLS", "parameter_count"]
