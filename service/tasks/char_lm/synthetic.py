"""A synthetic stand-in for enwik8, for tests and benches that must not need the real file.

enwik8 is the first 10^8 bytes of an English Wikipedia XML dump: a ``<mediawiki>`` header and
``<siteinfo>``, then ``<page>`` elements (title, ids, a revision with timestamp and contributor,
and the article's wiki markup in ``<text xml:space="preserve">`` with XML entities such as
``&lt;``, ``&amp;`` and ``&quot;``), with some multi-byte UTF-8 (accented Latin, CJK, dashes),
cut at its size (mid-page). :func:`write_standin` writes a file of that structure and of any size,
deterministically from a seed: a pool of generated pages is written over and over with fresh ids,
so gigabytes are written at disk speed.
"""

from __future__ import annotations

import random
from pathlib import Path

HEADER = (
    '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.3/" version="0.3" xml:lang="en">\n'
    "  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <base>http://en.wikipedia.org/wiki/Main_Page</base>\n"
    "    <generator>MediaWiki 1.6alpha</generator>\n    <case>first-letter</case>\n      <namespaces>\n"
    '      <namespace key="0" />\n      <namespace key="14">Category</namespace>\n      </namespaces>\n'
    "  </siteinfo>\n"
)
WORDS = (
    "the of and in a to was is for as on by with from that at his which an are were it be this also "
    "first city century war school river music government national university during population "
    "history church between world state after other new known united states language river island"
).split()
EXTRA = ["café", "Zürich", "naïve", "São Paulo", "Kraków", "Øresund", "—", "–", "東京", "中文", "Ελληνικά", "Москва"]


def _page(rng: random.Random) -> str:
    title = " ".join(rng.choice(WORDS).capitalize() for _ in range(rng.randint(1, 3)))
    paragraphs = []
    for _ in range(rng.randint(1, 6)):
        words = []
        for _ in range(rng.randint(20, 120)):
            r = rng.random()
            w = rng.choice(WORDS)
            if r < 0.05:
                w = f"[[{w.capitalize()}|{w}]]"
            elif r < 0.07:
                w = f"'''{w}'''"
            elif r < 0.09:
                w = rng.choice(EXTRA)
            elif r < 0.10:
                w = f"&quot;{w}&quot;"
            elif r < 0.105:
                w = f"{{{{cite|{w}}}}} &lt;ref&gt;{rng.randint(1000, 2005)}&lt;/ref&gt;"
            words.append(w)
        paragraphs.append(" ".join(words) + ".")
    body = f"== {title} ==\n" + "\n\n".join(paragraphs) + f"\n\n[[Category:{rng.choice(WORDS).capitalize()}]]"
    stamp = f"2006-0{rng.randint(1, 3)}-{rng.randint(10, 28)}T{rng.randint(10, 23)}:14:5{rng.randint(0, 9)}Z"
    return (
        f"  <page>\n    <title>{title}</title>\n    <id>{{id}}</id>\n    <revision>\n      <id>{{rev}}</id>\n"
        f"      <timestamp>{stamp}</timestamp>\n      <contributor>\n"
        f"        <username>{rng.choice(WORDS).capitalize()}Bot</username>\n"
        f"        <id>{rng.randint(1, 99999)}</id>\n      </contributor>\n"
        f'      <text xml:space="preserve">{body}</text>\n    </revision>\n  </page>\n'
    )


def write_standin(path: str | Path, size: int, seed: int = 0) -> Path:
    """Write ``size`` bytes of enwik8-shaped XML to ``path`` (cut mid-page, like the real file)."""
    rng = random.Random(seed)
    pool = [_page(rng) for _ in range(300)]
    path = Path(path)
    written, page_id = 0, 10
    with path.open("wb") as f:
        chunk = HEADER.encode()
        while written < size:
            take = chunk[: size - written]
            f.write(take)
            written += len(take)
            page_id += 1
            page = pool[rng.randrange(len(pool))]
            chunk = page.replace("{id}", str(page_id)).replace("{rev}", str(page_id * 37)).encode()
    return path


__all__ = ["write_standin"]
