"""Prepared text for ``task: char_lm``: symbol ids in Parquet plus ``vocab.json``, cached by content
hash (:mod:`service.io.datacache`).

A prepared folder ``<cache_root>/<name>-<hash16>`` holds ``train.parquet``, ``valid.parquet``,
optionally ``test.parquet`` (one int32 column ``id``) and ``vocab.json``, the manifest, written last.

The vocabulary is built from the training text. A validation or test symbol missing from it is an
error (not mapped to some unknown id): the model could never predict it, and its bits-per-char
would be meaningless.

The built-in ``ptb-char`` is the vendored character-level Penn Treebank (``data/ptb-char``, see its
PROVENANCE.md); the project's shared data folder is the fallback.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from hypermodels import CharVocab, ptb_char_symbols, raw_char_symbols

if TYPE_CHECKING:
    import torch

from ...io import datacache, storage, text
from ...paths import PROJECT_ROOT, VENDORED_DATA
from ...spec.errors import JobSpecError
from ..base import DataFile
from .spec import CharLMJob

# Bump when the folder layout or the meaning of its files changes: old caches are then ignored.
SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test")
VOCAB_FILE = "vocab.json"
COLUMN = "id"
_SPLITTERS: dict[str, Callable[[str], list[str]]] = {"chars": raw_char_symbols, "ptb-char": ptb_char_symbols}
PTB_CHAR_DIRS = (VENDORED_DATA / "ptb-char", PROJECT_ROOT.parent / "shared" / "data" / "ptb" / "char")


def load_ptb_char(split: str, root: str | Path | None = None) -> list[str]:
    """The symbols of one PTB-char split (``train``, ``valid`` or ``test``): PTB's space-separated
    symbols, each newline a symbol too (50 in all)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folders = [Path(root)] if root else list(PTB_CHAR_DIRS)
    for folder in folders:
        gz, plain = folder / f"ptb.char.{split}.txt.gz", folder / f"ptb.char.{split}.txt"
        if gz.is_file():
            with gzip.open(gz, "rt", encoding="utf-8") as f:
                return ptb_char_symbols(f.read())
        if plain.is_file():
            return ptb_char_symbols(plain.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"PTB char split {split!r} not found in {[str(p) for p in folders]}")


@dataclass(frozen=True)
class PreparedText:
    root: str  # URI of the folder holding train.parquet, valid.parquet, [test.parquet], vocab.json
    vocab: list[str]  # symbols; id = index
    content_hash: str
    ptb_format: bool  # True when '_' means a space (for readable samples)
    manifest: str = VOCAB_FILE

    def summary(self) -> str:
        return f"{len(self.vocab)} symbols, hash {self.content_hash[:12]}"

    def has_split(self, split: str) -> bool:
        """Whether ``split`` was prepared (``test`` is optional for user corpora)."""
        return storage.exists(storage.join(self.root, f"{split}.parquet"))


def data_files(spec: CharLMJob) -> list[DataFile]:
    """The user corpora the job reads (none for the built-in set)."""
    d = spec.data
    return [DataFile(f"data.{s}", uri, True) for s in SPLITS if (uri := getattr(d, s)) is not None]


def source_name(spec: CharLMJob) -> str:
    return spec.data.dataset or str(spec.data.train)


def _corpus_uri(spec: CharLMJob, split: str) -> str:
    uri = getattr(spec.data, split)
    assert isinstance(uri, str)
    return uri


def _read_corpus(spec: CharLMJob, split: str) -> bytes:
    """The raw bytes of ``data.<split>``; JobSpecError naming the field for anything unusable."""
    uri, field, source = _corpus_uri(spec, split), f"data.{split}", f"job {spec.name!r}"
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError:
        raise JobSpecError(source, [f"{field}: expected a UTF-8 text file, found nothing at {uri}"]) from None
    except OSError as e:
        raise JobSpecError(source, [f"{field}: cannot read {uri}: {e}"]) from None
    if not raw:
        raise JobSpecError(source, [f"{field}: expected UTF-8 text, found an empty file at {uri}"])
    return raw


def _decode(spec: CharLMJob, split: str, raw: bytes) -> str:
    """The corpus as text (:mod:`service.io.text`): no BOM, every line ending as LF, so neither a
    BOM nor a CR becomes a symbol."""
    field, uri = f"data.{split}", _corpus_uri(spec, split)
    return text.normalize_newlines(field, uri, text.decode(field, uri, raw))


def _sources(spec: CharLMJob) -> tuple[str, bool, str, dict[str, list[str]] | None, dict[str, bytes]]:
    """(name, ptb_format, content_hash, symbols or None, raw bytes) of the spec's data.

    User corpora are hashed from their bytes, so a cache hit costs only reading them; the
    built-in set is hashed from its symbols (its files are an implementation detail).
    """
    h = hashlib.sha256(f"schema={SCHEMA_VERSION}\n".encode())
    if spec.data.dataset is not None:
        symbols = {split: load_ptb_char(split) for split in SPLITS}
        h.update(f"dataset={spec.data.dataset}\n".encode())
        for split, syms in symbols.items():
            # PTB symbols never contain a space, so joining with spaces is unambiguous.
            body = " ".join(syms).encode()
            h.update(f"{split} {len(body)}\n".encode() + body)
        return spec.data.dataset, True, h.hexdigest(), symbols, {}
    raw = {split: _read_corpus(spec, split) for split in SPLITS if getattr(spec.data, split) is not None}
    h.update(f"format={spec.data.format}\n".encode())
    for split, body in raw.items():
        h.update(f"{split} {len(body)}\n".encode() + body)
    return "custom", spec.data.format == "ptb-char", h.hexdigest(), None, raw


def prepare_text(spec: CharLMJob, cache_root: str) -> PreparedText:
    """The prepared form of ``spec.data`` under ``cache_root`` (local or s3://), built if missing."""
    name, ptb_format, content_hash, symbols, raw = _sources(spec)
    decoded = {split: _decode(spec, split, body) for split, body in raw.items()}  # checked on a cache hit too
    root = datacache.prepared_folder(cache_root, name, content_hash)
    if datacache.is_complete(root, VOCAB_FILE):
        return load_prepared(root)
    if symbols is None:
        split_text = _SPLITTERS[spec.data.format]
        symbols = {split: split_text(body) for split, body in decoded.items()}
    vocab = CharVocab.build(symbols["train"])
    for split, syms in symbols.items():
        unknown = sorted(set(syms) - set(vocab.symbols))
        if unknown:
            raise JobSpecError(
                f"job {spec.name!r}",
                [
                    f"data.{split}: every symbol must occur in data.train (the vocabulary is built from it), "
                    f"found {len(unknown)} that do not, e.g. {unknown[:5]} in {getattr(spec.data, split)}"
                ],
            )
    for split, syms in symbols.items():
        ids = pa.array(vocab.encode(syms), type=pa.int32())
        datacache.write_parquet(storage.join(root, f"{split}.parquet"), pa.table({COLUMN: ids}))
    meta = {
        "schema_version": SCHEMA_VERSION,
        "content_hash": content_hash,
        "ptb_format": ptb_format,
        "name": name,
        "splits": {split: len(syms) for split, syms in symbols.items()},
        "symbols": vocab.symbols,
    }
    datacache.write_manifest(root, VOCAB_FILE, meta)
    return PreparedText(root, vocab.symbols, content_hash, ptb_format)


def check_prepared(spec: CharLMJob, prepared: PreparedText) -> list[str]:
    """What the worker loop needs of the prepared splits: every one of the step's training streams
    (``data.batch_size x train.accumulate_steps``) holds a target, and every evaluated split at least
    one (a symbol and the next)."""
    counts = datacache.read_manifest(prepared.root, VOCAB_FILE, SCHEMA_VERSION, "text")["splits"]
    where = {split: getattr(spec.data, split) or f"{spec.data.dataset} {split} split" for split in counts}
    problems = []
    n, (batch, fields) = counts["train"], spec.step_batch()
    if n - 1 < batch:
        problems.append(
            f"{fields}: {batch} streams need at least {batch + 1} training symbols (one target each), "
            f"{where['train']} has {n}"
        )
    for split in ("valid", "test"):
        if split in counts and counts[split] < 2:
            problems.append(
                f"data.{split}: expected at least 2 symbols (a symbol and the one it predicts), "
                f"{where[split]} has {counts[split]}"
            )
    return problems


def load_prepared(root: str) -> PreparedText:
    """Re-open a prepared folder (e.g. on a Ray worker, from the URI the driver passed)."""
    meta = datacache.read_manifest(root, VOCAB_FILE, SCHEMA_VERSION, "text")
    return PreparedText(root, list(meta["symbols"]), meta["content_hash"], bool(meta["ptb_format"]))


def load_split(prepared: PreparedText, split: str) -> torch.Tensor:
    """All ids of one split as a 1-D int64 tensor."""
    import torch  # deferred: reading a spec's files (preflight) needs no torch

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    try:
        table = datacache.read_parquet(storage.join(prepared.root, f"{split}.parquet"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{prepared.root}: this data set has no {split!r} split") from None
    return torch.from_numpy(table.column(COLUMN).to_numpy().astype("int64"))


__all__ = [
    "PTB_CHAR_DIRS",
    "PreparedText",
    "SCHEMA_VERSION",
    "check_prepared",
    "data_files",
    "load_prepared",
    "load_ptb_char",
    "load_split",
    "prepare_text",
    "source_name",
]
