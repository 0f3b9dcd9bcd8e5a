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
import sys
from collections.abc import Iterator

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


__all__ = [
    "UTF8_BOM",
    "collect_notes",
    "decode",
    "normalize_newlines",
    "note",
    "split_lines",
    "terminator_counts",
]
