"""Prepared strokes for ``task: handwriting``: normalised stroke-3 sequences in Parquet, cached by
content hash (:mod:`service.io.datacache`).

Sources, all read into one layout first, sequences of ``(Δx, Δy, pen_lifted)`` rows in raw units
(pen_lifted = 1 at a stroke's last point; y points down, as on a screen):

* ``hanzi-medians``: the vendored Make Me a Hanzi stroke medians (``data/handwriting``, see its
  PROVENANCE.md), a stroke-3 ``.npz``;
* a user stroke-3 ``.npz`` (the sketch-rnn format: ragged object arrays under ``train``,
  ``valid`` and optionally ``test``; numpy reads object arrays through pickle, so read only files
  you trust);
* an IAM-OnDB ``lineStrokes`` tree (``<StrokeSet><Stroke><Point x= y= time=/>...``, one text
  line per file): points to offsets (the first point is the origin and is dropped), split by id
  lists (IAM-OnDB's ``testset_v.txt`` etc.: a line whose file name starts with a listed id) or,
  without lists, by a seeded fraction of the files.

Preparation (Graves 2013 §4.2): offsets clipped to ``±clip`` (long jumps between lines or
strokes are outliers), then each axis divided by its standard deviation over the training split
(no centring: a zero offset stays zero). The scale is in the manifest; log-losses are in these
normalised units.

Every sequence is checked before anything is written: a malformed file, an empty stroke, a
non-finite coordinate, a pen value other than 0/1 or a sequence longer than ``data.max_points``
is a :class:`JobSpecError` naming the field, the file and the item; nothing is left half-written
(the manifest, written last, marks a folder complete).
"""

from __future__ import annotations

import hashlib
import io
import random
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

if TYPE_CHECKING:
    import torch

from ...io import datacache, storage, text
from ...io.datacache import data_error, read_data_file
from ...paths import VENDORED_DATA
from ..base import DataFile
from .spec import HandwritingJob

# Bump when the folder layout or the meaning of its files changes: old caches are then ignored.
SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test")
MANIFEST = "strokes.json"
HANZI = VENDORED_DATA / "handwriting" / "hanzi-medians.npz"

Raw = dict[str, list[tuple[str, np.ndarray]]]  # split -> (item name, (n, 3) float64 rows)


@dataclass(frozen=True)
class PreparedStrokes:
    root: str  # URI of the folder holding <split>.parquet and the manifest
    content_hash: str
    scale: tuple[float, float]  # raw units per normalised unit, (x, y)
    splits: dict[str, int]  # sequences per split
    manifest: str = MANIFEST

    def summary(self) -> str:
        counts = ", ".join(f"{n:,} {s}" for s, n in self.splits.items())
        return f"{counts} sequences, scale ({self.scale[0]:.4g}, {self.scale[1]:.4g}), hash {self.content_hash[:12]}"

    def has_split(self, split: str) -> bool:
        return split in self.splits


def check_prepared(spec: HandwritingJob, prepared: PreparedStrokes) -> list[str]:
    """What the worker loop needs of the prepared splits: a whole global batch of training sequences and
    at least one sequence in every evaluated split (each sequence already has 2 points or more)."""
    where = source_name(spec)
    problems = []
    n, (batch, fields) = prepared.splits.get("train", 0), spec.step_batch()
    if n < batch:
        problems.append(f"{fields}: {batch} sequences a step, {where} has {n} training sequences")
    for split in ("valid", "test"):
        if split in prepared.splits and prepared.splits[split] < 1:
            problems.append(f"data.path: expected at least 1 {split} sequence, {where} has none")
    return problems


def data_files(spec: HandwritingJob) -> list[DataFile]:
    """The user files preflight checks (the IAM-OnDB folder is listed and checked by ``prepare``)."""
    d = spec.data
    files = [DataFile("data.path", d.path, False)] if d.path is not None and d.format == "stroke3" else []
    for key in ("valid_list", "test_list"):
        if (uri := getattr(d, key)) is not None:
            files.append(DataFile(f"data.{key}", uri, True))
    return files


def source_name(spec: HandwritingJob) -> str:
    return spec.data.dataset or f"{spec.data.format} {spec.data.path}"


# ---- readers: raw sequences, checked ------------------------------------------------------------


def check_sequence(field: str, where: str, rows: np.ndarray, max_points: int) -> np.ndarray:
    """``rows`` as a checked ``(n, 3)`` float64 stroke-3 array; ``where`` names file and item."""
    if rows.ndim != 2 or rows.shape[1] != 3:
        raise data_error(field, f"{where}: expected (points, 3) rows of (dx, dy, pen_lifted), found shape {rows.shape}")
    if len(rows) == 0:
        raise data_error(field, f"{where}: empty sequence (no points)")
    if len(rows) > max_points:
        raise data_error(
            field,
            f"{where}: {len(rows):,} points, more than data.max_points = {max_points:,}; raise it or cut the data",
        )
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        raise data_error(
            field, f"{where}: non-finite value in point {int(np.argmax(bad))}: {rows[np.argmax(bad)].tolist()}"
        )
    pen_bad = ~np.isin(rows[:, 2], (0.0, 1.0))
    if pen_bad.any():
        i = int(np.argmax(pen_bad))
        raise data_error(field, f"{where}: pen_lifted must be 0 or 1, found {rows[i, 2]:g} in point {i}")
    return rows


def read_stroke3(field: str, uri: str, max_points: int, raw: bytes | None = None) -> Raw:
    """A stroke-3 ``.npz``: ``train``, ``valid`` (required) and ``test`` (optional)."""
    raw = read_data_file(field, uri) if raw is None else raw
    if raw[:4] != b"PK\x03\x04":  # not a zip archive: never hand it to numpy's pickle fallback
        raise data_error(field, f"{uri}: not a readable .npz file (expected a zip archive, found {raw[:8]!r}...)")
    try:
        npz = np.load(io.BytesIO(raw), allow_pickle=True)  # ragged object arrays are pickled
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise data_error(field, f"{uri}: not a readable .npz file: {e}") from None
    missing = [k for k in ("train", "valid") if k not in npz.files]
    if missing:
        raise data_error(
            field, f"{uri}: expected keys train, valid[, test], missing {missing}; found {sorted(npz.files)}"
        )
    out: Raw = {}
    for split in SPLITS:
        if split not in npz.files:
            continue
        items = npz[split]
        if len(items) == 0:
            raise data_error(field, f"{uri}: {split!r} holds no sequences")
        seqs = []
        for i, item in enumerate(items):
            where = f"{uri}: {split}[{i}]"
            try:
                rows = np.asarray(item, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise data_error(field, f"{where}: not a numeric array: {e}") from None
            seqs.append((f"{split}[{i}]", check_sequence(field, where, rows, max_points)))
        out[split] = seqs
    return out


def iam_line(field: str, name: str, xml: bytes, max_points: int) -> np.ndarray:
    """One IAM-OnDB ``lineStrokes`` file as stroke-3 offsets (y down, as recorded)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise data_error(field, f"{name}: malformed XML: {e}") from None
    strokes = root.findall("./StrokeSet/Stroke")
    if not strokes:
        raise data_error(field, f"{name}: no strokes (expected <StrokeSet><Stroke><Point x= y= .../>)")
    points: list[tuple[float, float, float]] = []
    for s, stroke in enumerate(strokes):
        pts = stroke.findall("Point")
        if not pts:
            raise data_error(field, f"{name}: stroke {s} is empty (no <Point>)")
        for p, point in enumerate(pts):
            try:
                x, y = float(point.attrib["x"]), float(point.attrib["y"])
            except (KeyError, ValueError) as e:
                raise data_error(
                    field, f"{name}: stroke {s} point {p}: expected numeric x and y, found {point.attrib}: {e}"
                ) from None
            if not (np.isfinite(x) and np.isfinite(y)):
                raise data_error(field, f"{name}: stroke {s} point {p}: non-finite coordinate ({x}, {y})")
            points.append((x, y, 1.0 if p == len(pts) - 1 else 0.0))
    if len(points) < 2:
        raise data_error(field, f"{name}: a single point; a line needs at least two")
    xyp = np.asarray(points, dtype=np.float64)
    rows = np.column_stack([xyp[1:, :2] - xyp[:-1, :2], xyp[1:, 2]])
    return check_sequence(field, name, rows, max_points)


def list_xml(field: str, uri: str) -> list[str]:
    """Every ``*.xml`` under a folder or ``s3://`` prefix, sorted."""
    fs, path = storage.filesystem_for(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except FileNotFoundError:
        raise data_error(field, f"expected an IAM-OnDB lineStrokes folder, found nothing at {uri}") from None
    except OSError as e:
        raise data_error(field, f"cannot list {uri}: {e}") from None
    names = sorted(
        i.path[len(path) :].lstrip("/") for i in infos if i.type == pafs.FileType.File and i.path.endswith(".xml")
    )
    if not names:
        raise data_error(field, f"{uri}: no .xml files (expected IAM-OnDB's lineStrokes tree)")
    return names


def read_ids(field: str, uri: str) -> list[str]:
    raw = read_data_file(field, uri)
    ids = [ln.strip() for ln in text.split_lines(field, uri, text.decode(field, uri, raw))]
    ids = [i for i in ids if i]
    if not ids:
        raise data_error(field, f"{uri}: expected ids, one per line, found none")
    return ids


def iam_split(spec: HandwritingJob, stems: list[str]) -> list[str]:
    """The split of each line file (by id lists when given, else by seeded fractions)."""
    d = spec.data
    if d.valid_list or d.test_list:
        lists = {
            s: tuple(read_ids(f"data.{s}_list", getattr(d, f"{s}_list")))
            for s in ("valid", "test")
            if getattr(d, f"{s}_list")
        }
        return [next((s for s, ids in lists.items() if stem.startswith(ids)), "train") for stem in stems]
    order = list(range(len(stems)))
    random.Random(d.split_seed).shuffle(order)
    n_valid, n_test = max(1, round(d.valid_fraction * len(stems))), round(d.test_fraction * len(stems))
    split = ["train"] * len(stems)
    for k, i in enumerate(order):
        split[i] = "valid" if k < n_valid else "test" if k < n_valid + n_test else "train"
    return split


def read_iam(spec: HandwritingJob, h: hashlib._Hash) -> Raw:
    d = spec.data
    assert d.path is not None
    names = list_xml("data.path", d.path)
    stems = [n.rsplit("/", 1)[-1].removesuffix(".xml") for n in names]
    splits = iam_split(spec, stems)
    out: Raw = {s: [] for s in SPLITS}
    for name, stem, split in zip(names, stems, splits, strict=True):
        xml = read_data_file("data.path", storage.join(d.path, name))
        h.update(f"{name} {len(xml)}\n".encode() + xml)
        out[split].append((stem, iam_line("data.path", f"{storage.join(d.path, name)}", xml, d.max_points)))
    for split in ("train", "valid"):
        if not out[split]:
            raise data_error("data.path", f"{d.path}: the {split} split is empty ({len(names)} line files in all)")
    return {s: seqs for s, seqs in out.items() if seqs}


def read_sources(spec: HandwritingJob) -> tuple[str, str, Raw]:
    """(name, content hash, raw sequences) of the spec's data."""
    d = spec.data
    h = hashlib.sha256(f"schema={SCHEMA_VERSION}\nclip={d.clip()}\nmax_points={d.max_points}\n".encode())
    if d.dataset is not None:
        raw_npz = HANZI.read_bytes()
        h.update(f"dataset={d.dataset}\n".encode() + raw_npz)
        return d.dataset, h.hexdigest(), read_stroke3("data.dataset", str(HANZI), d.max_points, raw_npz)
    assert d.path is not None
    if d.format == "stroke3":
        raw_npz = read_data_file("data.path", d.path)
        h.update(b"stroke3\n" + raw_npz)
        return "stroke3", h.hexdigest(), read_stroke3("data.path", d.path, d.max_points, raw_npz)
    split = f"valid={d.valid_list} test={d.test_list} {d.valid_fraction} {d.test_fraction} {d.split_seed}"
    h.update(f"iam-ondb {split}\n".encode())
    for key in ("valid_list", "test_list"):
        if (uri := getattr(d, key)) is not None:
            h.update(read_data_file(f"data.{key}", uri))
    raw = read_iam(spec, h)
    return "iam-ondb", h.hexdigest(), raw


# ---- preparation ---------------------------------------------------------------------------------


def normalise(raw: Raw, clip: float | None) -> tuple[dict[str, list[np.ndarray]], tuple[float, float]]:
    """Clip the offsets to ±clip, then divide each axis by its training-split standard deviation."""
    clipped = {
        split: [np.column_stack([np.clip(r[:, :2], -clip, clip) if clip else r[:, :2], r[:, 2]]) for _, r in seqs]
        for split, seqs in raw.items()
    }
    train = np.concatenate(clipped["train"])[:, :2]
    std = train.std(axis=0)
    if not (std > 0).all():
        raise data_error(
            "data", f"the training offsets do not vary along {'x' if std[0] <= 0 else 'y'}: cannot normalise"
        )
    scale = (float(std[0]), float(std[1]))
    out = {split: [np.column_stack([r[:, :2] / std, r[:, 2]]) for r in seqs] for split, seqs in clipped.items()}
    return out, scale


def _table(seqs: list[np.ndarray], names: list[str]) -> pa.Table:
    offsets = pa.array(np.concatenate([[0], np.cumsum([len(s) for s in seqs])]), type=pa.int32())
    rows = np.concatenate(seqs).astype(np.float32)
    return pa.table(
        {
            "name": pa.array(names, type=pa.string()),
            "points": pa.ListArray.from_arrays(
                offsets, pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), 3)
            ),
        }
    )


def prepare_strokes(spec: HandwritingJob, cache_root: str) -> PreparedStrokes:
    """The prepared form of ``spec.data`` under ``cache_root`` (local or s3://), built if missing."""
    name, content_hash, raw = read_sources(spec)
    root = datacache.prepared_folder(cache_root, name, content_hash)
    if datacache.is_complete(root, MANIFEST):
        return load_prepared(root)
    prepared, scale = normalise(raw, spec.data.clip())
    for split, seqs in prepared.items():
        datacache.write_parquet(storage.join(root, f"{split}.parquet"), _table(seqs, [n for n, _ in raw[split]]))
    splits = {split: len(seqs) for split, seqs in prepared.items()}
    meta = {
        "schema_version": SCHEMA_VERSION,
        "content_hash": content_hash,
        "name": name,
        "scale": list(scale),
        "clip": spec.data.clip(),
        "splits": splits,
        "points": {split: int(sum(len(s) for s in seqs)) for split, seqs in prepared.items()},
    }
    datacache.write_manifest(root, MANIFEST, meta)
    return PreparedStrokes(root, content_hash, scale, splits)


def load_prepared(root: str) -> PreparedStrokes:
    """Re-open a prepared folder (e.g. on a Ray worker, from the URI the driver passed)."""
    meta = datacache.read_manifest(root, MANIFEST, SCHEMA_VERSION, "strokes")
    sx, sy = meta["scale"]
    return PreparedStrokes(
        root, meta["content_hash"], (float(sx), float(sy)), {k: int(v) for k, v in meta["splits"].items()}
    )


def load_split(prepared: PreparedStrokes, split: str) -> list[torch.Tensor]:
    """The normalised sequences of one split, each ``(n, 3)`` float32."""
    import torch  # deferred: reading a spec's files (preflight) needs no torch

    if not prepared.has_split(split):
        raise FileNotFoundError(f"{prepared.root}: this data set has no {split!r} split")
    column = datacache.read_parquet(storage.join(prepared.root, f"{split}.parquet")).column("points").combine_chunks()
    offsets = column.offsets.to_numpy()
    rows = torch.from_numpy(column.values.flatten().to_numpy().reshape(-1, 3).copy())
    return [rows[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


__all__ = [
    "HANZI",
    "PreparedStrokes",
    "SCHEMA_VERSION",
    "data_files",
    "iam_line",
    "load_prepared",
    "load_split",
    "prepare_strokes",
    "read_stroke3",
    "source_name",
]
