"""Prepared image sets for ``task: image_classification``: Parquet splits plus ``images.json``.

Sources: idx files (MNIST's format, gzip'd or not: built-in ``mnist-test`` and
``fashion-mnist``, or any four files from paths / s3:// URIs) and CIFAR-10's python batches.
A prepared folder ``<cache_root>/<name>-<hash16>`` holds ``train.parquet``, ``valid.parquet`` and
``test.parquet`` (columns ``image``: the raw uint8 pixels, channel-first, and ``label``: int16)
and ``images.json`` (shape, classes, counts, per-channel mean and std of the training split).
As for text, ``images.json`` is written last and marks the folder complete; every file is written
atomically. The validation split is ``data.valid_fraction`` of the training images, chosen with a
fixed seed (part of the content hash), so every run of the same data validates on the same images.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import torch

from ...io import datacache, storage
from ...io.datacache import data_error, read_data_file
from ...paths import VENDORED_DATA
from ...spec.errors import JobSpecError
from ..base import DataFile
from .spec import ImageJob

SCHEMA_VERSION = 1
MANIFEST = "images.json"
SPLITS = ("train", "valid", "test")
IDX_FIELDS = ("train_images", "train_labels", "test_images", "test_labels")
MNIST_DIR = VENDORED_DATA / "mnist"
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian's dataset-fashion-mnist
MNIST_TEST_TRAIN = 8000  # mnist-test: images [0, 8000) train, [8000, 10000) test (data/mnist/PROVENANCE.md)
VALID_SEED = 1234


@dataclass(frozen=True)
class PreparedImages:
    root: str
    content_hash: str
    shape: tuple[int, int, int]  # (channels, height, width)
    num_classes: int
    counts: dict[str, int]
    mean: list[float]  # per channel, of the training split, pixels scaled to [0, 1]
    std: list[float]
    manifest: str = MANIFEST

    def summary(self) -> str:
        c, h, w = self.shape
        return (
            f"{self.counts['train']:,} train / {self.counts['valid']:,} valid / {self.counts['test']:,} test "
            f"images {c}x{h}x{w}, {self.num_classes} classes, hash {self.content_hash[:12]}"
        )


def data_files(spec: ImageJob) -> list[DataFile]:
    """The user files the job reads: four idx files or CIFAR-10's six batches (none for built-ins)."""
    d = spec.data
    if d.dataset is not None:
        return []
    if d.format == "cifar10":
        assert d.cifar10 is not None
        return [
            DataFile("data.cifar10", storage.join(d.cifar10, name), False)
            for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        ]
    return [DataFile(f"data.{k}", getattr(d, k), False) for k in IDX_FIELDS]


def source_name(spec: ImageJob) -> str:
    d = spec.data
    return str(d.dataset or d.train_images or d.cifar10)


def parse_idx(raw: bytes, field: str, uri: str, images: bool) -> np.ndarray:
    """An idx file's array: images (N, H, W) uint8 or labels (N,) uint8; errors name the file."""
    want = 3 if images else 1
    if len(raw) < 4 + 4 * want or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != want:
        found = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise data_error(
            field,
            f"expected an idx {'images (magic 00000803)' if images else 'labels (magic 00000801)'} "
            f"file of unsigned bytes, found header {found} in {uri}",
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(want)]
    body = raw[4 + 4 * want :]
    expected = int(np.prod(dims))
    if len(body) != expected:
        raise data_error(
            field,
            f"{uri}: header says {'x'.join(map(str, dims))} = {expected:,} bytes of data, "
            f"found {len(body):,} (truncated or not an idx file)",
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _idx_pair(images_field: str, images_uri: str, labels_field: str, labels_uri: str) -> tuple[np.ndarray, np.ndarray]:
    x = parse_idx(read_data_file(images_field, images_uri), images_field, images_uri, images=True)
    y = parse_idx(read_data_file(labels_field, labels_uri), labels_field, labels_uri, images=False)
    if len(x) != len(y):
        raise data_error(
            labels_field,
            f"{labels_uri} has {len(y):,} labels but {images_uri} ({images_field}) has "
            f"{len(x):,} images: they must be aligned",
        )
    return x[:, None], y  # channel-first (N, 1, H, W)


def _cifar10(folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        uri = storage.join(folder, name)
        try:
            d = pickle.loads(read_data_file("data.cifar10", uri), encoding="bytes")
            x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(d[b"labels"], dtype=np.uint8)
        except JobSpecError:
            raise
        except Exception as e:  # noqa: BLE001 - any unpickling / shape problem
            raise data_error(
                "data.cifar10",
                f"{uri}: expected a CIFAR-10 python batch (dict with data 10000x3072, "
                f"labels), found a problem: {type(e).__name__}: {e}",
            ) from None
        return x, y

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = batch("test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), test_x, test_y


def _fashion_mnist_dir() -> str:
    """The folder of Fashion-MNIST's idx files: FASHION_MNIST_DIR, else Debian's package."""
    candidates = [os.environ["FASHION_MNIST_DIR"]] if os.environ.get("FASHION_MNIST_DIR") else list(FASHION_MNIST_DIRS)
    for folder in candidates:
        if Path(folder, "train-images-idx3-ubyte.gz").is_file():
            return folder
    raise data_error(
        "data.dataset",
        f"fashion-mnist: expected its idx files in {' or '.join(candidates)}, found "
        "none; install them with `apt-get install dataset-fashion-mnist` (Debian) or "
        "point FASHION_MNIST_DIR at a folder holding train-images-idx3-ubyte.gz etc.",
    )


def load_arrays(spec: ImageJob) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(name, {"train": (x, y), "test": (x, y)}) with x (N, C, H, W) uint8, y (N,) uint8."""
    d = spec.data
    if d.dataset == "mnist-test":
        x, y = _idx_pair(
            "data.dataset",
            str(MNIST_DIR / "t10k-images-idx3-ubyte.gz"),
            "data.dataset",
            str(MNIST_DIR / "t10k-labels-idx1-ubyte.gz"),
        )
        n = MNIST_TEST_TRAIN
        return "mnist-test", {"train": (x[:n], y[:n]), "test": (x[n:], y[n:])}
    if d.dataset == "fashion-mnist":
        folder = _fashion_mnist_dir()
        train = _idx_pair(
            "data.dataset",
            f"{folder}/train-images-idx3-ubyte.gz",
            "data.dataset",
            f"{folder}/train-labels-idx1-ubyte.gz",
        )
        test = _idx_pair(
            "data.dataset", f"{folder}/t10k-images-idx3-ubyte.gz", "data.dataset", f"{folder}/t10k-labels-idx1-ubyte.gz"
        )
        return "fashion-mnist", {"train": train, "test": test}
    if d.format == "cifar10":
        assert d.cifar10 is not None
        tx, ty, vx, vy = _cifar10(d.cifar10)
        return "cifar10", {"train": (tx, ty), "test": (vx, vy)}
    assert d.train_images and d.train_labels and d.test_images and d.test_labels
    train = _idx_pair("data.train_images", d.train_images, "data.train_labels", d.train_labels)
    test = _idx_pair("data.test_images", d.test_images, "data.test_labels", d.test_labels)
    if train[0].shape[1:] != test[0].shape[1:]:
        raise data_error(
            "data.test_images",
            f"images are {'x'.join(map(str, test[0].shape[2:]))}, the training images "
            f"{'x'.join(map(str, train[0].shape[2:]))}: they must have the same size",
        )
    return "idx", {"train": train, "test": test}


def _table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    flat = x.reshape(len(x), -1)
    images = pa.array([row.tobytes() for row in flat], type=pa.binary(flat.shape[1]))
    return pa.table({"image": images, "label": pa.array(y.astype(np.int16))})


def prepare_images(spec: ImageJob, cache_root: str) -> PreparedImages:
    """The prepared form of ``spec.data`` under ``cache_root`` (local or s3://), built if missing."""
    name, arrays = load_arrays(spec)
    h = hashlib.sha256(
        f"schema={SCHEMA_VERSION}\nvalid_fraction={spec.data.valid_fraction}\nvalid_seed={VALID_SEED}\n".encode()
    )
    for split, (x, y) in arrays.items():
        h.update(f"{split} {x.shape} {y.shape}\n".encode() + x.tobytes() + y.tobytes())
    content_hash = h.hexdigest()
    root = datacache.prepared_folder(cache_root, name, content_hash)
    if datacache.is_complete(root, MANIFEST):
        return load_prepared(root)

    train_x, train_y = arrays["train"]
    for split, least in (("train", 2), ("test", 1)):  # train: one to train on, one to validate on
        if len(arrays[split][0]) < least:
            field = "data.cifar10" if spec.data.format == "cifar10" else f"data.{split}_images"
            raise data_error(field, f"expected at least {least} {split} images, found {len(arrays[split][0])}")
    order = np.random.default_rng(VALID_SEED).permutation(len(train_x))
    n_valid = max(1, int(round(len(train_x) * spec.data.valid_fraction)))
    valid_idx, train_idx = np.sort(order[:n_valid]), np.sort(order[n_valid:])
    splits = {
        "train": (train_x[train_idx], train_y[train_idx]),
        "valid": (train_x[valid_idx], train_y[valid_idx]),
        "test": arrays["test"],
    }
    num_classes = int(max(int(y.max()) for _, y in splits.values())) + 1
    pixels = splits["train"][0].astype(np.float64) / 255.0
    mean = pixels.mean(axis=(0, 2, 3)).tolist()
    std = pixels.std(axis=(0, 2, 3)).tolist()
    for split, (x, y) in splits.items():
        datacache.write_parquet(storage.join(root, f"{split}.parquet"), _table(x, y))
    meta = {
        "schema_version": SCHEMA_VERSION,
        "content_hash": content_hash,
        "name": name,
        "shape": list(train_x.shape[1:]),
        "num_classes": num_classes,
        "counts": {split: int(len(y)) for split, (_, y) in splits.items()},
        "mean": mean,
        "std": std,
        "valid": f"{n_valid} of the {len(train_x)} training images, seed {VALID_SEED}",
    }
    datacache.write_manifest(root, MANIFEST, meta)
    return load_prepared(root)


def load_prepared(root: str) -> PreparedImages:
    meta = datacache.read_manifest(root, MANIFEST, SCHEMA_VERSION, "image")
    return PreparedImages(
        root,
        meta["content_hash"],
        tuple(meta["shape"]),
        int(meta["num_classes"]),
        dict(meta["counts"]),
        list(meta["mean"]),
        list(meta["std"]),
    )


def load_split(prepared: PreparedImages, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split: images (N, C, H, W) uint8 and labels (N,) int64."""
    import torch  # deferred: reading a spec's files (preflight) needs no torch

    table = datacache.read_parquet(storage.join(prepared.root, f"{split}.parquet"))
    flat = np.frombuffer(b"".join(table.column("image").to_pylist()), dtype=np.uint8)
    x = torch.from_numpy(flat.reshape(len(table), *prepared.shape).copy())
    y = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    return x, y


def check_prepared(spec: ImageJob, prepared: PreparedImages) -> list[str]:
    """What the worker loop needs of the prepared images: a full step's batch (``data.batch_size x
    train.accumulate_steps``) after the validation images are held out (preparation refuses empty
    splits)."""
    c, d = prepared.counts, spec.data
    (batch, fields), problems = spec.step_batch(), []
    if c["train"] < batch:
        problems.append(
            f"{fields}: {batch} images per batch, but the training split has {c['train']:,} "
            f"after data.valid_fraction = {d.valid_fraction} of it is held out for validation"
        )
    return problems


__all__ = [
    "PreparedImages",
    "check_prepared",
    "data_files",
    "load_arrays",
    "load_prepared",
    "load_split",
    "parse_idx",
    "prepare_images",
    "source_name",
]
