"""The handwriting task's data (service/tasks/handwriting/data.py): the built-in strokes, stroke-3
.npz files and IAM-OnDB lineStrokes trees (generated here in its schema), prepared, cached and
loaded, locally and on S3; bad input named by field, file and item, with nothing left written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from service.io import storage
from service.spec.errors import JobSpecError
from service.spec.loading import validate_job
from service.tasks.handwriting.data import HANZI, load_prepared, load_split, prepare_strokes


def job(**data: object):
    return validate_job({"name": "t", "task": "handwriting", "train": {"max_steps": 1}, "data": data})


def write_npz(path: Path, **splits: list[np.ndarray]) -> str:
    arrays = {}
    for split, seqs in splits.items():
        arr = np.empty(len(seqs), dtype=object)
        arr[:] = seqs
        arrays[split] = arr
    np.savez_compressed(path, **arrays)
    return str(path)


def seq(n: int, rng: np.random.Generator, scale: float = 10.0) -> np.ndarray:
    rows = np.zeros((n, 3), dtype=np.int16)
    rows[:, :2] = rng.normal(0, scale, (n, 2)).round()
    rows[n // 2, 2] = rows[-1, 2] = 1
    return rows


# ---- IAM-OnDB lineStrokes, in its schema ----------------------------------------------------------

HEADER = """<?xml version="1.0" encoding="ISO-8859-1"?>
<WhiteboardCaptureSession>
  <WhiteboardDescription>
    <SensorLocation corner="top_left"/>
    <DiagonallyOppositeCoords x="6512" y="1376"/>
    <VerticallyOppositeCoords x="966" y="1376"/>
    <HorizontallyOppositeCoords x="6512" y="787"/>
  </WhiteboardDescription>
  <StrokeSet>
"""


def line_xml(strokes: list[list[tuple[str, str]]]) -> str:
    body = []
    for k, stroke in enumerate(strokes):
        body.append(f'    <Stroke colour="black" start_time="{k}.0" end_time="{k}.5">')
        body += [f'      <Point x="{x}" y="{y}" time="{k}.{i:02d}"/>' for i, (x, y) in enumerate(stroke)]
        body.append("    </Stroke>")
    return HEADER + "\n".join(body) + "\n  </StrokeSet>\n</WhiteboardCaptureSession>\n"


def iam_tree(root: Path, forms: dict[str, int]) -> Path:
    """``lineStrokes/<a01>/<a01-000>/<a01-000u>-NN.xml``: ``forms`` maps a form id to its line count;
    each line has two strokes of 3 points."""
    rng = np.random.default_rng(0)
    for form, lines in forms.items():
        folder = root / "lineStrokes" / form[:3] / form[:7]
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, lines + 1):
            pts = rng.integers(500, 3000, size=(6, 2))
            strokes = [[(str(x), str(y)) for x, y in pts[:3]], [(str(x), str(y)) for x, y in pts[3:]]]
            (folder / f"{form}-{n:02d}.xml").write_text(line_xml(strokes), encoding="ISO-8859-1")
    return root / "lineStrokes"


def nothing_written(cache: Path) -> bool:
    return not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


# ---- the built-in strokes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hanzi(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    return cache, prepare_strokes(job(), cache)


def test_builtin_strokes_prepared(hanzi) -> None:
    cache, prepared = hanzi
    assert prepared.splits == {"train": 8616, "valid": 479, "test": 479}
    assert os.path.basename(prepared.root) == f"hanzi-medians-{prepared.content_hash[:16]}"
    assert sorted(os.listdir(prepared.root)) == ["strokes.json", "test.parquet", "train.parquet", "valid.parquet"]
    raw = np.load(HANZI, allow_pickle=True)
    train = load_split(prepared, "train")
    assert len(train) == 8616
    offsets = np.concatenate([s.numpy() for s in train])[:, :2].astype(np.float64)
    np.testing.assert_allclose(offsets.std(axis=0), [1.0, 1.0], rtol=1e-4)  # normalised on train
    for split in ("train", "valid", "test"):
        got = load_split(prepared, split)[3].numpy()
        want = raw[split][3].astype(np.float64)
        np.testing.assert_allclose(got[:, :2] * prepared.scale, want[:, :2], rtol=1e-5, atol=1e-3)
        assert np.array_equal(got[:, 2], want[:, 2])
    assert load_prepared(prepared.root) == prepared


def test_second_prepare_hits_the_cache(hanzi) -> None:
    cache, prepared = hanzi
    files = [os.path.join(prepared.root, name) for name in os.listdir(prepared.root)]
    before = {f: os.stat(f).st_mtime_ns for f in files}
    assert prepare_strokes(job(), cache) == prepared
    assert {f: os.stat(f).st_mtime_ns for f in files} == before
    assert os.listdir(cache) == [os.path.basename(prepared.root)]


# ---- stroke-3 .npz ------------------------------------------------------------------------------


def test_user_npz_prepared_and_incomplete_folder_rebuilt(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = write_npz(tmp_path / "s.npz", train=[seq(20, rng), seq(7, rng)], valid=[seq(5, rng)])
    spec = job(dataset=None, path=path)
    prepared = prepare_strokes(spec, str(tmp_path / "cache"))
    assert prepared.splits == {"train": 2, "valid": 1} and not prepared.has_split("test")
    assert os.path.basename(prepared.root).startswith("stroke3-")
    os.remove(os.path.join(prepared.root, "strokes.json"))
    Path(prepared.root, "train.parquet").write_bytes(b"truncated")  # as if a preparer died midway
    assert prepare_strokes(spec, str(tmp_path / "cache")) == prepared
    assert [len(s) for s in load_split(prepared, "train")] == [20, 7]
    with pytest.raises(FileNotFoundError, match="no 'test' split"):
        load_split(prepared, "test")
    # a changed file is a new folder
    write_npz(tmp_path / "s.npz", train=[seq(20, rng), seq(8, rng)], valid=[seq(5, rng)])
    assert prepare_strokes(spec, str(tmp_path / "cache")).root != prepared.root


def npz_error(tmp_path: Path, **kwargs: object) -> str:
    cache = tmp_path / "cache"
    with pytest.raises(JobSpecError) as err:
        prepare_strokes(job(dataset=None, **kwargs), str(cache))
    assert nothing_written(cache)
    return str(err.value)


def test_npz_without_the_keys(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = write_npz(tmp_path / "s.npz", training=[seq(4, rng)], valid=[seq(4, rng)])
    msg = npz_error(tmp_path, path=path)
    assert "data.path" in msg and path in msg and "missing ['train']" in msg and "'training'" in msg


def test_npz_bad_items_are_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    nan = seq(6, rng).astype(np.float32)
    nan[4, 1] = np.nan
    path = write_npz(tmp_path / "nan.npz", train=[seq(4, rng)], valid=[seq(4, rng), nan])
    msg = npz_error(tmp_path, path=path)
    assert f"{path}: valid[1]: non-finite value in point 4" in msg
    path = write_npz(tmp_path / "long.npz", train=[seq(4, rng), seq(50, rng)], valid=[seq(4, rng)])
    msg = npz_error(tmp_path, path=path, max_points=40)
    assert f"{path}: train[1]: 50 points, more than data.max_points = 40" in msg
    path = write_npz(tmp_path / "empty.npz", train=[seq(4, rng), np.zeros((0, 3))], valid=[seq(4, rng)])
    assert f"{path}: train[1]: empty sequence" in npz_error(tmp_path, path=path)
    pen = seq(4, rng)
    pen[2, 2] = 2
    path = write_npz(tmp_path / "pen.npz", train=[pen], valid=[seq(4, rng)])
    assert "train[0]: pen_lifted must be 0 or 1, found 2 in point 2" in npz_error(tmp_path, path=path)
    (tmp_path / "text.npz").write_text("not a zip")
    assert "not a readable .npz" in npz_error(tmp_path, path=str(tmp_path / "text.npz"))


# ---- IAM-OnDB -----------------------------------------------------------------------------------


def test_iam_ondb_tree_with_id_lists(tmp_path: Path) -> None:
    tree = iam_tree(tmp_path, {"a01-000u": 3, "a01-001w": 2, "b02-010": 2, "c03-020z": 1})
    (tmp_path / "testset_v.txt").write_bytes(b"\xef\xbb\xbfb02-010\r\n")  # a BOM and CRLF: read alike
    (tmp_path / "testset_f.txt").write_text("c03-020z\n\n")
    spec = job(
        dataset=None,
        format="iam-ondb",
        path=str(tree),
        valid_list=str(tmp_path / "testset_v.txt"),
        test_list=str(tmp_path / "testset_f.txt"),
    )
    prepared = prepare_strokes(spec, str(tmp_path / "cache"))
    assert prepared.splits == {"train": 5, "valid": 2, "test": 1}
    import pyarrow.parquet as pq

    names = pq.read_table(os.path.join(prepared.root, "valid.parquet")).column("name").to_pylist()
    assert names == ["b02-010-01", "b02-010-02"]
    # offsets of one line by hand: 6 points, the first is the origin; pen lifted after points 2 and 5
    import xml.etree.ElementTree as ET

    first = tree / "b02" / "b02-010" / "b02-010-01.xml"
    pts = np.array([[float(p.get("x")), float(p.get("y"))] for p in ET.parse(first).iter("Point")])
    want = np.column_stack([np.clip(np.diff(pts, axis=0), -500, 500), [0, 1, 0, 0, 1]])
    got = load_split(prepared, "valid")[0].numpy().astype(np.float64)
    np.testing.assert_allclose(got[:, :2] * prepared.scale, want[:, :2], rtol=1e-5)
    assert np.array_equal(got[:, 2], want[:, 2])
    assert np.abs(want[:, :2]).max() == 500  # the long-jump clip was applied (raw jumps reach 2,500)


def test_iam_ondb_seeded_fraction(tmp_path: Path) -> None:
    tree = iam_tree(tmp_path, {"a01-000u": 10, "a02-000u": 10})
    spec = job(dataset=None, format="iam-ondb", path=str(tree), valid_fraction=0.1, test_fraction=0.1)
    prepared = prepare_strokes(spec, str(tmp_path / "cache"))
    assert prepared.splits == {"train": 16, "valid": 2, "test": 2}
    assert prepare_strokes(spec, str(tmp_path / "cache2")).content_hash == prepared.content_hash


@pytest.mark.parametrize(
    "content, message",
    [
        ("<WhiteboardCaptureSession><StrokeSet><Stroke>", "malformed XML"),
        (HEADER + "  </StrokeSet>\n</WhiteboardCaptureSession>\n", "no strokes"),
        (line_xml([[("1", "2"), ("3", "4")], []]), "stroke 1 is empty"),
        (line_xml([[("1", "2"), ("nan", "4")]]), "stroke 0 point 1: non-finite coordinate"),
        (line_xml([[("1", "2"), ("x", "4")]]), "stroke 0 point 1: expected numeric x and y"),
    ],
    ids=["malformed", "no-strokes", "empty-stroke", "nan", "not-a-number"],
)
def test_iam_ondb_bad_file_is_named(tmp_path: Path, content: str, message: str) -> None:
    tree = iam_tree(tmp_path, {"a01-000u": 4})
    bad = tree / "a01" / "a01-000" / "a01-000u-03.xml"
    bad.write_text(content)
    cache = tmp_path / "cache"
    with pytest.raises(JobSpecError) as err:
        prepare_strokes(job(dataset=None, format="iam-ondb", path=str(tree)), str(cache))
    assert f"data.path: {bad}: {message}" in str(err.value)
    assert nothing_written(cache)


def test_iam_ondb_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "lineStrokes").mkdir()
    with pytest.raises(JobSpecError, match="no .xml files"):
        prepare_strokes(job(dataset=None, format="iam-ondb", path=str(tmp_path / "lineStrokes")), str(tmp_path / "c"))


def test_spec_rejects_mixed_sources() -> None:
    with pytest.raises(JobSpecError, match="either data.dataset"):
        job(dataset="hanzi-medians", path="x.npz")
    assert job(path="x.npz").data.dataset is None  # own strokes without dataset: the default gives way
    with pytest.raises(JobSpecError, match="own strokes need data.path"):
        job(dataset=None)
    with pytest.raises(JobSpecError, match="iam-ondb only"):
        job(dataset=None, path="x.npz", valid_list="v.txt")


# ---- S3 -----------------------------------------------------------------------------------------


def test_npz_and_iam_tree_on_s3(tmp_path: Path, s3_prefix: str) -> None:
    rng = np.random.default_rng(4)
    local = write_npz(tmp_path / "s.npz", train=[seq(9, rng), seq(5, rng)], valid=[seq(6, rng)], test=[seq(3, rng)])
    npz_uri = storage.join(s3_prefix, "s.npz")
    storage.write_bytes_atomic(npz_uri, Path(local).read_bytes())
    prepared = prepare_strokes(job(dataset=None, path=npz_uri), storage.join(s3_prefix, "cache"))
    assert prepared.root.startswith(s3_prefix + "/cache/stroke3-")
    assert [len(s) for s in load_split(load_prepared(prepared.root), "test")] == [3]

    tree = iam_tree(tmp_path, {"a01-000u": 3, "b01-000u": 2})
    for path in tree.rglob("*.xml"):
        storage.write_bytes_atomic(
            storage.join(s3_prefix, "lineStrokes", str(path.relative_to(tree))), path.read_bytes()
        )
    storage.write_bytes_atomic(storage.join(s3_prefix, "v.txt"), b"b01-000u\n")
    spec = job(
        dataset=None,
        format="iam-ondb",
        path=storage.join(s3_prefix, "lineStrokes"),
        valid_list=storage.join(s3_prefix, "v.txt"),
    )
    assert prepare_strokes(spec, storage.join(s3_prefix, "cache")).splits == {"train": 3, "valid": 2}


def test_evaluate_gives_the_log_loss_the_prepared_split_gives(tmp_path: Path, capsys) -> None:
    """``hyperctl evaluate CHECKPOINT --strokes FILE.npz --split valid`` clips and scales the offsets as
    preparation did: the same log-loss as the job's prepared valid split."""
    import torch

    from hypermodels import log_loss
    from service.cli import main
    from service.tasks.handwriting.model import build_model
    from service.worker import checkpoint as ckpt

    rng = np.random.default_rng(0)
    path = write_npz(tmp_path / "s.npz", train=[seq(20, rng), seq(30, rng)], valid=[seq(9, rng), seq(12, rng)])
    raw = {"name": "hw", "task": "handwriting", "train": {"max_steps": 1}, "storage": str(tmp_path / "runs")}
    raw |= {"data": {"dataset": None, "format": "stroke3", "path": path, "clip_offset": 15.0, "batch_size": 2}}
    raw |= {"model": {"hidden_size": 16, "num_mixtures": 3, "hyper": {"hidden_size": 8, "embed_size": 4}}}
    spec = validate_job(raw)
    prepared = prepare_strokes(spec, str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    folder = tmp_path / "checkpoint_00000001"
    meta = {"spec": spec.model_dump(mode="json"), "world_size": 1, "data_root": prepared.root}
    ckpt.save(
        folder, 0, ckpt.Position(step=1), None, model=model, optimizer=torch.optim.Adam(model.parameters()), meta=meta
    )
    want, per_point = log_loss(model, load_split(prepared, "valid"), spec.data.eval_batch_size)
    assert main(["evaluate", str(folder), "--strokes", path, "--split", "valid"]) == 0
    out = capsys.readouterr().out
    assert float(out.split("eval/s/nll ")[1].split()[0]) == pytest.approx(want, rel=1e-5)
    assert float(out.split("eval/s/nll_per_point ")[1].split()[0]) == pytest.approx(per_point, rel=1e-5)
    assert main(["evaluate", str(folder), "--split", "valid"]) == 0  # the job's own data
    assert float(capsys.readouterr().out.split("eval/valid/nll ")[1].split()[0]) == pytest.approx(want, rel=1e-5)
    assert main(["evaluate", str(folder), "--strokes", path]) == 2  # default split test: this file has none
    assert f"--split: {path} has no 'test' split (it has train, valid)" in capsys.readouterr().err
