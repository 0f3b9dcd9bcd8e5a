"""The encoder-decoder a ``translation`` job describes: spec fields -> :class:`hypermodels.Seq2Seq`."""

from __future__ import annotations

from hypermodels import Seq2Seq

from .data import BOS_ID, EOS_ID, PAD_ID
from .spec import TranslationJob


def build_model(spec: TranslationJob, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
    """The encoder-decoder of a translation job (special ids as :mod:`.data` fixes them)."""
    m = spec.model
    return Seq2Seq(
        src_vocab_size,
        tgt_vocab_size,
        cell=m.cell,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        embedding_size=m.embedding_size,
        hyper_size=m.hyper.hidden_size,
        embed_size=m.hyper.embed_size,
        layer_norm=m.layer_norm,
        dropout=m.dropout,
        attention=m.attention,
        input_feeding=m.input_feeding,
        pad_id=PAD_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
    )


__all__ = ["build_model"]
