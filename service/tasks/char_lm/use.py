"""Using a trained character-level LM: loading it (:mod:`service.io.models`), bits per character on a
text file or a split of its own data (``hyperctl evaluate``), and sampling (``hyperctl sample``)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from hypermodels import CharLM, CharVocab, ptb_char_symbols, raw_char_symbols
from hypermodels.text import NEWLINE

from ...io import storage, text
from ...io.datacache import data_error
from ...io.models import ModelSource, ModelSourceError
from ...spec.errors import validate_as
from ..base import Evaluation
from .spec import CharLMJob

VOCAB_FILE = "vocab.json"  # the MLflow model's vocabulary: {"symbols": [...], "ptb_format": bool}
TASK_NAME = "char_lm"


def vocab_document(symbols: list[str], ptb_format: bool) -> bytes:
    return json.dumps({"symbols": list(symbols), "ptb_format": ptb_format}).encode()


@dataclass
class TrainedLM:
    spec: CharLMJob
    model: CharLM
    vocab: CharVocab
    ptb_format: bool  # symbols are PTB char's ('_' a space, symbols separated by spaces)

    def symbols(self, field: str, where: str, body: str) -> list[str]:
        """``body`` (LF-terminated text) as the model's symbols; a JobSpecError naming ``field`` and
        ``where`` for symbols outside its vocabulary."""
        symbols = ptb_char_symbols(body) if self.ptb_format else raw_char_symbols(body)
        unknown = sorted(set(symbols) - set(self.vocab.symbols))
        if unknown:
            hint = " (the model reads PTB char: space-separated symbols, '_' a space)" if self.ptb_format else ""
            raise data_error(
                field,
                f"{where}: {len(unknown)} symbol(s) outside the model's vocabulary of {len(self.vocab.symbols)}, "
                f"e.g. {unknown[:5]}{hint}",
            )
        return symbols


def load_lm(source: ModelSource) -> TrainedLM:
    """The char LM of ``source`` with its vocabulary; ModelSourceError when it is another task's model."""
    if source.task != TASK_NAME:
        raise ModelSourceError(f"{source.given}: a model of a {source.task or 'unknown'} job, not of a char_lm job")
    from .data import load_prepared  # deferred: pyarrow
    from .model import build_model

    spec: CharLMJob = validate_as(CharLMJob, source.spec, source.given)
    if source.checkpoint is not None:
        prepared = load_prepared(source.prepared_root("the vocabulary"))
        symbols, ptb_format = prepared.vocab, prepared.ptb_format
    else:
        doc = json.loads(source.file(VOCAB_FILE) or b"null")
        if not doc:
            raise ModelSourceError(f"{source.given}: the model has no {VOCAB_FILE}")
        symbols, ptb_format = doc["symbols"], bool(doc["ptb_format"])
    model = source.module(lambda: build_model(spec, len(symbols)))
    return TrainedLM(spec, model, CharVocab(symbols), ptb_format)


def _read_text(field: str, uri: str) -> str:
    """A text file as every text file is read (:mod:`service.io.text`), line endings as LF."""
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError:
        raise data_error(field, f"expected a UTF-8 text file, found nothing at {uri}") from None
    except OSError as e:
        raise data_error(field, f"cannot read {uri}: {e}") from None
    return text.normalize_newlines(field, uri, text.decode(field, uri, raw))


def split_symbols(lm: TrainedLM, split: str) -> tuple[list[str], str]:
    """(symbols, where) of a split of the data ``lm`` was trained on: the built-in set's, or the job's
    own ``data.<split>`` file, read as the job read it."""
    from .data import load_ptb_char  # deferred: pyarrow

    data = lm.spec.data
    if data.dataset is not None:
        return load_ptb_char(split), f"{data.dataset} {split} split"
    uri = getattr(data, split, None)
    if uri is None:
        raise data_error("--split", f"the job has no data.{split} to evaluate on; give --text FILE")
    return lm.symbols(f"data.{split}", uri, _read_text(f"data.{split}", uri)), uri


def evaluate(source: ModelSource, args: argparse.Namespace) -> Evaluation:
    """Bits per character of a char LM on ``--text FILE`` or ``--split valid|test`` (the whole text,
    the state carried across segments of ``data.seq_len``, as the job's final evaluation)."""
    import torch

    from hypermodels import bits_per_char

    if (args.text is None) == (args.split is None):
        raise data_error("--text", "give one of --text FILE or --split valid|test for a char_lm model")
    lm = load_lm(source)
    if args.split is not None:
        if args.split not in ("valid", "test"):
            raise data_error("--split", f"expected valid or test for a char_lm model, found {args.split!r}")
        symbols, where = split_symbols(lm, args.split)
        name = args.split
    else:
        symbols, where = lm.symbols("--text", args.text, _read_text("--text", args.text)), args.text
        name = Path(args.text.rstrip("/")).name.split(".")[0] or "text"
    if len(symbols) < 2:
        raise data_error("--text", f"{where}: expected at least 2 symbols (a symbol and the one it predicts)")
    ids = torch.tensor(lm.vocab.encode(symbols), dtype=torch.long)
    d = lm.spec.data
    bpc = bits_per_char(lm.model, ids, batch_size=d.eval_batch_size, seq_len=d.seq_len)
    return Evaluation(name, {"bpc": bpc}, [f"{where}: {len(symbols) - 1:,} symbols predicted"])


def sample_text(lm: TrainedLM, prime: str | None, length: int, temperature: float, seed: int) -> str:
    """``prime`` (plain text; a newline when None) and ``length`` sampled symbols after it, as text."""
    import torch

    if prime is None:
        symbols = [NEWLINE] if NEWLINE in lm.vocab.index else lm.vocab.symbols[:1]
    else:
        plain = prime.replace("\r\n", "\n")
        symbols = [("_" if c == " " else c) for c in plain] if lm.ptb_format else list(plain)
        unknown = sorted(set(symbols) - set(lm.vocab.symbols))
        if unknown or not symbols:
            raise data_error(
                "--prime",
                f"expected text of the model's {len(lm.vocab.symbols)} symbols, found "
                + (f"{len(unknown)} outside them: {unknown[:5]}" if unknown else "an empty prime"),
            )
    generator = torch.Generator().manual_seed(seed)
    ids = lm.vocab.encode(symbols)
    sampled = lm.model.sample(ids, length, temperature=temperature, generator=generator)
    return lm.vocab.to_text(ids + sampled, lm.ptb_format)


__all__ = ["VOCAB_FILE", "TrainedLM", "evaluate", "load_lm", "sample_text", "vocab_document"]
