"""Checkpoint integrity (service/worker/checkpoint.py): every rank lists the size and SHA-256 of
the files it wrote; loading verifies them; a truncated or altered latest checkpoint on a real S3
server (SeaweedFS) is reported and the previous one is used (``load_intact``, what
``Worker.restore`` calls with Ray's latest checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from service.io import storage
from service.worker import checkpoint as ckpt
from service.worker.worker import load_intact

WORLD = 2


def write_checkpoint(folder: Path, step: int) -> None:
    """A 2-rank checkpoint as Ray assembles it: every rank's files in one folder."""
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters())
    for rank in range(WORLD):
        ckpt.save(
            folder, rank, ckpt.Position(step=step), None, model=model, optimizer=optimizer, meta={"world_size": WORLD}
        )


def loader(rank: int = 1):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters())
    return lambda folder: ckpt.load(folder, rank, WORLD, model, optimizer, torch.device("cpu"))


def test_every_file_is_listed_and_verified(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, 10)
    listed = {name for r in range(WORLD) for name in json.loads((tmp_path / ckpt.files_file(r)).read_text())["files"]}
    assert listed == {"model.pt", "optimizer.pt", "meta.json", "rank_0.pt", "rank_1.pt"}
    assert ckpt.verify(tmp_path) == []
    assert loader()(str(tmp_path)).position.step == 10

    model = tmp_path / "model.pt"
    body = model.read_bytes()
    model.write_bytes(body[:-100])
    assert ckpt.verify(tmp_path) == [f"model.pt has {len(body) - 100:,} bytes, {len(body):,} were written"]
    model.write_bytes(body[:50] + bytes([body[50] ^ 1]) + body[51:])
    assert ckpt.verify(tmp_path) == ["model.pt has another SHA-256 than the one written"]
    model.write_bytes(body)
    (tmp_path / "rank_1.pt").unlink()
    (tmp_path / ckpt.files_file(0)).unlink()
    assert ckpt.verify(tmp_path) == [
        "files_rank_0.json missing (rank 0's files cannot be checked)",
        "rank_1.pt missing",
    ]
    with pytest.raises(ckpt.CorruptCheckpointError, match="rank_1.pt missing"):
        loader()(str(tmp_path))
    (tmp_path / "meta.json").write_text('{"world_size": 2, "step"')
    assert ckpt.verify(tmp_path) == ["meta.json is not valid JSON (truncated?)"]


def test_a_checkpoint_without_lists_still_loads(tmp_path: Path) -> None:
    """Checkpoints written before files were listed resume as before."""
    write_checkpoint(tmp_path, 10)
    meta = json.loads((tmp_path / "meta.json").read_text())
    del meta["files_listed"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    for r in range(WORLD):
        (tmp_path / ckpt.files_file(r)).unlink()
    assert ckpt.verify(tmp_path) == [] and loader()(str(tmp_path)).position.step == 10


def test_corrupt_latest_checkpoint_on_s3_falls_back_to_the_previous(tmp_path: Path, s3_prefix: str) -> None:
    import ray.train

    run = storage.join(s3_prefix, "job")
    fs, root = storage.filesystem_for(run)
    for step in (10, 20, 30):
        local = tmp_path / f"checkpoint_{step:08d}"
        write_checkpoint(local, step)
        pafs.copy_files(str(local), f"{root}/{local.name}", destination_filesystem=fs)
    latest = f"{root}/checkpoint_00000030"
    body = storage.read_bytes(f"{run}/checkpoint_00000030/optimizer.pt")  # an upload cut short
    storage.write_bytes_atomic(f"{run}/checkpoint_00000030/optimizer.pt", body[: len(body) // 2])

    said: list[str] = []
    restored = load_intact(ray.train.Checkpoint(latest, fs), loader(), said.append)
    assert restored.position.step == 20
    assert len(said) == 1 and said[0].startswith(f"checkpoint {latest}: ")
    assert f"optimizer.pt has {len(body) // 2:,} bytes, {len(body):,} were written" in said[0]

    for step in (20, 10):  # nothing intact left: an error naming the folder
        storage.delete(f"{run}/checkpoint_{step:08d}/model.pt")
    with pytest.raises(ckpt.CorruptCheckpointError, match="no intact checkpoint in"):
        load_intact(ray.train.Checkpoint(latest, fs), loader(), said.append)
