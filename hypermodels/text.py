"""Character vocabularies and the character-level Penn Treebank.

PTB char format: every symbol separated by a space, ``_`` marks a word boundary, one sentence
per line; the newline is a symbol of its own (50 symbols in all).
"""
from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

NEWLINE = "\n"
_PTB_SYMBOL = re.compile(r"[^\s]+|\n")
PTB_CHAR_SPLITS = ("train", "valid", "test")
# The vendored copy (see data/ptb-char/PROVENANCE.md); the project's shared folder as fallback.
_REPO = Path(__file__).resolve().parents[1]
PTB_CHAR_DIRS = (_REPO / "data" / "ptb-char", _REPO.parent / "shared" / "data" / "ptb" / "char")


def ptb_char_symbols(text: str) -> list[str]:
    """Symbols of PTB-char formatted text: the space-separated symbols, each newline a symbol too."""
    return _PTB_SYMBOL.findall(text)


def raw_char_symbols(text: str) -> list[str]:
    """Symbols of plain text: every character, the newline included."""
    return list(text)


def load_ptb_char(split: str, root: str | Path | None = None) -> list[str]:
    """The symbols of one PTB-char split (``train``, ``valid`` or ``test``)."""
    if split not in PTB_CHAR_SPLITS:
        raise ValueError(f"split must be one of {PTB_CHAR_SPLITS}, got {split!r}")
    for folder in ([Path(root)] if root else PTB_CHAR_DIRS):
        for name, opener in ((f"ptb.char.{split}.txt.gz", gzip.open), (f"ptb.char.{split}.txt", open)):
            path = folder / name
            if path.is_file():
                with opener(path, "rt", encoding="utf-8") as f:
                    return ptb_char_symbols(f.read())
    raise FileNotFoundError(f"PTB char split {split!r} not found in {[str(p) for p in PTB_CHAR_DIRS]}")


class CharVocab:
    """Symbol <-> id mapping; ids follow the sorted order of the symbols."""

    def __init__(self, symbols: Sequence[str]) -> None:
        if len(set(symbols)) != len(symbols):
            raise ValueError("vocabulary symbols must be unique")
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def build(cls, *corpora: Iterable[str]) -> CharVocab:
        return cls(sorted({s for corpus in corpora for s in corpus}))

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, symbols: Iterable[str]) -> list[int]:
        try:
            return [self.index[s] for s in symbols]
        except KeyError as e:
            raise ValueError(f"symbol {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.symbols[i] for i in ids]

    def to_text(self, ids: Iterable[int], ptb_format: bool = True) -> str:
        """Readable text: in PTB format ``_`` becomes a space."""
        text = "".join(self.decode(ids))
        return text.replace("_", " ") if ptb_format else text


__all__ = ["CharVocab", "NEWLINE", "PTB_CHAR_SPLITS", "load_ptb_char", "ptb_char_symbols", "raw_char_symbols"]
