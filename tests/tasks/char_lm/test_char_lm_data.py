"""The char LM's data (service/tasks/char_lm/data.py): PTB char, preparing, caching and loading, locally and on S3."""

from __future__ import annotations

import os

import pytest
import torch

from hypermodels import CharVocab, raw_char_symbols
from service.io import storage
from service.spec.errors import JobSpecError
from service.spec.loading import validate_job
from service.tasks.char_lm.data import load_prepared, load_ptb_char, load_split, prepare_text

TRAIN = "the cat sat on the mat.\nthe dog ate the hat.\n"
VALID = "the cat ate.\n"


def job(**data) -> object:
    return validate_job({"name": "t", "train": {"max_steps": 1}, "data": data})


def corpora(folder, train: str | bytes = TRAIN, valid: str | bytes = VALID) -> dict[str, str]:
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for split, text in (("train", train), ("valid", valid)):
        path = os.path.join(folder, f"{split}.txt")
        with open(path, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        paths[split] = path
    return paths


@pytest.fixture(scope="module")
def ptb(tmp_path_factory):
    """PTB char prepared once for the module (about two seconds)."""
    cache = str(tmp_path_factory.mktemp("cache"))
    return cache, prepare_text(job(), cache)


def test_ptb_char_prepared(ptb) -> None:
    cache, prepared = ptb
    assert len(prepared.vocab) == 50 and "\n" in prepared.vocab and prepared.ptb_format
    assert os.path.basename(prepared.root) == f"ptb-char-{prepared.content_hash[:16]}"
    names = sorted(os.listdir(prepared.root))
    assert names[-1] == "vocab.json" and {n.split("-")[0] for n in names[:-1]} == {"train", "valid", "test"}
    vocab = CharVocab.build(load_ptb_char("train"))
    assert prepared.vocab == vocab.symbols
    for split in ("train", "valid", "test"):
        ids = load_split(prepared, split)
        assert ids.dtype == torch.int64 and ids.dim() == 1
        assert torch.equal(ids, torch.tensor(vocab.encode(load_ptb_char(split))))
    assert load_prepared(prepared.root) == prepared


def test_second_prepare_hits_the_cache(ptb) -> None:
    cache, prepared = ptb
    files = [os.path.join(prepared.root, name) for name in os.listdir(prepared.root)]
    before = {f: os.stat(f).st_mtime_ns for f in files}
    assert prepare_text(job(), cache) == prepared
    assert {f: os.stat(f).st_mtime_ns for f in files} == before
    assert os.listdir(cache) == [os.path.basename(prepared.root)]


def test_incomplete_cache_folder_is_rebuilt(tmp_path) -> None:
    spec = job(dataset=None, **corpora(tmp_path / "text"))
    prepared = prepare_text(spec, str(tmp_path / "cache"))
    os.remove(os.path.join(prepared.root, "vocab.json"))
    with open(os.path.join(prepared.root, "train.parquet"), "wb") as f:
        f.write(b"truncated")  # as if a preparer died midway
    assert prepare_text(spec, str(tmp_path / "cache")) == prepared
    assert load_split(prepared, "train").numel() == len(TRAIN)


def test_user_corpus_local(tmp_path) -> None:
    spec = job(dataset=None, **corpora(tmp_path / "text"))
    prepared = prepare_text(spec, str(tmp_path / "cache"))
    assert os.path.basename(prepared.root).startswith("custom-") and not prepared.ptb_format
    vocab = CharVocab(prepared.vocab)
    assert vocab.symbols == sorted(set(TRAIN))
    assert "".join(vocab.decode(load_split(prepared, "valid").tolist())) == VALID
    assert prepared.has_split("valid") and not prepared.has_split("test")
    with pytest.raises(FileNotFoundError, match="no 'test' split"):
        load_split(prepared, "test")


def test_content_hash_follows_content_and_format(tmp_path) -> None:
    cache, ptb_text = str(tmp_path / "cache"), {"train": "t h e _ c a t\nt h e _ d o g\n", "valid": "t h e _ c a t\n"}
    base = prepare_text(job(dataset=None, **corpora(tmp_path / "a", **ptb_text)), cache)
    same = prepare_text(job(dataset=None, **corpora(tmp_path / "b", **ptb_text)), cache)
    edited_text = {**ptb_text, "train": ptb_text["train"] + "x\n"}
    edited = prepare_text(job(dataset=None, **corpora(tmp_path / "c", **edited_text)), cache)
    ptb_style = prepare_text(job(dataset=None, format="ptb-char", **corpora(tmp_path / "a", **ptb_text)), cache)
    assert same.content_hash == base.content_hash and same.root == base.root
    assert len({base.content_hash, edited.content_hash, ptb_style.content_hash}) == 3
    assert " " in base.vocab and not base.ptb_format
    assert ptb_style.ptb_format and " " not in ptb_style.vocab and len(ptb_style.vocab) == 10


def test_user_corpus_s3(tmp_path, s3_prefix: str) -> None:
    paths = {split: storage.join(s3_prefix, "text", f"{split}.txt") for split in ("train", "valid")}
    storage.write_bytes_atomic(paths["train"], TRAIN.encode())
    storage.write_bytes_atomic(paths["valid"], VALID.encode())
    prepared = prepare_text(job(dataset=None, **paths), storage.join(s3_prefix, "cache"))
    assert prepared.root.startswith(s3_prefix + "/cache/custom-")
    local = prepare_text(job(dataset=None, **corpora(tmp_path)), str(tmp_path / "cache"))
    assert prepared.content_hash == local.content_hash
    expected = CharVocab(prepared.vocab).encode(raw_char_symbols(TRAIN))
    assert torch.equal(load_split(prepared, "train"), torch.tensor(expected))
    assert load_prepared(prepared.root) == prepared


def test_undecodable_bytes_name_the_file(tmp_path) -> None:
    paths = corpora(tmp_path, train=b"fine text\n\xff\xfe broken\n")
    with pytest.raises(
        JobSpecError, match=r"data\.train: .* line 2: expected UTF-8 text, found byte 0xff at offset 10"
    ) as err:
        prepare_text(job(dataset=None, **paths), str(tmp_path / "cache"))
    assert paths["train"] in str(err.value)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "problem, message",
    [
        ("missing", "data.valid: expected a UTF-8 text file, found nothing at"),
        ("empty", "data.valid: expected UTF-8 text, found an empty file at"),
        ("unknown symbol", r"data.valid: every symbol must occur in data.train .* \['Z'\]"),
    ],
    ids=["missing", "empty", "unknown-symbol"],
)
def test_unusable_corpus(tmp_path, problem: str, message: str) -> None:
    paths = corpora(tmp_path, valid={"empty": "", "unknown symbol": "the Zoo\n"}.get(problem, VALID))
    if problem == "missing":
        os.remove(paths["valid"])
    with pytest.raises(JobSpecError, match=message) as err:
        prepare_text(job(dataset=None, **paths), str(tmp_path / "cache"))
    assert paths["valid"] in str(err.value)


def test_ptb_char_reader_names_a_bad_split(tmp_path) -> None:
    """The PTB reader (moved here from hypermodels) refuses an unknown split and says where it looked."""
    with pytest.raises(ValueError, match="split"):
        load_ptb_char("dev")
    with pytest.raises(FileNotFoundError, match="PTB char split 'train' not found"):
        load_ptb_char("train", root=tmp_path)
