"""Convert the stroke medians of the npm package ``hanzi-writer-data`` (Make Me a Hanzi) into the
stroke-3 ``.npz`` the handwriting task reads: run once, offline; the output is vendored beside it.

    npm pack hanzi-writer-data@2.0.1 && tar xzf hanzi-writer-data-2.0.1.tgz
    python data/handwriting/convert_hanzi.py package data/handwriting/hanzi-medians.npz

Each ``<char>.json`` holds ``medians``: per stroke, the points of its median line in a 1024 x 1024
em box with y pointing up (Make Me a Hanzi draws with ``scale(1, -1) translate(0, -900)``). A
character becomes one sequence: its points in stroke order, y flipped to point down (screen
coordinates, as IAM-OnDB and Quick Draw), as offsets from the previous point (the first point is
the origin and is dropped, as in Graves' IAM-OnDB preparation), with pen_lifted = 1 at each stroke's
last point. Characters are split 90 / 5 / 5 into train / valid / test by a permutation seeded with 0
of the code-point-sorted list.

Keys: ``train``, ``valid``, ``test`` (object arrays of int16 ``(n, 3)``, the stroke-3 layout) and
``train_chars``, ``valid_chars``, ``test_chars`` (the characters, same order).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TOP = 900  # Make Me a Hanzi's y origin: screen y = 900 - y
SEED, VALID, TEST = 0, 0.05, 0.05


def character_to_stroke3(medians: list[list[list[int]]]) -> np.ndarray:
    points, pen = [], []
    for stroke in medians:
        for i, (x, y) in enumerate(stroke):
            points.append((x, TOP - y))
            pen.append(1 if i == len(stroke) - 1 else 0)
    xy = np.asarray(points, dtype=np.int64)
    offsets = xy[1:] - xy[:-1]
    return np.column_stack([offsets, np.asarray(pen[1:])]).astype(np.int16)


def main(package: str, out: str) -> None:
    files = sorted(p for p in Path(package).glob("*.json") if p.name != "package.json")
    chars, seqs = [], []
    for path in files:
        medians = json.loads(path.read_text(encoding="utf-8"))["medians"]
        seq = character_to_stroke3(medians)
        if len(seq) >= 2:
            chars.append(path.stem)
            seqs.append(seq)
    order = np.random.default_rng(SEED).permutation(len(seqs))
    n_valid, n_test = round(VALID * len(seqs)), round(TEST * len(seqs))
    parts = {"valid": order[:n_valid], "test": order[n_valid : n_valid + n_test], "train": order[n_valid + n_test :]}
    arrays: dict[str, np.ndarray] = {}
    for split, idx in parts.items():
        idx = np.sort(idx)
        arr = np.empty(len(idx), dtype=object)
        arr[:] = [seqs[i] for i in idx]
        arrays[split] = arr
        arrays[f"{split}_chars"] = np.asarray([chars[i] for i in idx])
    np.savez_compressed(out, **arrays)
    sizes = {split: len(idx) for split, idx in parts.items()}
    points = sum(len(s) for s in seqs)
    print(f"{len(seqs)} characters {sizes}, {points} points, {points / len(seqs):.1f} per character -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
