"""Prepared data sets: symbol ids in Parquet plus ``vocab.json``, cached by content hash.

A prepared folder ``<cache_root>/<name>-<hash16>`` holds ``train.parquet``, ``valid.parquet``,
optionally ``test.parquet`` (one int32 column ``id``) and ``vocab.json``. ``vocab.json`` is written
last and is the commit marker: a folder without it is incomplete and gets rebuilt. Every file is
written atomically, so concurrent preparers of the same data cannot corrupt each other.

The vocabulary is built from the training text. A validation or test symbol missing from it is an
error (not mapped to some unknown id): the model could never predict it, and its bits-per-char
would be meaningless.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from hypermodels import CharVocab, load_ptb_char, ptb_char_symbols, raw_char_symbols

from . import storage
from .spec import JobSpec, JobSpecError

# Bump when the folder layout or the meaning of its files changes: old caches are then ignored.
SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test")
VOCAB_FILE = "vocab.json"
COLUMN = "id"
_SPLITTERS = {"chars": raw_char_symbols, "ptb-char": ptb_char_symbols}


@dataclass(frozen=True)
class PreparedData:
    root: str          # URI of the folder holding train.parquet, valid.parquet, [test.parquet], vocab.json
    vocab: list[str]   # symbols; id = index
    content_hash: str
    ptb_format: bool   # True when '_' means a space (for readable samples)
    manifest: str = VOCAB_FILE

    def summary(self) -> str:
        return f"{len(self.vocab)} symbols, hash {self.content_hash[:12]}"

    def has_split(self, split: str) -> bool:
        """Whether ``split`` was prepared (``test`` is optional for user corpora)."""
        return storage.exists(storage.join(self.root, f"{split}.parquet"))


def _read_corpus(spec: JobSpec, split: str) -> bytes:
    """The raw bytes of ``data.<split>``; JobSpecError naming the field for anything unusable."""
    uri, field, source = getattr(spec.data, split), f"data.{split}", f"job {spec.name!r}"
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError:
        raise JobSpecError(source, [f"{field}: expected a UTF-8 text file, found nothing at {uri}"]) from None
    except OSError as e:
        raise JobSpecError(source, [f"{field}: cannot read {uri}: {e}"]) from None
    if not raw:
        raise JobSpecError(source, [f"{field}: expected UTF-8 text, found an empty file at {uri}"])
    return raw


def _decode(spec: JobSpec, split: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobSpecError(f"job {spec.name!r}", [
            f"data.{split}: expected UTF-8 text, found byte 0x{raw[e.start]:02x} at offset {e.start} "
            f"of {getattr(spec.data, split)} that is not valid UTF-8"]) from None


def _sources(spec: JobSpec) -> tuple[str, bool, str, dict[str, list[str]] | None, dict[str, bytes]]:
    """(name, ptb_format, content_hash, symbols or None, raw bytes) of the spec's data.

    User corpora are hashed from their bytes, so a cache hit costs only reading them; the
    built-in set is hashed from its symbols (its files are an implementation detail of hypermodels).
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


def _parquet_bytes(ids: list[int]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({COLUMN: pa.array(ids, type=pa.int32())}), sink, compression="zstd")
    return sink.getvalue()


def prepare_data(spec: JobSpec, cache_root: str) -> PreparedData:
    """The prepared form of ``spec.data`` under ``cache_root`` (local or s3://), built if missing."""
    name, ptb_format, content_hash, symbols, raw = _sources(spec)
    root = storage.join(cache_root, f"{name}-{content_hash[:16]}")
    if storage.exists(storage.join(root, VOCAB_FILE)):
        return load_prepared(root)
    if symbols is None:
        split_text = _SPLITTERS[spec.data.format]
        symbols = {split: split_text(_decode(spec, split, body)) for split, body in raw.items()}
    vocab = CharVocab.build(symbols["train"])
    for split, syms in symbols.items():
        unknown = sorted(set(syms) - set(vocab.symbols))
        if unknown:
            raise JobSpecError(f"job {spec.name!r}", [
                f"data.{split}: every symbol must occur in data.train (the vocabulary is built from it), "
                f"found {len(unknown)} that do not, e.g. {unknown[:5]} in {getattr(spec.data, split)}"])
    for split, syms in symbols.items():
        storage.write_bytes_atomic(storage.join(root, f"{split}.parquet"), _parquet_bytes(vocab.encode(syms)))
    meta = {"schema_version": SCHEMA_VERSION, "content_hash": content_hash, "ptb_format": ptb_format,
            "name": name, "splits": {split: len(syms) for split, syms in symbols.items()}, "symbols": vocab.symbols}
    storage.write_bytes_atomic(storage.join(root, VOCAB_FILE), json.dumps(meta, indent=1).encode())
    return PreparedData(root, vocab.symbols, content_hash, ptb_format)


def data_error(field: str, message: str) -> JobSpecError:
    """A problem with a job's data, naming the spec field (and, in ``message``, the file)."""
    return JobSpecError("data", [f"{field}: {message}"])


def read_data_file(field: str, uri: str) -> bytes:
    """The bytes of a data file named by spec ``field``, gunzipped when gzip'd (by content, not name)."""
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError:
        raise data_error(field, f"expected a file, found nothing at {uri}") from None
    except OSError as e:
        raise data_error(field, f"cannot read {uri}: {e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise data_error(field, f"{uri} looks gzip'd but does not decompress: {e}") from None
    return raw


def read_manifest(root: str, name: str, version: int, what: str) -> dict:
    """The JSON manifest ``name`` of a prepared folder (any task), checked for its schema version."""
    try:
        meta = json.loads(storage.read_bytes(storage.join(root, name)))
    except FileNotFoundError:
        raise FileNotFoundError(f"{root}: not a prepared {what} folder (no {name})") from None
    if meta.get("schema_version") != version:
        raise ValueError(f"{root}: prepared with schema version {meta.get('schema_version')}, "
                         f"this code reads version {version}; prepare the data again")
    return meta


def load_prepared(root: str) -> PreparedData:
    """Re-open a prepared folder (e.g. on a Ray worker, from the URI the driver passed)."""
    meta = read_manifest(root, VOCAB_FILE, SCHEMA_VERSION, "text")
    return PreparedData(root, list(meta["symbols"]), meta["content_hash"], bool(meta["ptb_format"]))


def load_split(prepared: PreparedData, split: str) -> torch.Tensor:
    """All ids of one split as a 1-D int64 tensor."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    uri = storage.join(prepared.root, f"{split}.parquet")
    try:
        table = pq.read_table(pa.BufferReader(storage.read_bytes(uri)))
    except FileNotFoundError:
        raise FileNotFoundError(f"{prepared.root}: this data set has no {split!r} split") from None
    return torch.from_numpy(table.column(COLUMN).to_numpy().astype("int64"))


__all__ = ["PreparedData", "SCHEMA_VERSION", "load_prepared", "load_split", "prepare_data"]
