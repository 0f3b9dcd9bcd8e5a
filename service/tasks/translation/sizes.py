"""The parameter count a translation job describes, without building it (no torch: ``validate`` is quick)."""

from __future__ import annotations

from hypermodels.sizes import seq2seq_parameters

from .spec import TranslationJob


def parameter_count(spec: TranslationJob, src_vocab_size: int | None = None, tgt_vocab_size: int | None = None) -> int:
    """Trainable parameters of :func:`.model.build_model`; the vocabularies default to the configured
    subword vocabulary size (the real ones are known only once sentencepiece has been trained)."""
    m, v = spec.model, spec.data.subwords.vocab_size
    return seq2seq_parameters(
        src_vocab_size or v,
        tgt_vocab_size or v,
        cell=m.cell,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        embedding_size=m.embedding_size,
        hyper_size=m.hyper.hidden_size,
        embed_size=m.hyper.embed_size,
        layer_norm=m.layer_norm,
        attention=m.attention,
        input_feeding=m.input_feeding,
    )


__all__ = ["parameter_count"]
