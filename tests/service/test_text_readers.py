"""Users' text files (service/io/text.py) through every reader that takes them: a UTF-8 byte-order
mark is stripped and said once; LF, CRLF and CR-only files read the same; mixed terminators are
refused naming the file and what was found (issue 16, kinds 1 and 2).

Readers covered: char-LM corpora (``chars`` and ``ptb-char`` formats, train and valid), the
translation task's aligned files (src and tgt, train and valid), TSV files, references (BLEU of a
perfect output), and ``hyperctl translate``'s input.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tasks.translation.test_translation_job import multi30k_lines, translation_job

from service.driver.local import prepare
from service.io import text
from service.spec.errors import JobSpecError
from service.spec.loading import validate_job
from service.tasks import task_of
from service.tasks.char_lm.data import load_split as load_text_split
from service.tasks.translation.commands import read_sentences
from service.tasks.translation.data import load_split, prepare_corpus, read_parallel
from service.tasks.translation.spec import ParallelSource
from service.tasks.translation.translate import bleu

BOM = "\ufeff"
TRAIN = "the cat sat on the mat.\nthe dog ate the hat.\n"
VALID = "the cat ate.\n"
PTB_TRAIN = "t h e _ c a t\nt h e _ m a t\n"


def char_job(tmp: Path, train: bytes, valid: bytes, fmt: str = "chars") -> object:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "train.txt").write_bytes(train)
    (tmp / "valid.txt").write_bytes(valid)
    return validate_job(
        {
            "name": "t",
            "train": {"max_steps": 1},
            "data": {
                "dataset": None,
                "train": str(tmp / "train.txt"),
                "valid": str(tmp / "valid.txt"),
                "format": fmt,
                "batch_size": 2,
            },
            "storage": str(tmp / "runs"),
        }
    )


def prepared_with_notes(spec: object) -> tuple[object, list[str]]:
    said: list[str] = []
    return prepare(spec, task_of(spec), said.append), said  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt, body", [("chars", TRAIN), ("ptb-char", PTB_TRAIN)], ids=["chars", "ptb-char"])
def test_char_lm_bom_is_stripped_and_said_once(tmp_path: Path, fmt: str, body: str) -> None:
    plain, _ = prepared_with_notes(char_job(tmp_path / "plain", body.encode(), body.encode(), fmt))
    spec = char_job(tmp_path, (BOM + body).encode(), (BOM + body).encode(), fmt)
    prepared, said = prepared_with_notes(spec)
    assert BOM not in prepared.vocab and prepared.vocab == plain.vocab  # type: ignore[attr-defined]
    notes = [s for s in said if "byte-order mark" in s]
    assert len(notes) == 2 and any("data.train" in s for s in notes) and any("data.valid" in s for s in notes)
    # a cache hit says so too, once per file
    _, again = prepared_with_notes(spec)
    assert [s for s in again if "byte-order mark" in s] == notes


@pytest.mark.parametrize("eol", ["\r\n", "\r"], ids=["CRLF", "CR"])
@pytest.mark.parametrize("fmt, body", [("chars", TRAIN), ("ptb-char", PTB_TRAIN)], ids=["chars", "ptb-char"])
def test_char_lm_reads_every_terminator_as_a_newline(tmp_path: Path, eol: str, fmt: str, body: str) -> None:
    lf, _ = prepared_with_notes(char_job(tmp_path / "lf", body.encode(), body.encode(), fmt))
    other = body.replace("\n", eol).encode()
    prepared, _ = prepared_with_notes(char_job(tmp_path, other, other, fmt))
    assert "\r" not in prepared.vocab and prepared.vocab == lf.vocab  # type: ignore[attr-defined]
    assert load_text_split(prepared, "train").tolist() == load_text_split(lf, "train").tolist()  # type: ignore[arg-type]


def test_char_lm_mixed_terminators_are_refused_by_file_and_line(tmp_path: Path) -> None:
    spec = char_job(tmp_path, TRAIN.encode(), b"one\r\ntwo\nthree\r\n")
    with pytest.raises(JobSpecError) as err:
        prepared_with_notes(spec)
    assert (f"data.valid: {tmp_path / 'valid.txt'}: mixed line terminators (2 CRLF, 1 LF; line 2 ends in LF)") in str(
        err.value
    )


def aligned(tmp: Path, stem: str, n: int, split: str, prefix: str = "", eol: str = "\n") -> ParallelSource:
    src, tgt = tmp / f"{stem}.en", tmp / f"{stem}.fr"
    src.write_bytes((prefix + eol.join(multi30k_lines(split, "en", n)) + eol).encode())
    tgt.write_bytes((prefix + eol.join(multi30k_lines(split, "fr", n)) + eol).encode())
    return ParallelSource(src=str(src), tgt=str(tgt))


@pytest.mark.parametrize("eol", ["\r\n", "\r"], ids=["CRLF", "CR"])
def test_parallel_files_and_tsv_read_every_terminator(tmp_path: Path, eol: str) -> None:
    en, fr = multi30k_lines("train", "en", 40), multi30k_lines("train", "fr", 40)
    assert read_parallel("data.train", aligned(tmp_path, "train", 40, "train", eol=eol)) == (en, fr)
    tsv = tmp_path / "train.tsv"
    tsv.write_bytes(eol.join(f"{a}\t{b}" for a, b in zip(en, fr, strict=True)).encode() + eol.encode())
    assert read_parallel("data.train", ParallelSource(tsv=str(tsv))) == (en, fr)


def test_parallel_files_and_tsv_strip_a_bom(tmp_path: Path) -> None:
    en, fr = multi30k_lines("train", "en", 40), multi30k_lines("train", "fr", 40)
    with text.collect_notes() as notes:
        assert read_parallel("data.train", aligned(tmp_path, "train", 40, "train", prefix=BOM)) == (en, fr)
        tsv = tmp_path / "train.tsv"
        tsv.write_text(BOM + "".join(f"{a}\t{b}\n" for a, b in zip(en, fr, strict=True)), encoding="utf-8")
        assert read_parallel("data.valid", ParallelSource(tsv=str(tsv))) == (en, fr)
    assert notes == [
        f"data.train.src: {tmp_path / 'train.en'} starts with a UTF-8 byte-order mark; it is ignored",
        f"data.train.tgt: {tmp_path / 'train.fr'} starts with a UTF-8 byte-order mark; it is ignored",
        f"data.valid.tsv: {tsv} starts with a UTF-8 byte-order mark; it is ignored",
    ]


def test_a_cr_only_corpus_is_not_one_huge_line_blamed_on_the_vocabulary(tmp_path: Path) -> None:
    """The issue's example: a CR-only parallel corpus was one line, and sentencepiece's failure
    blamed data.subwords.vocab_size."""
    job = translation_job(tmp_path)
    for side in ("src", "tgt"):
        path = Path(job["data"]["train"][side])
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r"))
    prepared = prepare_corpus(validate_job(job), str(tmp_path / "cache"))
    assert prepared.counts["train"] == 300


def test_mixed_terminators_in_a_parallel_file_name_the_file(tmp_path: Path) -> None:
    source = aligned(tmp_path, "val", 10, "val")
    tgt = Path(source.tgt or "")
    tgt.write_bytes(tgt.read_bytes().replace(b"\n", b"\r\n", 3))
    with pytest.raises(JobSpecError) as err:
        read_parallel("data.valid", source)
    assert f"data.valid.tgt: {tgt}: mixed line terminators (3 CRLF, 7 LF; line 1 ends in CRLF)" in str(err.value)


def test_a_bom_on_the_references_no_longer_lowers_bleu(tmp_path: Path) -> None:
    """The issue's example: a BOM at the start of the reference file made a perfect output score
    98.98; references are what the prepared test split keeps as ``tgt_text``."""
    job = translation_job(tmp_path)
    ref = Path(job["data"]["test"]["flickr16"]["tgt"])
    ref.write_bytes(BOM.encode() + ref.read_bytes())
    prepared = prepare_corpus(validate_job(job), str(tmp_path / "cache"))
    refs = load_split(prepared, "test.flickr16").tgt_text
    assert refs == multi30k_lines("test_2016_flickr", "fr", 16)
    assert bleu(multi30k_lines("test_2016_flickr", "fr", 16), refs)[0] == pytest.approx(100.0)


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_translate_input_strips_a_bom_and_reads_every_terminator(tmp_path: Path, eol: str) -> None:
    sentences = multi30k_lines("val", "en", 5)
    path = tmp_path / "in.txt"
    path.write_bytes((BOM + eol.join(sentences) + eol).encode())
    with text.collect_notes() as notes:
        assert read_sentences(str(path)) == sentences
    assert notes == [f"--input: {path} starts with a UTF-8 byte-order mark; it is ignored"]
    path.write_bytes(b"one\r\ntwo\n")
    with pytest.raises(JobSpecError, match=r"--input: .*in.txt: mixed line terminators \(1 CRLF, 1 LF"):
        read_sentences(str(path))


def test_a_utf16_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "train.en"
    path.write_bytes("a sentence\n".encode("utf-16"))
    with pytest.raises(JobSpecError, match=r"data.train.src: expected UTF-8 text, found a UTF-16-LE byte-order mark"):
        read_parallel("data.train", ParallelSource(src=str(path), tgt=str(path)))
