"""Prepared text for ``task: char_lm``: symbol ids in Parquet shards plus ``vocab.json``, cached by
content hash (:mod:`service.io.datacache`, :mod:`service.io.shards`).

A prepared folder ``<cache_root>/<name>-<hash16>`` holds, per split (``train``, ``valid``, optional
``test``), the shards ``<split>-00000.parquet`` ... (one int32 column ``id``, row groups of
:data:`~service.io.shards.ROWS_PER_GROUP` ids) and ``vocab.json``, the manifest, written last: it
lists the shards, the symbols and each split's length. A folder without it is an unfinished
preparation: the next one empties it and starts again.

**Preparation.** Each source is cut into pieces of about :data:`PIECE_BYTES` bytes, after a newline
where there is one within 64 KiB (else at a character boundary; anywhere for bytes), so no piece
splits a character or a line ending. Pass 1 finds each piece's distinct symbols, pass 2 encodes each
piece into one shard; each pass runs on Ray Data (one task per piece) or in this process, per
``data.preparation`` (:func:`service.io.shards.use_ray`), and both ways write the same bytes. Memory:
a few pieces, whatever the corpus's size.

**Vocabulary.** Built from the training text (user corpora, PTB); a validation or test symbol
missing from it is an error, not mapped to an unknown id: the model could never predict it, and
its bits-per-char would be meaningless. enwik8's symbols are bytes and its vocabulary is every
distinct byte value of the whole file (205 in the real one, the paper's count), so its validation
and test splits never hold an unseen one; a byte symbol is stored as the character of that code
point (``chr(b)``) and samples are decoded as UTF-8.

The built-in ``ptb-char`` is the vendored character-level Penn Treebank (``data/ptb-char``, see its
PROVENANCE.md); the project's shared data folder is the fallback. The built-in ``enwik8`` is the
file the user supplies in ``data.path`` (``enwik8`` or the standard ``enwik8.zip``), split by byte
offsets at 90% and 95% (90,000,000 / 5,000,000 / 5,000,000 bytes of the real file).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from hypermodels import CharVocab, ptb_char_symbols

if TYPE_CHECKING:
    import torch

from ...io import datacache, shards, storage, text
from ...paths import PROJECT_ROOT, VENDORED_DATA
from ...spec.errors import JobSpecError
from ..base import DataFile
from .spec import CharLMJob

# Bump when the folder layout or the meaning of its files changes: old caches are then ignored.
SCHEMA_VERSION = 2
SPLITS = ("train", "valid", "test")
VOCAB_FILE = "vocab.json"
COLUMN = "id"
PIECE_BYTES = 8 << 20  # source bytes per shard
EXTRACTED = "enwik8.extracted"  # a zip's member, in the unfinished folder while it is prepared
LOOKAHEAD = 1 << 16  # how far past a piece's target end a newline is looked for
ENWIK8_CUTS = (90, 95)  # percent of the file where enwik8's train and valid splits end
ENWIK8_BYTES = 10**8
PTB_CHAR_DIRS = (VENDORED_DATA / "ptb-char", PROJECT_ROOT.parent / "shared" / "data" / "ptb" / "char")


def _ptb_char_text(split: str, root: str | Path | None = None) -> tuple[bytes, str]:
    """The bytes of one vendored PTB-char split and the file they came from."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folders = [Path(root)] if root else list(PTB_CHAR_DIRS)
    for folder in folders:
        gz, plain = folder / f"ptb.char.{split}.txt.gz", folder / f"ptb.char.{split}.txt"
        if gz.is_file():
            with gzip.open(gz, "rb") as f:
                return f.read(), str(gz)
        if plain.is_file():
            return plain.read_bytes(), str(plain)
    raise FileNotFoundError(f"PTB char split {split!r} not found in {[str(p) for p in folders]}")


def load_ptb_char(split: str, root: str | Path | None = None) -> list[str]:
    """The symbols of one PTB-char split (``train``, ``valid`` or ``test``): PTB's space-separated
    symbols, each newline a symbol too (50 in all)."""
    return ptb_char_symbols(_ptb_char_text(split, root)[0].decode("utf-8"))


@dataclass(frozen=True)
class PreparedText:
    root: str  # URI of the folder holding the shards and vocab.json
    vocab: list[str]  # symbols; id = index
    content_hash: str
    ptb_format: bool  # True when '_' means a space (for readable samples)
    manifest: str = VOCAB_FILE
    kind: str = "chars"  # how the source was cut into symbols: chars, ptb-char or bytes

    def summary(self) -> str:
        return f"{len(self.vocab)} symbols, hash {self.content_hash[:12]}"

    def has_split(self, split: str) -> bool:
        """Whether ``split`` was prepared (``test`` is optional for user corpora)."""
        return split in self._meta()["shards"]

    def _meta(self) -> dict[str, Any]:
        return datacache.read_manifest(self.root, VOCAB_FILE, SCHEMA_VERSION, "text")

    def to_text(self, ids: list[int]) -> str:
        """Readable text of ``ids``: bytes decoded as UTF-8, PTB's ``_`` as a space."""
        if self.kind == "bytes":
            return bytes(ord(self.vocab[i]) for i in ids).decode("utf-8", errors="replace")
        return CharVocab(self.vocab).to_text(ids, self.ptb_format)


def data_files(spec: CharLMJob) -> list[DataFile]:
    """The user files the job reads (the enwik8 file too; none for PTB)."""
    d = spec.data
    if d.dataset == "enwik8":
        assert d.path is not None
        return [DataFile("data.path", d.path, False)]
    text_files = d.format != "bytes"
    return [DataFile(f"data.{s}", uri, text_files) for s in SPLITS if (uri := getattr(d, s)) is not None]


def source_name(spec: CharLMJob) -> str:
    if spec.data.dataset == "enwik8":
        return f"enwik8 from {spec.data.path}"
    return spec.data.dataset or str(spec.data.train)


# ---- sources and pieces ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """One unit of preparation work: bytes ``[start, stop)`` of a source, becoming one shard."""

    split: str
    index: int  # the shard's index in its split
    field: str  # the spec field naming the source, for messages
    uri: str  # the source (for messages; read unless ``data`` is given)
    start: int
    stop: int
    kind: str  # chars, ptb-char or bytes
    file_start: bool  # the piece starts the file (a byte-order mark may be there)
    file_end: bool  # the piece ends the file
    data: bytes | None = None  # the whole source, held in memory (the built-in PTB)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data[self.start : self.stop]
        return shards.read_range(self.uri, self.start, self.stop - self.start)


@dataclass(frozen=True)
class Scan:
    """What pass 1 learns of a piece."""

    symbols: list[str]  # distinct, sorted
    count: int
    terminators: dict[str, int]  # line endings by name (text kinds)
    notes: list[str]
    first_ending: int  # byte offset in the file of the piece's first line ending (-1: none)


def _read_window(uri: str, data: bytes | None, start: int, stop: int) -> bytes:
    return data[start:stop] if data is not None else shards.read_range(uri, start, stop - start)


def _cuts(uri: str, data: bytes | None, start: int, stop: int, kind: str, piece_bytes: int) -> list[int]:
    """Where the pieces of bytes ``[start, stop)`` begin and end: about ``piece_bytes`` each, ending
    after a newline when one is within :data:`LOOKAHEAD` bytes of the target, else on a character
    boundary (a space first for PTB's format); bytes are cut anywhere."""
    cuts, pos = [start], start + piece_bytes
    while pos < stop:
        cut = pos
        if kind != "bytes":
            window = _read_window(uri, data, pos, min(stop, pos + LOOKAHEAD))
            nl = window.find(b"\n")
            sp = window.find(b" ") if kind == "ptb-char" else -1
            if nl >= 0:
                cut = pos + nl + 1
            elif sp >= 0:
                cut = pos + sp + 1
            else:  # no line end near: the next character boundary (never inside a UTF-8 sequence)
                i = 0
                while i < len(window) and window[i] & 0xC0 == 0x80:
                    i += 1
                cut = pos + i
        if cut >= stop:
            break
        cuts.append(cut)
        pos = cut + piece_bytes
    cuts.append(stop)
    return cuts


def _decode(piece: Piece, raw: bytes) -> tuple[str, list[str]]:
    """A text piece as a str (BOM rules of :mod:`service.io.text` at the file's start); an invalid
    byte is named by its offset in the file (and its line, in a file's first piece)."""
    if piece.file_start:
        with text.collect_notes() as notes:
            return text.decode(piece.field, piece.uri, raw), list(notes)
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError as e:
        at = piece.start + e.start
        ends_inside = piece.file_end and e.end == len(raw)
        truncated = " (the file ends inside a character: is it truncated?)" if ends_inside else ""
        raise datacache.data_error(
            piece.field,
            f"{piece.uri}: expected UTF-8 text, found byte 0x{raw[e.start]:02x} at offset {at} "
            f"that is not valid UTF-8{truncated}",
        ) from None


def _normalized(body: str, terminators: dict[str, int]) -> str:
    """Every line ending as LF (the piece uses one kind; the file's consistency is checked apart)."""
    if terminators["CRLF"]:
        body = body.replace("\r\n", "\n")
    if terminators["CR"]:
        body = body.replace("\r", "\n")
    return body


def _byte_offset(piece: Piece, raw: bytes, body: str, index: int) -> int:
    """The offset in the file of character ``index`` of a piece's decoded ``body``."""
    bom = len(text.UTF8_BOM) if piece.file_start and raw.startswith(text.UTF8_BOM) else 0
    return piece.start + bom + len(body[:index].encode("utf-8"))


def _symbols(piece: Piece) -> tuple[np.ndarray | list[str], dict[str, int], list[str], int]:
    """A piece's symbols (byte values or code points as an array, PTB's symbols as a list), its
    line endings by kind, the readers' notes, and where its first line ending is (-1: none)."""
    raw = piece.read()
    if piece.kind == "bytes":
        return np.frombuffer(raw, dtype=np.uint8), {}, [], -1
    body, notes = _decode(piece, raw)
    terminators = text.terminator_counts(body)
    if sum(1 for n in terminators.values() if n) > 1:
        if piece.file_start:
            text.split_lines(piece.field, piece.uri, body)  # raises, naming the terminators and the line
        counts = ", ".join(f"{n:,} {k}" for k, n in terminators.items() if n)
        at = _byte_offset(piece, raw, body, min(i for i in (body.find("\r"), body.find("\n")) if i >= 0))
        raise datacache.data_error(
            piece.field,
            f"{piece.uri}: mixed line terminators ({counts} in bytes {piece.start:,} to {piece.stop:,}, the first "
            f"line ending at byte offset {at:,}): expected every line to end the same way (LF, CRLF or CR); "
            "convert the file, e.g. with dos2unix",
        )
    ends = [i for i in (body.find("\r"), body.find("\n")) if i >= 0]
    first_ending = _byte_offset(piece, raw, body, min(ends)) if ends else -1
    body = _normalized(body, terminators)
    if piece.kind == "ptb-char":
        return ptb_char_symbols(body), terminators, notes, first_ending
    return np.frombuffer(body.encode("utf-32-le"), dtype="<u4"), terminators, notes, first_ending


def scan_piece(piece: Piece) -> Scan:
    """Pass 1: a piece's distinct symbols (runs in a Ray task or in this process)."""
    syms, terminators, notes, first_ending = _symbols(piece)
    if isinstance(syms, np.ndarray):
        return Scan([chr(int(c)) for c in np.unique(syms)], int(syms.size), terminators, notes, first_ending)
    return Scan(sorted(set(syms)), len(syms), terminators, notes, first_ending)


def write_piece(job: tuple[Piece, list[str], str, int]) -> shards.ShardInfo:
    """Pass 2: encode a piece with the vocabulary and write it as its split's shard ``piece.index``."""
    piece, vocab, root, rows_per_group = job
    syms = _symbols(piece)[0]
    if isinstance(syms, np.ndarray):
        points = np.array([ord(s) for s in vocab], dtype=np.int64)  # sorted: the vocabulary's order
        ids = np.searchsorted(points, syms).clip(0, len(points) - 1)
        assert np.array_equal(points[ids], syms), "pass 1 saw every symbol"
        ids = ids.astype(np.int32)
    else:
        ids = np.asarray(CharVocab(vocab).encode(syms), dtype=np.int32)
    table = pa.table({COLUMN: pa.array(ids, type=pa.int32())})
    return shards.write_shard(root, shards.shard_name(piece.split, piece.index), table, rows_per_group)


# ---- the sources of a job -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    split: str
    field: str
    uri: str
    start: int
    stop: int
    kind: str
    data: bytes | None = None


def _user_sources(spec: CharLMJob, h: Any) -> list[_Source]:
    out = []
    for split in SPLITS:
        uri = getattr(spec.data, split)
        if uri is None:
            continue
        field = f"data.{split}"
        what = "a file" if spec.data.format == "bytes" else "a UTF-8 text file"
        size = shards.hash_uri(h, uri, field, what)
        h.update(f"\n{split} {size}\n".encode())
        if size == 0:
            what = "bytes" if spec.data.format == "bytes" else "UTF-8 text"
            raise datacache.data_error(field, f"expected {what}, found an empty file at {uri}")
        out.append(_Source(split, field, uri, 0, size, spec.data.format))
    return out


def _enwik8_file(spec: CharLMJob, h: Any) -> tuple[str | None, int]:
    """(the zip member holding enwik8, or None for a plain file; the enwik8 bytes' size), the file
    as given hashed into ``h``."""
    uri = spec.data.path
    assert uri is not None
    shards.hash_uri(h, uri, "data.path")
    if shards.read_range(uri, 0, 4) != b"PK\x03\x04":
        return None, shards.file_size(uri)
    return _zip_member(uri)


def _extract(uri: str, member: str, target: str) -> None:
    """Stream the zip's ``member`` into ``target`` (inside the unfinished prepared folder)."""
    fs_in, path_in = storage.filesystem_for(uri)
    fs_out, path_out = storage.filesystem_for(target)
    if not storage.is_s3(target):
        Path(path_out).parent.mkdir(parents=True, exist_ok=True)
    try:
        with fs_in.open_input_file(path_in) as raw, zipfile.ZipFile(raw) as zf, zf.open(member) as src:
            with fs_out.open_output_stream(path_out, compression=None) as dst:
                while block := src.read(shards.READ_BLOCK):
                    dst.write(block)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise datacache.data_error("data.path", f"{uri}: member {member!r} does not decompress: {e}") from None


def _zip_member(uri: str) -> tuple[str, int]:
    """The zip's enwik8 member (named ``enwik8``, or the only one) and its size."""
    fs, path = storage.filesystem_for(uri)
    try:
        with fs.open_input_file(path) as raw, zipfile.ZipFile(raw) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise datacache.data_error(
            "data.path", f"{uri} starts like a zip file but is not a readable one (truncated?): {e}"
        ) from None
    named = [i for i in infos if i.filename.rsplit("/", 1)[-1] == "enwik8"] or (infos if len(infos) == 1 else [])
    if not named:
        raise datacache.data_error(
            "data.path", f"expected a zip holding one file, enwik8; {uri} holds {[i.filename for i in infos][:10]}"
        )
    return named[0].filename, named[0].file_size


def _pieces(sources: list[_Source], piece_bytes: int) -> list[Piece]:
    out, index = [], dict.fromkeys(SPLITS, 0)
    for s in sources:
        cuts = _cuts(s.uri, s.data, s.start, s.stop, s.kind, piece_bytes)
        for a, b in zip(cuts, cuts[1:], strict=False):
            out.append(Piece(s.split, index[s.split], s.field, s.uri, a, b, s.kind, a == 0, b == s.stop, s.data))
            index[s.split] += 1
    return out


# ---- preparation ----------------------------------------------------------------------------------


def prepare_text(
    spec: CharLMJob,
    cache_root: str,
    *,
    piece_bytes: int = PIECE_BYTES,
    rows_per_group: int = shards.ROWS_PER_GROUP,
    say: Callable[[str], None] = print,
) -> PreparedText:
    """The prepared form of ``spec.data`` under ``cache_root`` (local or s3://), built if missing."""
    d = spec.data
    # The hash covers what the ids are, not how they are cut into shards (piece_bytes, rows_per_group).
    h = hashlib.sha256(f"schema={SCHEMA_VERSION}\n".encode())
    materialise: Callable[[], None] | None = None
    if d.dataset == "ptb-char":
        name, kind = "ptb-char", "ptb-char"
        h.update(f"dataset={d.dataset}\n".encode())
        sources = []
        for split in SPLITS:
            body, where = _ptb_char_text(split)
            h.update(f"{split} {len(body)}\n".encode() + body)
            sources.append(_Source(split, f"ptb-char {split} split", where, 0, len(body), kind, body))
        content_hash = h.hexdigest()
        root = datacache.prepared_folder(cache_root, name, content_hash)
    elif d.dataset == "enwik8":
        name, kind = "enwik8", "bytes"
        h.update(b"dataset=enwik8\n")
        member, size = _enwik8_file(spec, h)
        content_hash = h.hexdigest()
        root = datacache.prepared_folder(cache_root, name, content_hash)
        uri = d.path
        assert uri is not None
        if member is not None:  # a zip: its member is extracted into the (unfinished) prepared folder first
            zip_uri, uri = uri, storage.join(root, EXTRACTED)
            materialise = functools.partial(_extract, zip_uri, member, uri)
        a, b = size * ENWIK8_CUTS[0] // 100, size * ENWIK8_CUTS[1] // 100
        if size != ENWIK8_BYTES:  # a stand-in, another file, or a truncated download: said, not refused
            text.note(
                f"data.path: {d.path} holds {size:,} bytes, not the real enwik8's {ENWIK8_BYTES:,}; "
                f"split at bytes {a:,} and {b:,} (90/5/5)"
            )
        sources = [
            _Source(split, "data.path", uri, lo, hi, kind)
            for split, lo, hi in (("train", 0, a), ("valid", a, b), ("test", b, size))
        ]
    else:
        name, kind = "custom", d.format
        h.update(f"format={d.format}\n".encode())
        sources = _user_sources(spec, h)
        content_hash = h.hexdigest()
        root = datacache.prepared_folder(cache_root, name, content_hash)

    if datacache.is_complete(root, VOCAB_FILE):
        prepared = load_prepared(root)
        for line in prepared._meta().get("notes", []):
            text.note(line)
        return prepared

    shards.start_fresh(root, VOCAB_FILE)  # what a preparer that died half-way left
    if materialise is not None:
        materialise()
    total = sum(s.stop - s.start for s in sources)
    use_ray = shards.use_ray(d.preparation, lambda: total)
    pieces = _pieces(sources, piece_bytes)
    if len(pieces) > 1:
        where = "on Ray Data" if use_ray else "in this process"
        say(f"[data]  {total:,} bytes in {len(pieces)} pieces, prepared {where}")
    scans = shards.parallel_map(scan_piece, pieces, use_ray=use_ray, progress=_progress(say, "scanned"))

    notes = sorted({n for s in scans for n in s.notes})
    _check_terminators(pieces, scans)
    splits = [s for s in SPLITS if any(p.split == s for p in pieces)]
    by_split = {s: [sc for p, sc in zip(pieces, scans, strict=True) if p.split == s] for s in splits}
    if d.dataset == "enwik8":
        vocab = sorted({sym for sc in scans for sym in sc.symbols})
    else:
        vocab = sorted({sym for sc in by_split["train"] for sym in sc.symbols})
        for split in splits:
            unknown = sorted({sym for sc in by_split[split] for sym in sc.symbols} - set(vocab))
            if unknown:
                raise JobSpecError(
                    f"job {spec.name!r}",
                    [
                        f"data.{split}: every symbol must occur in data.train (the vocabulary is built from it), "
                        f"found {len(unknown)} that do not, e.g. {unknown[:5]} in {getattr(d, split)}"
                    ],
                )
    jobs = [(p, vocab, root, rows_per_group) for p in pieces]
    written = shards.parallel_map(write_piece, jobs, use_ray=use_ray, progress=_progress(say, "written"))
    split_shards = {
        s: shards.SplitShards(tuple(w for p, w in zip(pieces, written, strict=True) if p.split == s), rows_per_group)
        for s in splits
    }
    if materialise is not None:
        storage.delete(storage.join(root, EXTRACTED))
    meta = {
        "schema_version": SCHEMA_VERSION,
        "content_hash": content_hash,
        "ptb_format": kind == "ptb-char",
        "kind": kind,
        "name": name,
        "splits": {s: sh.num_rows for s, sh in split_shards.items()},
        "shards": {s: sh.to_json() for s, sh in split_shards.items()},
        "sources": {s.split: {"field": s.field, "bytes": [s.start, s.stop]} for s in sources},
        "notes": notes,
        "symbols": vocab,
    }
    for line in notes:
        text.note(line)
    shards.commit(root, VOCAB_FILE, meta)
    return PreparedText(root, vocab, content_hash, kind == "ptb-char", kind=kind)


def _progress(say: Callable[[str], None], verb: str) -> Callable[[int, int], None]:
    """Progress lines at every quarter of the pieces (none for fewer than 8)."""

    def report(done: int, total: int) -> None:
        if total >= 8 and (done == total or done % (total // 4) == 0):
            say(f"[data]  {verb} {done}/{total} pieces")

    return report


def _check_terminators(pieces: list[Piece], scans: list[Scan]) -> None:
    """A file's lines all end the same way (:mod:`service.io.text`), across its pieces too."""
    per_file: dict[tuple[str, str], dict[str, int]] = {}
    first: dict[tuple[str, str, str], int] = {}
    for p, sc in zip(pieces, scans, strict=True):
        counts = per_file.setdefault((p.field, p.uri), {})
        for name, n in sc.terminators.items():
            counts[name] = counts.get(name, 0) + n
            if n:
                first.setdefault((p.field, p.uri, name), sc.first_ending)
    for (field, uri), counts in per_file.items():
        kinds = {k: n for k, n in counts.items() if n}
        if len(kinds) > 1:
            main = max(kinds, key=lambda k: kinds[k])
            other = next(k for k in kinds if k != main)
            found = ", ".join(f"{n:,} {k}" for k, n in kinds.items())
            raise datacache.data_error(
                field,
                f"{uri}: mixed line terminators ({found}; the first {other} line ending is at byte offset "
                f"{first[(field, uri, other)]:,}): expected every line to end the same way (LF, CRLF or CR); "
                "convert the file, e.g. with dos2unix",
            )


def check_prepared(spec: CharLMJob, prepared: PreparedText) -> list[str]:
    """What the worker loop needs of the prepared splits: every one of the step's training streams
    (``data.batch_size x train.accumulate_steps``) holds a target, and every evaluated split at least
    one (a symbol and the next)."""
    counts = prepared._meta()["splits"]
    if spec.data.dataset == "enwik8":
        where = {split: f"the enwik8 {split} split of {spec.data.path}" for split in counts}
    else:
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
    return PreparedText(
        root, list(meta["symbols"]), meta["content_hash"], bool(meta["ptb_format"]), kind=str(meta["kind"])
    )


def open_split(prepared: PreparedText, split: str) -> shards.ShardedSplit:
    """Random access to one split's ids (:class:`service.io.shards.ShardedSplit`), nothing read yet."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    meta = prepared._meta()
    if split not in meta["shards"]:
        raise FileNotFoundError(f"{prepared.root}: this data set has no {split!r} split")
    return shards.ShardedSplit(prepared.root, shards.SplitShards.from_json(meta["shards"][split]), [COLUMN])


def read_ids(split: shards.ShardedSplit, start: int, stop: int) -> torch.Tensor:
    """Ids ``[start, stop)`` of a split as a 1-D int64 tensor."""
    import torch  # deferred: reading a spec's files (preflight) needs no torch

    column = split.read(start, stop).column(COLUMN)
    return torch.from_numpy(column.to_numpy().astype("int64"))


def load_split(prepared: PreparedText, split: str) -> torch.Tensor:
    """All ids of one split as a 1-D int64 tensor (small splits; the worker loop reads ranges)."""
    reader = open_split(prepared, split)
    return read_ids(reader, 0, reader.num_rows)


__all__ = [
    "ENWIK8_BYTES",
    "ENWIK8_CUTS",
    "PIECE_BYTES",
    "PTB_CHAR_DIRS",
    "Piece",
    "PreparedText",
    "SCHEMA_VERSION",
    "check_prepared",
    "data_files",
    "load_prepared",
    "load_ptb_char",
    "load_split",
    "open_split",
    "prepare_text",
    "read_ids",
    "scan_piece",
    "source_name",
    "write_piece",
]
