"""Reading users' text files: the one place that decodes them and finds their lines.

Every text reader of the service (char-LM corpora, parallel files and TSV, the references they
carry, ``hyperctl translate`` input) goes through :func:`decode` and :func:`split_lines`, so the
rules are the same everywhere:

* **Byte-order mark.** A leading UTF-8 BOM (``EF BB BF``, what some Windows editors write) is
  stripped, and the preparation output says so once per file: kept, it would become a vocabulary
  symbol or a stray character in the first sentence and its reference. A UTF-16/32 BOM is refused
  by name (the file is not UTF-8).
* **Line terminators.** A file's lines end in LF, CRLF or CR (old Mac); whichever it uses is
  recognised. A file that mixes them is refused, naming the file, the terminators found and the
  first line whose ending differs: which one is a line break and which one is part of a sentence
  cannot be told.

Notes (such as a stripped BOM) go to the collector of :func:`collect_notes`, which the driver's
start-up prints after preparing the data; without one they go to stderr.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from ..spec.errors import JobSpecError
from . import storage
from .datacache import data_error

UTF8_BOM = b"\xef\xbb\xbf"
_OTHER_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32-LE",
    b"\x00\x00\xfe\xff": "UTF-32-BE",
    b"\xff\xfe": "UTF-16-LE",
    b"\xfe\xff": "UTF-16-BE",
}
TERMINATORS = {"\r\n": "CRLF", "\r": "CR", "\n": "LF"}

_notes: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("text_notes", default=None)


@contextlib.contextmanager
def collect_notes() -> Iterator[list[str]]:
    """Collect the notes of the readers called inside the block (each distinct note once)."""
    notes: list[str] = []
    token = _notes.set(notes)
    try:
        yield notes
    finally:
        _notes.reset(token)


def note(message: str) -> None:
    notes = _notes.get()
    if notes is None:
        print(f"note: {message}", file=sys.stderr)
    elif message not in notes:
        notes.append(message)


def decode(field: str, uri: str, raw: bytes) -> str:
    """``raw`` as UTF-8 text without a leading BOM (noted); undecodable bytes name file and line."""
    for bom, name in _OTHER_BOMS.items():
        if raw.startswith(bom):
            raise data_error(field, f"expected UTF-8 text, found a {name} byte-order mark at the start of {uri}")
    skip = len(UTF8_BOM) if raw.startswith(UTF8_BOM) else 0
    if skip:
        note(f"{field}: {uri} starts with a UTF-8 byte-order mark; it is ignored")
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = 1 + (raw.count(b"\n", 0, at) if b"\n" in raw else raw.count(b"\r", 0, at))
        raise data_error(
            field,
            f"{uri} line {line}: expected UTF-8 text, found byte 0x{raw[at]:02x} at offset {at} "
            "that is not valid UTF-8",
        ) from None


def terminator_counts(text: str) -> dict[str, int]:
    """How many lines end in each of CRLF, CR and LF."""
    crlf = text.count("\r\n")
    return {"CRLF": crlf, "CR": text.count("\r") - crlf, "LF": text.count("\n") - crlf}


def split_lines(field: str, uri: str, text: str) -> list[str]:
    """The lines of ``text`` (terminators removed; no empty last line for a final terminator).

    LF, CRLF and CR files are all read; a file mixing them is refused (see the module's docstring).
    """
    counts = {name: n for name, n in terminator_counts(text).items() if n}
    if not counts:
        return [text] if text else []
    if len(counts) > 1:
        main = max(counts, key=lambda k: counts[k])
        other = next(t for t, name in TERMINATORS.items() if name != main and counts.get(name))
        where = _first_line_ending(text, other)  # the first line not ending like most of the file
        found = ", ".join(f"{n:,} {name}" for name, n in counts.items())
        raise data_error(
            field,
            f"{uri}: mixed line terminators ({found}; line {where} ends in {TERMINATORS[other]}): "
            f"expected every line to end the same way (LF, CRLF or CR); convert the file, e.g. with dos2unix",
        )
    (name,) = counts
    sep = next(t for t, n in TERMINATORS.items() if n == name)
    lines = text.split(sep)
    if lines[-1] == "":
        lines.pop()
    return lines


def _first_line_ending(text: str, terminator: str) -> int:
    """The 1-based number of the first line that ends in ``terminator`` (every terminator ends a line)."""
    line, i = 1, 0
    while i < len(text):
        for t in TERMINATORS:
            if text.startswith(t, i):
                if t == terminator:
                    return line
                line, i = line + 1, i + len(t) - 1
                break
        i += 1
    return line


def normalize_newlines(field: str, uri: str, text: str) -> str:
    """``text`` with every line ending as LF (for readers that keep newlines, e.g. a char LM's
    corpus, where a CR would otherwise become a symbol)."""
    lines = split_lines(field, uri, text)
    ends_with_terminator = text.endswith(("\n", "\r"))
    return "\n".join(lines) + ("\n" if ends_with_terminator else "")


_TERMINATOR = re.compile(r"\r\n|\r|\n")
GZIP_MAGIC = b"\x1f\x8b"
GZIP_SLICE = 1 << 16


def _raw_chunks(field: str, uri: str, chunk_bytes: int) -> Iterator[bytes]:
    try:
        with storage.open_input(uri) as f:
            while chunk := f.read(chunk_bytes):
                yield chunk
    except FileNotFoundError:
        raise data_error(field, f"expected a file, found nothing at {uri}") from None
    except OSError as e:
        raise data_error(field, f"cannot read {uri}: {e}") from None


def _gunzip(field: str, uri: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream (every member of a multi-member file); a truncated or
    corrupt stream is named with its compressed byte offset."""
    state: dict[str, Any] = {"d": None}  # the decompressor of the member being read
    offset = 0  # compressed bytes consumed before the current slice
    for big in chunks:
        for start in range(0, len(big), GZIP_SLICE):  # a corrupt stream is named to within a slice
            chunk = big[start : start + GZIP_SLICE]
            yield from _gunzip_slice(field, uri, chunk, offset, state)
            offset += len(chunk)
    if state["d"] is not None:
        raise data_error(
            field,
            f"{uri}: truncated gzip file: the compressed stream stops at byte offset {offset:,} before its "
            "end marker (an interrupted download or copy?)",
        )


def _gunzip_slice(field: str, uri: str, chunk: bytes, offset: int, state: dict[str, Any]) -> Iterator[bytes]:
    data, d = chunk, state["d"]
    while data:
        if d is None:
            if data[:2] != GZIP_MAGIC[: len(data[:2])]:
                if data.strip(b"\x00"):  # padding after the last member is tolerated
                    at = offset + len(chunk) - len(data)
                    raise data_error(field, f"{uri}: unexpected bytes after a gzip member at byte offset {at:,}")
                break
            d = zlib.decompressobj(wbits=31)
        try:
            out = d.decompress(data)
        except zlib.error as e:
            raise data_error(
                field, f"{uri}: corrupt gzip data in compressed bytes {offset:,}-{offset + len(chunk):,}: {e}"
            ) from None
        if out:
            yield out
        data = b""
        if d.eof:  # the member ended: another may follow
            data, d = d.unused_data, None
    state["d"] = d


def iter_lines(field: str, uri: str, chunk_bytes: int = 1 << 20) -> Iterator[str]:
    """The lines of a UTF-8 text file, gzip'd or not (by content), read ``chunk_bytes`` at a time:
    memory does not grow with the file. The rules are :func:`decode`'s and :func:`split_lines`'s
    (BOM stripped and noted, LF/CRLF/CR, mixed terminators refused with the same message, a bad byte
    named with its line and uncompressed offset); a truncated or corrupt .gz is named with its
    compressed byte offset."""
    chunks = _raw_chunks(field, uri, chunk_bytes)
    first = next(chunks, b"")
    if first[:2] == GZIP_MAGIC:
        stream: Iterable[bytes] = _gunzip(field, uri, _prepend(first, chunks))
    else:
        stream = _prepend(first, chunks)
    yield from _lines(field, uri, stream)


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _head(stream: Iterable[bytes], size: int) -> Iterator[bytes]:
    """``stream`` re-cut so that its first chunk holds at least ``size`` bytes (or all there is)."""
    it = iter(stream)
    first = b""
    for chunk in it:
        first += chunk
        if len(first) >= size:
            break
    if first:
        yield first
    yield from it


def _lines(field: str, uri: str, stream: Iterable[bytes]) -> Iterator[str]:
    pending = b""  # bytes of an incomplete UTF-8 character at a chunk's end
    text = ""  # decoded text after the last complete line
    offset = 0  # uncompressed offset of data[0]
    line = 1  # the number of the line ``text`` starts
    kinds = {name: 0 for name in TERMINATORS.values()}  # lines ending in each terminator
    first_of: dict[str, int] = {}  # terminator -> the first line ending in it
    first = True

    def bad_byte(data: bytes, at: int) -> JobSpecError:
        good = data[:at].decode("utf-8", errors="replace")
        where = line + len(_TERMINATOR.findall(text + good))
        return data_error(
            field,
            f"{uri} line {where}: expected UTF-8 text, found byte 0x{data[at]:02x} at offset {offset + at} "
            "that is not valid UTF-8",
        )

    for chunk in _head(stream, 4):
        data = pending + chunk
        if first:
            first = False
            for bom, name in _OTHER_BOMS.items():
                if data.startswith(bom):
                    raise data_error(
                        field, f"expected UTF-8 text, found a {name} byte-order mark at the start of {uri}"
                    )
            if data.startswith(UTF8_BOM):
                note(f"{field}: {uri} starts with a UTF-8 byte-order mark; it is ignored")
                data, offset = data[len(UTF8_BOM) :], len(UTF8_BOM)
        cut = len(data)
        for back in range(1, min(4, len(data)) + 1):  # an incomplete last character waits for the next chunk
            b = data[-back]
            if b < 0x80:
                break
            if b >= 0xC0:
                if (2 if b < 0xE0 else 3 if b < 0xF0 else 4) > back:
                    cut = len(data) - back
                break
        try:
            decoded = data[:cut].decode("utf-8")
        except UnicodeDecodeError as e:
            raise bad_byte(data, e.start) from None
        pending, offset = data[cut:], offset + cut
        text += decoded
        held = text.endswith("\r")  # perhaps the first half of a CRLF
        body = text[:-1] if held else text
        parts, ends = _TERMINATOR.split(body), _TERMINATOR.findall(body)
        text = parts[-1] + ("\r" if held else "")
        for sentence, end in zip(parts, ends, strict=False):
            name = TERMINATORS[end]
            kinds[name] += 1
            first_of.setdefault(name, line)
            if len(first_of) == 1:  # after a second kind of terminator nothing more is read out
                yield sentence
            line += 1
    if pending:
        try:
            pending.decode("utf-8")
        except UnicodeDecodeError as e:
            raise bad_byte(pending, e.start) from None
    if text.endswith("\r"):
        kinds["CR"] += 1
        first_of.setdefault("CR", line)
        text = text[:-1]
        if len(first_of) == 1:
            yield text
        text = ""
    if len(first_of) > 1:
        counts = {name: n for name, n in kinds.items() if n}
        main = max(counts, key=lambda k: counts[k])
        other = next(name for name in counts if name != main)
        found = ", ".join(f"{n:,} {name}" for name, n in counts.items())
        raise data_error(
            field,
            f"{uri}: mixed line terminators ({found}; line {first_of[other]} ends in {other}): "
            "expected every line to end the same way (LF, CRLF or CR); convert the file, e.g. with dos2unix",
        )
    if text:
        yield text


__all__ = [
    "GZIP_MAGIC",
    "UTF8_BOM",
    "iter_lines",
    "collect_notes",
    "decode",
    "normalize_newlines",
    "note",
    "split_lines",
    "terminator_counts",
]
