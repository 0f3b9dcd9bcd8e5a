"""Prepared parallel corpora for ``task: translation``: sentencepiece subwords, Parquet splits,
``pairs.json`` (cached by content hash, :mod:`service.io.datacache`).

Sources: the vendored Multi30k (``multi30k-en-fr``, ``multi30k-en-de``) or user corpora, each
split as two aligned text files, one TSV file or one Parquet file with two string columns, from
paths or s3:// URIs. Every sentence pair is checked: the two sides must have the same number of
lines, no line may be empty on either side, and every byte must be UTF-8; a problem is a
JobSpecError naming the field, the file and the line.

Subword vocabularies are trained with sentencepiece (BPE or unigram; one shared model or one per
language) on the training split only, with fixed ids: 0 pad, 1 unk, 2 bos, 3 eos. A prepared
folder ``<cache_root>/<name>-<hash16>`` holds the model(s) (``spm.model`` or ``spm_src.model`` and
``spm_tgt.model``), ``train.parquet``, ``valid.parquet`` and ``test.<name>.parquet`` (columns
``src``/``tgt``: subword ids, ``src_text``/``tgt_text``: the raw sentences, the BLEU references),
and ``pairs.json``, written last as the completion marker. The content hash covers the sentences
and the subword settings.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ...io import datacache, storage
from ...io import text as textfile
from ...io.datacache import data_error, read_data_file
from ...paths import VENDORED_DATA
from ..base import DataFile
from .spec import ParallelSource, TranslationJob

SCHEMA_VERSION = 1
MANIFEST = "pairs.json"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MULTI30K_DIR = VENDORED_DATA / "multi30k"
MULTI30K_TESTS = ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")


@dataclass(frozen=True)
class PreparedCorpus:
    """A prepared parallel corpus: its folder, languages, subword vocabularies and split sizes."""

    root: str
    content_hash: str
    src_lang: str
    tgt_lang: str
    shared_vocab: bool
    vocab_sizes: tuple[int, int]  # (source, target) pieces
    counts: dict[str, int]
    tests: list[str] = field(default_factory=list)
    manifest: str = MANIFEST

    def summary(self) -> str:
        vocab = (
            f"shared vocabulary of {self.vocab_sizes[0]:,}"
            if self.shared_vocab
            else f"vocabularies {self.vocab_sizes[0]:,} / {self.vocab_sizes[1]:,}"
        )
        return (
            f"{self.src_lang}->{self.tgt_lang}, {self.counts['train']:,} training pairs, {vocab} pieces, "
            f"tests {', '.join(self.tests) or 'none'}, hash {self.content_hash[:12]}"
        )

    def model_files(self) -> tuple[str, str]:
        """URIs of the (source, target) sentencepiece models (the same file when shared)."""
        if self.shared_vocab:
            return (storage.join(self.root, "spm.model"),) * 2
        return storage.join(self.root, "spm_src.model"), storage.join(self.root, "spm_tgt.model")


def data_files(spec: TranslationJob) -> list[DataFile]:
    """Every file of the user corpus: each split's src/tgt, tsv or parquet (none for built-ins)."""
    d = spec.data
    files = []
    sources = [("train", d.train), ("valid", d.valid)] + [(f"test.{name}", src) for name, src in d.test.items()]
    for where, src in sources:
        if src is None:
            continue
        for key in ("src", "tgt", "tsv", "parquet"):
            if (uri := getattr(src, key)) is not None:
                files.append(DataFile(f"data.{where}.{key}", uri, key != "parquet"))
    return files


def source_name(spec: TranslationJob) -> str:
    if spec.data.dataset is not None:
        return spec.data.dataset
    t = spec.data.train
    assert t is not None
    return t.tsv or t.parquet or f"{t.src} + {t.tgt}"


def read_lines(field_name: str, uri: str) -> list[str]:
    """The lines of a UTF-8 text file (:mod:`service.io.text`: BOM, LF/CRLF/CR; file and line named)."""
    raw = read_data_file(field_name, uri)
    return textfile.split_lines(field_name, uri, textfile.decode(field_name, uri, raw))


def read_parallel(where: str, src: ParallelSource) -> tuple[list[str], list[str]]:
    """One split of a user corpus as aligned (source, target) sentences, checked pair by pair."""
    if src.tsv is not None:
        left, right = [], []
        for i, line in enumerate(read_lines(f"{where}.tsv", src.tsv), 1):
            parts = line.split("\t")
            if len(parts) != 2:
                raise data_error(
                    f"{where}.tsv", f"{src.tsv} line {i}: expected source TAB target, found {len(parts) - 1} tabs"
                )
            left.append(parts[0])
            right.append(parts[1])
        names = (f"{where}.tsv", src.tsv), (f"{where}.tsv", src.tsv)
    elif src.parquet is not None:
        try:
            table = pq.read_table(pa.BufferReader(read_data_file(f"{where}.parquet", src.parquet)))
        except pa.ArrowInvalid as e:
            raise data_error(f"{where}.parquet", f"{src.parquet}: not a Parquet file: {e}") from None
        cols = []
        for key, col in (("src_column", src.src_column), ("tgt_column", src.tgt_column)):
            if col not in table.column_names:
                raise data_error(
                    f"{where}.{key}", f"{src.parquet} has no column {col!r} (columns: {', '.join(table.column_names)})"
                )
            if not pa.types.is_string(table.schema.field(col).type) and not pa.types.is_large_string(
                table.schema.field(col).type
            ):
                raise data_error(
                    f"{where}.{key}",
                    f"{src.parquet} column {col!r}: expected strings, found {table.schema.field(col).type}",
                )
            cols.append([v if v is not None else "" for v in table.column(col).to_pylist()])
        left, right = cols
        names = (
            (f"{where}.parquet", f"{src.parquet} column {src.src_column!r}"),
            (f"{where}.parquet", f"{src.parquet} column {src.tgt_column!r}"),
        )
    else:
        assert src.src is not None and src.tgt is not None
        left, right = read_lines(f"{where}.src", src.src), read_lines(f"{where}.tgt", src.tgt)
        if len(left) != len(right):
            raise data_error(
                f"{where}",
                f"misaligned corpus: {src.src} (src) has {len(left):,} lines, {src.tgt} (tgt) "
                f"has {len(right):,}; line i of one must translate line i of the other",
            )
        names = (f"{where}.src", src.src), (f"{where}.tgt", src.tgt)
    for i, (a, b) in enumerate(zip(left, right, strict=True), 1):
        for (fname, what), text, other in ((names[0], a, b), (names[1], b, a)):
            if not text.strip():
                side = "both sides" if not other.strip() else "one side"
                raise data_error(fname, f"{what} line {i}: empty sentence ({side}); every line must hold a sentence")
    if not left:
        raise data_error(where, "expected sentence pairs, found none")
    return left, right


def _multi30k(name: str) -> tuple[str, str, dict[str, tuple[list[str], list[str]]]]:
    src_lang, tgt_lang = name.removeprefix("multi30k-").split("-")

    def split(stem: str) -> tuple[list[str], list[str]]:
        return (
            read_lines("data.dataset", str(MULTI30K_DIR / f"{stem}.{src_lang}.gz")),
            read_lines("data.dataset", str(MULTI30K_DIR / f"{stem}.{tgt_lang}.gz")),
        )

    splits = {"train": split("train"), "valid": split("val")}
    splits.update({f"test.{t}": split(t) for t in MULTI30K_TESTS})
    return src_lang, tgt_lang, splits


def load_sentences(spec: TranslationJob) -> tuple[str, str, str, dict[str, tuple[list[str], list[str]]]]:
    """(name, source language, target language, {split: (sources, targets)}); test splits are
    ``test.<name>``."""
    d = spec.data
    if d.dataset is not None:
        src_lang, tgt_lang, splits = _multi30k(d.dataset)
        return d.dataset, src_lang, tgt_lang, splits
    assert d.train is not None and d.valid is not None
    splits = {"train": read_parallel("data.train", d.train), "valid": read_parallel("data.valid", d.valid)}
    splits.update({f"test.{n}": read_parallel(f"data.test.{n}", s) for n, s in d.test.items()})
    return "custom", "src", "tgt", splits


def train_sentencepiece(sentences: list[str], spec: TranslationJob, field_name: str) -> bytes:
    """A sentencepiece model (serialized) trained on ``sentences`` with the job's subword settings."""
    import sentencepiece as spm  # deferred: only translation jobs need it

    sw = spec.data.subwords
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=out,
            vocab_size=sw.vocab_size,
            model_type=sw.model_type,
            character_coverage=1.0,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=1,
            minloglevel=2,
            shuffle_input_sentence=False,
        )
    except RuntimeError as e:
        message = str(e).strip().splitlines()[-1]
        raise data_error(
            "data.subwords.vocab_size",
            f"sentencepiece cannot build {sw.vocab_size:,} {sw.model_type} pieces from {field_name}: {message}",
        ) from None
    return out.getvalue()


def _table(src_ids: list[list[int]], tgt_ids: list[list[int]], src_text: list[str], tgt_text: list[str]) -> pa.Table:
    return pa.table(
        {
            "src": pa.array(src_ids, type=pa.list_(pa.int32())),
            "tgt": pa.array(tgt_ids, type=pa.list_(pa.int32())),
            "src_text": pa.array(src_text, type=pa.string()),
            "tgt_text": pa.array(tgt_text, type=pa.string()),
        }
    )


def prepare_corpus(spec: TranslationJob, cache_root: str) -> PreparedCorpus:
    """The prepared form of ``spec.data`` under ``cache_root`` (local or s3://), built if missing."""
    import sentencepiece as spm  # deferred: only translation jobs need it

    name, src_lang, tgt_lang, splits = load_sentences(spec)
    sw = spec.data.subwords
    h = hashlib.sha256(f"schema={SCHEMA_VERSION}\n{sw.model_dump_json()}\n".encode())
    for split, (a, b) in splits.items():
        body = "\n".join(a).encode() + b"\x00" + "\n".join(b).encode()
        h.update(f"{split} {len(body)}\n".encode() + body)
    content_hash = h.hexdigest()
    root = datacache.prepared_folder(cache_root, name, content_hash)
    if datacache.is_complete(root, MANIFEST):
        return load_prepared(root)

    train_src, train_tgt = splits["train"]
    if sw.shared:
        model = train_sentencepiece(train_src + train_tgt, spec, "data.train")
        storage.write_bytes_atomic(storage.join(root, "spm.model"), model)
        src_sp = tgt_sp = spm.SentencePieceProcessor(model_proto=model)
    else:
        models = (
            train_sentencepiece(train_src, spec, "data.train (source)"),
            train_sentencepiece(train_tgt, spec, "data.train (target)"),
        )
        storage.write_bytes_atomic(storage.join(root, "spm_src.model"), models[0])
        storage.write_bytes_atomic(storage.join(root, "spm_tgt.model"), models[1])
        src_sp, tgt_sp = (spm.SentencePieceProcessor(model_proto=m) for m in models)
    counts = {}
    for split, (a, b) in splits.items():
        datacache.write_parquet(
            storage.join(root, f"{split}.parquet"), _table(src_sp.encode(a), tgt_sp.encode(b), a, b)
        )
        counts[split] = len(a)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "content_hash": content_hash,
        "name": name,
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
        "shared_vocab": sw.shared,
        "subwords": sw.model_dump(mode="json"),
        "vocab_sizes": [src_sp.get_piece_size(), tgt_sp.get_piece_size()],
        "counts": counts,
        "tests": [s.removeprefix("test.") for s in splits if s.startswith("test.")],
        "ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
    }
    datacache.write_manifest(root, MANIFEST, meta)
    return load_prepared(root)


def load_prepared(root: str) -> PreparedCorpus:
    meta = datacache.read_manifest(root, MANIFEST, SCHEMA_VERSION, "parallel corpus")
    return PreparedCorpus(
        root,
        meta["content_hash"],
        meta["src_lang"],
        meta["tgt_lang"],
        bool(meta["shared_vocab"]),
        tuple(meta["vocab_sizes"]),
        dict(meta["counts"]),
        list(meta["tests"]),
    )


def load_processors(prepared: PreparedCorpus) -> tuple[Any, Any]:
    """The (source, target) ``sentencepiece.SentencePieceProcessor``s."""
    import sentencepiece as spm  # deferred: only translation jobs need it

    src_uri, tgt_uri = prepared.model_files()
    src = spm.SentencePieceProcessor(model_proto=storage.read_bytes(src_uri))
    tgt = src if tgt_uri == src_uri else spm.SentencePieceProcessor(model_proto=storage.read_bytes(tgt_uri))
    return src, tgt


@dataclass
class Split:
    src: list[list[int]]
    tgt: list[list[int]]
    src_text: list[str]
    tgt_text: list[str]


def load_split(prepared: PreparedCorpus, split: str) -> Split:
    """``train``, ``valid`` or ``test.<name>``."""
    uri = storage.join(prepared.root, f"{split}.parquet")
    try:
        table = datacache.read_parquet(uri)
    except FileNotFoundError:
        raise FileNotFoundError(f"{prepared.root}: this corpus has no {split!r} split") from None
    return Split(
        table.column("src").to_pylist(),
        table.column("tgt").to_pylist(),
        table.column("src_text").to_pylist(),
        table.column("tgt_text").to_pylist(),
    )


def fits(src: list[int], tgt: list[int], max_len: int) -> bool:
    """Whether a training pair is used: a non-empty source of at most ``data.max_len`` subwords and
    a target that fits with its end-of-sentence symbol."""
    return 0 < len(src) <= max_len and len(tgt) < max_len


def check_prepared(spec: TranslationJob, prepared: PreparedCorpus) -> list[str]:
    """What the worker loop needs of the prepared corpus: a full step's batch of training pairs
    (``data.batch_size x train.accumulate_steps``) that fit ``data.max_len``, and validation pairs
    to evaluate."""
    train = load_split(prepared, "train")
    total, max_len, (batch, fields) = len(train.src), spec.data.max_len, spec.step_batch()
    usable = sum(fits(s, t, max_len) for s, t in zip(train.src, train.tgt, strict=True))
    problems = []
    if usable == 0:
        problems.append(
            f"data.max_len: 0 of {total:,} training pairs fit data.max_len = {max_len} "
            "(subwords per side, the target with its end-of-sentence symbol)"
        )
    elif usable < batch:
        problems.append(
            f"{fields}: {batch} pairs per batch, but only {usable:,} of {total:,} training pairs "
            f"fit data.max_len = {max_len}"
        )
    if prepared.counts.get("valid", 0) == 0:
        problems.append("data.valid: expected sentence pairs to evaluate, found none")
    return problems


__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "PreparedCorpus",
    "Split",
    "UNK_ID",
    "check_prepared",
    "data_files",
    "fits",
    "load_prepared",
    "load_processors",
    "load_sentences",
    "load_split",
    "prepare_corpus",
    "read_lines",
    "read_parallel",
    "source_name",
    "train_sentencepiece",
]
