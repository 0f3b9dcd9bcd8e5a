"""Character vocabularies and symbol splitting: nothing here reads a file.

Two text formats: plain text (every character a symbol, :func:`raw_char_symbols`) and the
character-level Penn Treebank's (:func:`ptb_char_symbols`): every symbol separated by a space,
``_`` marks a word boundary, one sentence per line; the newline is a symbol of its own (50 symbols
in all). Reading the PTB files is the training service's business, not the models'.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

NEWLINE = "\n"
_PTB_SYMBOL = re.compile(r"[^\s]+|\n")


def ptb_char_symbols(text: str) -> list[str]:
    """Symbols of PTB-char formatted text: the space-separated symbols, each newline a symbol too."""
    return _PTB_SYMBOL.findall(text)


def raw_char_symbols(text: str) -> list[str]:
    """Symbols of plain text: every character, the newline included."""
    return list(text)


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


__all__ = ["CharVocab", "NEWLINE", "ptb_char_symbols", "raw_char_symbols"]
