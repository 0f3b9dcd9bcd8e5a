"""Reading parallel corpora as streams of sentence pairs, the training filters, and the seeded sample
sentencepiece learns from.

Every text file is read through :func:`service.io.text.iter_lines` (gzip'd or not, BOM, LF/CRLF/CR,
bad bytes and truncated .gz named), a chunk at a time: memory does not grow with the corpus.

* :func:`iter_pairs`: one corpus (aligned files, TSV or Parquet) as ``(line, source, target)``;
  misaligned files, a TSV line with the wrong number of fields, name the file and the line.
* :func:`read_parallel`: a whole validation or test corpus, where an empty sentence is an error (its
  references must stay whole). Training pairs are never refused for being empty: the filter drops
  them (``data.filter.min_len``) and counts them.
* :func:`drop_reason`: why :class:`FilterSpec` drops a training pair (``too_short``, ``too_long``,
  ``ratio``), or None.
* :func:`sample_keys` / :func:`bottom_k`: the sample is the ``sample_pairs`` kept pairs with the
  smallest keys, a key being a hash of the seed, the corpus number and the line. It is the same
  pairs whichever process reads which corpus (the Ray Data path merges per-corpus samples) and in
  corpus order.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ...io import storage
from ...io import text as textfile
from ...io.datacache import data_error, read_data_file
from .spec import FilterSpec, ParallelSource

DROP_REASONS = ("too_short", "too_long", "ratio")

Pair = tuple[int, str, str]  # (1-based line or row, source sentence, target sentence)


def read_lines(field_name: str, uri: str) -> list[str]:
    """The lines of a UTF-8 text file, gzip'd or not (:func:`service.io.text.iter_lines`)."""
    return list(textfile.iter_lines(field_name, uri))


def _aligned(where: str, src: ParallelSource) -> Iterator[Pair]:
    assert src.src is not None and src.tgt is not None
    left = textfile.iter_lines(f"{where}.src", src.src)
    right = textfile.iter_lines(f"{where}.tgt", src.tgt)
    i = 0
    for i, (a, b) in enumerate(itertools.zip_longest(left, right), 1):
        if a is None or b is None:
            n_left = i - 1 + (a is not None) + sum(1 for _ in left)
            n_right = i - 1 + (b is not None) + sum(1 for _ in right)
            raise data_error(
                where,
                f"misaligned corpus: {src.src} (src) has {n_left:,} lines, {src.tgt} (tgt) has {n_right:,}; "
                "line i of one must translate line i of the other",
            )
        yield i, a, b


def _tsv(where: str, src: ParallelSource) -> Iterator[Pair]:
    assert src.tsv is not None
    width = None
    for i, line in enumerate(textfile.iter_lines(f"{where}.tsv", src.tsv), 1):
        parts = line.split("\t")
        if src.columns is None:
            if len(parts) != 2:
                raise data_error(
                    f"{where}.tsv", f"{src.tsv} line {i}: expected source TAB target, found {len(parts) - 1} tabs"
                )
            yield i, parts[0], parts[1]
            continue
        if width is None:
            width = len(parts)
            if max(src.columns) >= width:
                raise data_error(
                    f"{where}.columns",
                    f"{src.tsv} line 1 has {width} fields (0 to {width - 1}), "
                    f"columns asks for field {max(src.columns)}",
                )
        if len(parts) != width:
            raise data_error(
                f"{where}.tsv",
                f"{src.tsv} line {i}: expected {width} tab-separated fields as line 1, found {len(parts)}",
            )
        yield i, parts[src.columns[0]], parts[src.columns[1]]


def _parquet(where: str, src: ParallelSource) -> Iterator[Pair]:
    assert src.parquet is not None
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
        kind = table.schema.field(col).type
        if not pa.types.is_string(kind) and not pa.types.is_large_string(kind):
            raise data_error(f"{where}.{key}", f"{src.parquet} column {col!r}: expected strings, found {kind}")
        cols.append([v if v is not None else "" for v in table.column(col).to_pylist()])
    for i, (a, b) in enumerate(zip(*cols, strict=True), 1):
        yield i, a, b


def iter_pairs(where: str, src: ParallelSource) -> Iterator[Pair]:
    """The pairs of one corpus in file order; ``where`` is the spec field naming it (``data.train``,
    ``data.train[2]``)."""
    if src.tsv is not None:
        return _tsv(where, src)
    if src.parquet is not None:
        return _parquet(where, src)
    return _aligned(where, src)


def _names(where: str, src: ParallelSource) -> tuple[tuple[str, str], tuple[str, str]]:
    if src.tsv is not None:
        return (f"{where}.tsv", src.tsv), (f"{where}.tsv", src.tsv)
    if src.parquet is not None:
        return (
            (f"{where}.parquet", f"{src.parquet} column {src.src_column!r}"),
            (f"{where}.parquet", f"{src.parquet} column {src.tgt_column!r}"),
        )
    return (f"{where}.src", str(src.src)), (f"{where}.tgt", str(src.tgt))


def read_parallel(where: str, src: ParallelSource) -> tuple[list[str], list[str]]:
    """A whole validation or test corpus as aligned (source, target) sentences; an empty sentence on
    either side is an error naming the file and the line."""
    names = _names(where, src)
    left, right = [], []
    for i, a, b in iter_pairs(where, src):
        for (fname, what), sentence, other in ((names[0], a, b), (names[1], b, a)):
            if not sentence.strip():
                side = "both sides" if not other.strip() else "one side"
                raise data_error(fname, f"{what} line {i}: empty sentence ({side}); every line must hold a sentence")
        left.append(a)
        right.append(b)
    if not left:
        raise data_error(where, "expected sentence pairs, found none")
    return left, right


def read_corpora(sources: list[tuple[str, ParallelSource]]) -> tuple[list[str], list[str]]:
    """Several validation corpora, concatenated in order."""
    left: list[str] = []
    right: list[str] = []
    for where, src in sources:
        a, b = read_parallel(where, src)
        left += a
        right += b
    return left, right


def drop_reason(source: str, target: str, f: FilterSpec) -> str | None:
    """Why the filter drops a training pair (the first of :data:`DROP_REASONS` that applies), or None."""
    n, m = len(source.split()), len(target.split())
    short, long = min(n, m), max(n, m)
    if short < f.min_len:
        return "too_short"
    if f.max_len is not None and long > f.max_len:
        return "too_long"
    if f.max_ratio is not None and long > f.max_ratio * max(short, 1):
        return "ratio"
    return None


def chunks(pairs: Iterable[Pair], size: int) -> Iterator[list[Pair]]:
    """``pairs`` in lists of ``size`` (the last may be shorter)."""
    it = iter(pairs)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def sample_key(seed: int, corpus: int, line: int) -> int:
    """The sampling key of a pair: 64 bits of a hash of the seed, the corpus number and the line."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{corpus}:{line}".encode(), digest_size=8).digest(), "big")


Sampled = tuple[int, int, int, str, str]  # (key, corpus, line, source, target)


def sample_corpus(where: str, corpus: int, src: ParallelSource, f: FilterSpec, k: int, seed: int) -> list[Sampled]:
    """The ``k`` pairs of one training corpus that the filter keeps with the smallest keys."""
    heap: list[tuple[int, int, int, str, str]] = []  # keys negated: the root is the largest kept key
    for line, a, b in iter_pairs(where, src):
        if drop_reason(a, b, f) is not None:
            continue
        key = sample_key(seed, corpus, line)
        if len(heap) < k:
            heapq.heappush(heap, (-key, corpus, line, a, b))
        elif key < -heap[0][0]:
            heapq.heapreplace(heap, (-key, corpus, line, a, b))
    return [(-nk, c, n, a, b) for nk, c, n, a, b in heap]


def bottom_k(samples: Iterable[list[Sampled]], k: int) -> list[tuple[str, str]]:
    """The ``k`` smallest-key pairs of per-corpus samples, in corpus order: sentencepiece's input."""
    chosen = heapq.nsmallest(k, itertools.chain.from_iterable(samples))
    return [(a, b) for _, _, _, a, b in sorted(chosen, key=lambda s: (s[1], s[2]))]


def file_digest(uri: str, h: hashlib._Hash, field_name: str) -> None:
    """Feed the bytes of a file (as stored: compressed or not) to ``h``, a chunk at a time."""
    try:
        with storage.open_input(uri) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        raise data_error(field_name, f"expected a file, found nothing at {uri}") from None
    except OSError as e:
        raise data_error(field_name, f"cannot read {uri}: {e}") from None


def source_files(where: str, src: ParallelSource) -> list[tuple[str, str]]:
    """(field, uri) of each file of a corpus."""
    return [(f"{where}.{key}", uri) for key in ("src", "tgt", "tsv", "parquet") if (uri := getattr(src, key))]


__all__ = [
    "DROP_REASONS",
    "bottom_k",
    "chunks",
    "drop_reason",
    "file_digest",
    "iter_pairs",
    "read_corpora",
    "read_lines",
    "read_parallel",
    "sample_corpus",
    "sample_key",
    "source_files",
]
