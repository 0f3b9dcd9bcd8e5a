"""Using a trained character-level LM: loading it (:mod:`service.io.models`), bits per character on a
text file or a split of its own data (``hyperctl evaluate``), and sampling (``hyperctl sample``)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypermodels import CharLM, CharVocab, ptb_char_symbols, raw_char_symbols
from hypermodels.text import NEWLINE

from ...io import storage, text
from ...io.datacache import data_error
from ...io.models import ModelSource, ModelSourceError
from ...spec.errors import validate_as
from ..base import Evaluation
from .spec import CharLMJob

VOCAB_FILE = "vocab.json"  # the MLflow model's vocabulary: {"symbols", "kind", "ptb_format", "data_root"}
TASK_NAME = "char_lm"


def vocab_document(prepared: Any) -> bytes:
    """What reading text for a model needs (:class:`.data.PreparedText`): its symbols, how text was cut
    into them (``kind``: chars, ptb-char or bytes) and the prepared folder its splits are in."""
    doc = {"symbols": list(prepared.vocab), "kind": prepared.kind, "ptb_format": prepared.ptb_format}
    return json.dumps({**doc, "data_root": prepared.root}).encode()


@dataclass
class TrainedLM:
    spec: CharLMJob
    model: CharLM
    vocab: CharVocab
    kind: str  # chars, ptb-char or bytes
    ptb_format: bool  # '_' means a space
    data_root: str | None  # the prepared splits, when known

    def symbols(self, field: str, where: str, raw: bytes) -> list[str]:
        """The file ``raw`` read as the job read its data (text by :mod:`service.io.text`; bytes as they
        are) and cut into the model's symbols; a JobSpecError naming ``field`` and ``where`` for bad
        text or symbols outside the vocabulary."""
        if self.kind == "bytes":
            symbols = [chr(b) for b in raw]
        else:
            body = text.normalize_newlines(field, where, text.decode(field, where, raw))
            symbols = ptb_char_symbols(body) if self.kind == "ptb-char" else raw_char_symbols(body)
        unknown = sorted(set(symbols) - set(self.vocab.symbols))
        if unknown:
            hint = " (the model reads PTB char: space-separated symbols, '_' a space)" if self.ptb_format else ""
            raise data_error(
                field,
                f"{where}: {len(unknown)} symbol(s) outside the model's vocabulary of {len(self.vocab.symbols)}, "
                f"e.g. {unknown[:5]}{hint}",
            )
        return symbols

    def to_text(self, ids: list[int]) -> str:
        if self.kind == "bytes":
            return bytes(ord(self.vocab.symbols[i]) for i in ids).decode("utf-8", errors="replace")
        return self.vocab.to_text(ids, self.ptb_format)


def load_lm(source: ModelSource) -> TrainedLM:
    """The char LM of ``source`` with its vocabulary; ModelSourceError when it is another task's model."""
    if source.task != TASK_NAME:
        raise ModelSourceError(f"{source.given}: a model of a {source.task or 'unknown'} job, not of a char_lm job")
    from .data import load_prepared  # deferred: pyarrow
    from .model import build_model

    spec: CharLMJob = validate_as(CharLMJob, source.spec, source.given)
    if source.checkpoint is not None:
        prepared = load_prepared(source.prepared_root("the vocabulary"))
        doc = json.loads(vocab_document(prepared))
    else:
        doc = json.loads(source.file(VOCAB_FILE) or b"null")
        if not doc:
            raise ModelSourceError(f"{source.given}: the model has no {VOCAB_FILE}")
    symbols = doc["symbols"]
    model = source.module(lambda: build_model(spec, len(symbols)))
    kind = doc.get("kind") or ("ptb-char" if doc["ptb_format"] else "chars")
    return TrainedLM(spec, model, CharVocab(symbols), kind, bool(doc["ptb_format"]), doc.get("data_root"))


def _read(field: str, uri: str) -> bytes:
    try:
        return storage.read_bytes(uri)
    except FileNotFoundError:
        raise data_error(field, f"expected a file, found nothing at {uri}") from None
    except OSError as e:
        raise data_error(field, f"cannot read {uri}: {e}") from None


def split_bpc(lm: TrainedLM, split: str) -> tuple[float, int, str]:
    """(bits per character, symbols predicted, where) on a split of the data ``lm`` was trained on:
    the prepared split itself when its folder is there (exactly the job's own evaluation), else the
    built-in PTB split or the job's own ``data.<split>`` file read again."""
    from hypermodels import bits_per_char as bpc_of_ids

    from .data import load_prepared, load_ptb_char, open_split
    from .streams import bits_per_char

    d = lm.spec.data
    if lm.data_root and storage.exists(lm.data_root):
        prepared = load_prepared(lm.data_root)
        if not prepared.has_split(split):
            raise data_error("--split", f"the job's data has no {split!r} split; give --text FILE")
        reader = open_split(prepared, split)
        value = bits_per_char(lm.model, reader, d.eval_batch_size, d.seq_len)
        return value, reader.num_rows - 1, f"{split} split of {lm.data_root}"
    if d.dataset == "ptb-char":
        symbols, where = load_ptb_char(split), f"ptb-char {split} split"
    elif d.dataset is None and getattr(d, split, None) is not None:
        where = getattr(d, split)
        symbols = lm.symbols(f"data.{split}", where, _read(f"data.{split}", where))
    else:
        raise data_error(
            "--split",
            f"the job's prepared data ({lm.data_root}) is gone and cannot be read again here; give --text FILE",
        )
    ids = torch_ids(lm, symbols)
    return bpc_of_ids(lm.model, ids, batch_size=d.eval_batch_size, seq_len=d.seq_len), len(symbols) - 1, where


def torch_ids(lm: TrainedLM, symbols: list[str]) -> Any:
    import torch

    return torch.tensor(lm.vocab.encode(symbols), dtype=torch.long)


def evaluate(source: ModelSource, args: argparse.Namespace) -> Evaluation:
    """Bits per character of a char LM on ``--text FILE`` or ``--split valid|test`` (the whole text,
    in the job's evaluation streams and segments, the state carried across them)."""
    from hypermodels import bits_per_char

    if (args.text is None) == (args.split is None):
        raise data_error("--text", "give one of --text FILE or --split valid|test for a char_lm model")
    if args.split is not None and args.split not in ("valid", "test"):
        raise data_error("--split", f"expected valid or test for a char_lm model, found {args.split!r}")
    lm = load_lm(source)
    d = lm.spec.data
    if args.split is not None:
        bpc, predicted, where = split_bpc(lm, args.split)
        name = args.split
    else:
        symbols, where = lm.symbols("--text", args.text, _read("--text", args.text)), args.text
        if len(symbols) < 2:
            raise data_error("--text", f"{where}: expected at least 2 symbols (a symbol and the one it predicts)")
        bpc = bits_per_char(lm.model, torch_ids(lm, symbols), batch_size=d.eval_batch_size, seq_len=d.seq_len)
        predicted, name = len(symbols) - 1, Path(args.text.rstrip("/")).name.split(".")[0] or "text"
    return Evaluation(name, {"bpc": bpc}, [f"{where}: {predicted:,} symbols predicted"])


def sample_text(lm: TrainedLM, prime: str | None, length: int, temperature: float, seed: int) -> str:
    """``prime`` (plain text; a newline when None) and ``length`` sampled symbols after it, as text."""
    import torch

    if prime is None:
        symbols = [NEWLINE] if NEWLINE in lm.vocab.index else lm.vocab.symbols[:1]
    else:
        plain = prime.replace("\r\n", "\n")
        if lm.kind == "bytes":
            symbols = [chr(b) for b in plain.encode("utf-8")]
        else:
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
    return lm.to_text(ids + sampled)


__all__ = ["VOCAB_FILE", "TrainedLM", "evaluate", "load_lm", "sample_text", "vocab_document"]
