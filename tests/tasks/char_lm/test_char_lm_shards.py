"""The char LM's sharded data (service/tasks/char_lm/{data,streams}.py): a worker's streams read from
shards equal the streams sliced from the whole split; streamed evaluation equals the whole-split
one; enwik8 from a synthetic stand-in (plain and zipped) splits 90/5/5 with a whole-file byte
vocabulary; broken inputs are named with their offset; an unfinished folder is prepared again."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hypermodels import CharLM, stream_batches
from hypermodels import bits_per_char as whole_split_bpc
from service.io import text
from service.spec.errors import JobSpecError
from service.spec.loading import validate_job
from service.tasks.char_lm.data import ENWIK8_CUTS, load_split, open_split, prepare_text
from service.tasks.char_lm.streams import Streams, bits_per_char
from service.tasks.char_lm.synthetic import write_standin

SMALL = {"piece_bytes": 1500, "rows_per_group": 64}  # many shards and row groups from a small corpus
STANDIN = {"piece_bytes": 200_000, "rows_per_group": 4096}  # the 2 MB stand-in in 10 + 1 + 1 shards


def job(**data) -> object:
    return validate_job({"name": "t", "train": {"max_steps": 1}, "data": data})


def user_corpus(folder: Path, train: str, valid: str = "abc\n") -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text(train, encoding="utf-8")
    (folder / "valid.txt").write_text(valid, encoding="utf-8")
    return {"train": str(folder / "train.txt"), "valid": str(folder / "valid.txt")}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A 10,007-character corpus (multi-byte characters too) as 7+ shards of 64-id row groups."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    alphabet = list("abcdefgh ijkl\n") + ["é", "中"]
    train = "".join(rng.choice(alphabet, 10_007))
    spec = job(dataset=None, **user_corpus(folder, train, valid="abc é\n"))
    prepared = prepare_text(spec, str(folder / "cache"), **SMALL)
    return prepared, train


def test_shards_hold_the_corpus(sharded) -> None:
    prepared, train = sharded
    meta = prepared._meta()
    assert len(meta["shards"]["train"]["files"]) >= 7 and meta["shards"]["train"]["rows_per_group"] == 64
    ids = load_split(prepared, "train")
    assert "".join(prepared.vocab[i] for i in ids.tolist()) == train


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("batch, accumulate, seq_len, window", [(6, 1, 7, 40), (6, 2, 5, 64), (12, 1, 100, 2048)])
def test_worker_streams_equal_the_whole_split_sliced(sharded, world, batch, accumulate, seq_len, window) -> None:
    """The loop's layout before sharding (tests the slicing it replaced): rank r of W holds columns
    [r*b*k, (r+1)*b*k) of stream_batches(all ids, B*k); 10,006 targets do not divide by 6 or 12."""
    prepared, _ = sharded
    all_ids = load_split(prepared, "train")
    inputs, targets = stream_batches(all_ids, batch * accumulate, pad_id=-100)
    b, k = batch // world, accumulate
    for rank in range(world):
        cols = slice(rank * b * k, (rank + 1) * b * k)
        streams = Streams(open_split(prepared, "train"), batch * k, rank * b * k, b * k, seq_len, window=window)
        assert streams.segments == -(-inputs.shape[0] // seq_len)
        order = list(range(streams.segments))
        order = order[len(order) // 2 :] + order[: len(order) // 2]  # a resumed epoch starts mid-way
        for i in order:
            x, y = streams.segment(i)
            rows = slice(i * seq_len, (i + 1) * seq_len)
            assert torch.equal(x, inputs[rows, cols]) and torch.equal(y, targets[rows, cols]), (rank, i)


def test_streams_past_the_end_are_padding(tmp_path) -> None:
    """20 ids in 6 streams of 4: the last stream starts past the 19 inputs and is all padding."""
    spec = job(dataset=None, **user_corpus(tmp_path, "abcdefghijklmnopqrst", valid="abc"))
    prepared = prepare_text(spec, str(tmp_path / "cache"))
    inputs, targets = stream_batches(load_split(prepared, "train"), 6)
    x, y = Streams(open_split(prepared, "train"), 6, 0, 6, 4).segment(0)
    assert torch.equal(x, inputs) and torch.equal(y, targets) and (y[:, 5] == -100).all()


@pytest.mark.parametrize("num_ids", [1001, 301])
def test_streamed_bpc_equals_the_whole_split(sharded, num_ids) -> None:
    prepared, _ = sharded
    torch.manual_seed(0)
    model = CharLM(len(prepared.vocab), "lstm", 16)
    ids = load_split(prepared, "train")[:num_ids]
    want = whole_split_bpc(model, ids, batch_size=5, seq_len=9)
    assert bits_per_char(model, open_split(prepared, "train"), 5, 9, num_ids=num_ids) == want


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    """A 2 MB enwik8-shaped file; the byte 0xff (never in UTF-8) appears only in its last 5%."""
    path = tmp_path_factory.mktemp("enwik8") / "enwik8"
    write_standin(path, 2_000_000)
    data = bytearray(path.read_bytes())
    data[-10] = 0xFF
    path.write_bytes(bytes(data))
    return path


def test_enwik8_standin_splits_90_5_5(standin, tmp_path) -> None:
    data = standin.read_bytes()
    with text.collect_notes() as notes:
        prepared = prepare_text(job(dataset="enwik8", path=str(standin)), str(tmp_path), **STANDIN)
    assert notes == [
        f"data.path: {standin} holds 2,000,000 bytes, not the real enwik8's 100,000,000; "
        "split at bytes 1,800,000 and 1,900,000 (90/5/5)"
    ]
    counts = prepared._meta()["splits"]
    assert counts == {"train": 1_800_000, "valid": 100_000, "test": 100_000}
    assert ENWIK8_CUTS == (90, 95)  # 90,000,000 / 5,000,000 / 5,000,000 of the real 10^8-byte file
    # The vocabulary: every distinct byte of the whole file, the one seen only in the test split too.
    assert prepared.kind == "bytes" and [ord(s) for s in prepared.vocab] == sorted(set(data))
    assert chr(0xFF) in prepared.vocab and 0xFF not in data[:1_900_000]
    got = b"".join(bytes(ord(prepared.vocab[i]) for i in load_split(prepared, s).tolist()) for s in counts)
    assert got == data
    assert "enwik8.extracted" not in os.listdir(prepared.root)


def test_enwik8_zip_gives_the_same_ids(standin, tmp_path) -> None:
    zipped = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(standin, "enwik8")
    plain = prepare_text(job(dataset="enwik8", path=str(standin)), str(tmp_path / "a"))
    from_zip = prepare_text(job(dataset="enwik8", path=str(zipped)), str(tmp_path / "b"))
    assert from_zip.vocab == plain.vocab
    for split in ("train", "valid", "test"):
        assert torch.equal(load_split(from_zip, split), load_split(plain, split))
    assert sorted(os.listdir(from_zip.root))[-1] == "vocab.json" and "enwik8.extracted" not in os.listdir(from_zip.root)

    zipped.write_bytes(zipped.read_bytes()[: zipped.stat().st_size // 2])  # truncated download
    with pytest.raises(JobSpecError, match=r"data.path: .*enwik8.zip starts like a zip file but is not a readable"):
        prepare_text(job(dataset="enwik8", path=str(zipped)), str(tmp_path / "c"))


def test_enwik8_needs_its_path() -> None:
    with pytest.raises(JobSpecError, match="data.dataset enwik8 needs data.path"):
        job(dataset="enwik8")
    with pytest.raises(JobSpecError, match="data.path is read only with data.dataset: enwik8"):
        job(dataset="ptb-char", path="x")


def test_bad_utf8_is_named_by_its_offset(tmp_path) -> None:
    text = ("line of text\n" * 400).encode()
    paths = user_corpus(tmp_path, "")
    Path(paths["train"]).write_bytes(text[:4000] + b"\xc3(" + text[4000:])  # an invalid sequence in piece 3
    with pytest.raises(
        JobSpecError, match=r"data.train: .*train.txt: expected UTF-8 text, found byte 0xc3 at offset 4000"
    ):
        prepare_text(job(dataset=None, **paths), str(tmp_path / "cache"), **SMALL)
    Path(paths["train"]).write_bytes(text + "é".encode()[:1])  # cut inside its last character
    with pytest.raises(
        JobSpecError, match=rf"byte 0xc3 at offset {len(text)} .*ends inside a character: is it truncated"
    ):
        prepare_text(job(dataset=None, **paths), str(tmp_path / "cache"), **SMALL)


def test_line_endings_mixed_across_pieces_are_refused(tmp_path) -> None:
    """Pieces of 1,500 bytes are cut after a newline: at 1,504, 3,008 and 4,512 in these 4-byte lines."""
    paths = user_corpus(tmp_path, "a b\n" * 1128 + "a b\r\n" * 1000, valid="a\n")
    across = r"data.train: .*terminators \(1,000 CRLF, 1,128 LF; the first CRLF line ending is at byte offset 4,515"
    with pytest.raises(JobSpecError, match=across):
        prepare_text(job(dataset=None, **paths), str(tmp_path / "cache"), **SMALL)
    Path(paths["train"]).write_text("a b\n" * 1000 + "a b\r\n" * 1000, newline="")  # mixed inside a piece
    within = r"terminators \(\d+ CRLF, \d+ LF in bytes 3,008 to 4,5\d\d, the first line ending at byte offset 3,011"
    with pytest.raises(JobSpecError, match=within):
        prepare_text(job(dataset=None, **paths), str(tmp_path / "cache"), **SMALL)
    Path(paths["train"]).write_text("a b\r\n" * 2000, newline="")
    Path(paths["valid"]).write_text("a\r\n", newline="")
    prepared = prepare_text(job(dataset=None, **paths), str(tmp_path / "cache"), **SMALL)
    assert "\r" not in prepared.vocab and load_split(prepared, "train").numel() == 2000 * 4


def test_unfinished_preparation_is_started_again(standin, tmp_path) -> None:
    """A preparer that died half-way left shards and no manifest: the next run empties the folder."""
    spec = job(dataset="enwik8", path=str(standin))
    prepared = prepare_text(spec, str(tmp_path), **STANDIN)
    want = {s: load_split(prepared, s) for s in ("train", "valid", "test")}
    os.remove(os.path.join(prepared.root, "vocab.json"))
    Path(prepared.root, "train-00001.parquet").write_bytes(b"truncated")
    Path(prepared.root, "train-99999.parquet").write_bytes(b"left over")
    again = prepare_text(spec, str(tmp_path), **STANDIN)
    assert again == prepared and "train-99999.parquet" not in os.listdir(prepared.root)
    assert all(torch.equal(load_split(again, s), want[s]) for s in want)
