"""Translating with a trained model: batching, beam search, detokenising, BLEU, loading a model from
any source :mod:`service.io.models` resolves (``hyperctl translate``, :mod:`.commands`), and its
BLEU on given files (``hyperctl evaluate``).

BLEU is sacreBLEU's corpus BLEU, detokenised and case-sensitive (its defaults: 13a tokenisation,
exponential smoothing), on the raw references; :func:`bleu` returns the score with its signature,
which goes with every reported number.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...io import storage, tracking
from ...io.datacache import data_error
from ...io.models import META_FILE, ModelSource, ModelSourceError, open_model
from ...spec.errors import validate_as
from ...spec.schema import TrainSpec
from ..base import Evaluation
from .data import load_prepared, read_lines
from .model import build_model
from .spec import OLD_NAMES, TASK_NAME, TranslationJob


@dataclass
class Translator:
    """A model with its subword processors and the spec's decoding settings."""

    model: Any  # hypermodels.Seq2Seq
    src_sp: Any  # sentencepiece.SentencePieceProcessor
    tgt_sp: Any
    beam_size: int
    length_penalty: float
    max_decode_ratio: float

    @classmethod
    def for_spec(cls, spec: TranslationJob, model: Any, src_sp: Any, tgt_sp: Any) -> Translator:
        """A translator with a translation job's decoding settings (``model.beam_size``, ...)."""
        m = spec.model
        return cls(model, src_sp, tgt_sp, m.beam_size, m.length_penalty, m.max_decode_ratio)

    def encode(self, sentences: list[str]) -> list[list[int]]:
        return self.src_sp.encode(sentences)

    def translate_ids(
        self,
        sources: list[list[int]],
        batch_size: int = 64,
        beam_size: int | None = None,
        return_attention: bool = False,
    ) -> Any:
        """Token-id hypotheses for token-id sources, in input order (sorted by length internally so
        that batches hold similar lengths); with ``return_attention`` also each one's (T_out, S) map."""
        beam = beam_size or self.beam_size
        device = next(self.model.parameters()).device
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        hyps: list[list[int]] = [[] for _ in sources]
        maps: list[torch.Tensor | None] = [None for _ in sources]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            lengths = torch.tensor([max(1, len(sources[i])) for i in idx])
            src = torch.zeros(len(idx), int(lengths.max()), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = sources[i] or [self.model.eos_id]  # an empty source still gets a (short) translation
                src[row, : len(ids)] = torch.tensor(ids)
            max_len = int(self.max_decode_ratio * int(lengths.max())) + 10
            src, lengths = src.to(device), lengths.to(device)
            if beam == 1:
                out = self.model.greedy(src, lengths, max_len=max_len, return_attention=return_attention)
            else:
                out = self.model.beam_search(
                    src,
                    lengths,
                    beam_size=beam,
                    max_len=max_len,
                    alpha=self.length_penalty,
                    return_attention=return_attention,
                )
            found, attn = out if return_attention else (out, None)
            for row, i in enumerate(idx):
                hyps[i] = found[row]
                if attn is not None:
                    maps[i] = attn[row]
        return (hyps, maps) if return_attention else hyps

    def translate(self, sentences: list[str], batch_size: int = 64, beam_size: int | None = None) -> list[str]:
        """Raw sentences in, detokenised translations out, line for line: a blank line stays blank."""
        todo = [i for i, s in enumerate(sentences) if s.strip()]
        out = [""] * len(sentences)
        if todo:
            ids = self.translate_ids(self.encode([sentences[i] for i in todo]), batch_size, beam_size)
            for i, text in zip(todo, self.tgt_sp.decode(ids), strict=True):
                out[i] = text
        return out


def bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
    """(corpus BLEU, sacreBLEU signature): detokenised, case-sensitive, one reference each."""
    from sacrebleu.metrics import BLEU  # deferred: only translation jobs need it

    metric = BLEU()
    score = metric.corpus_score(hypotheses, [references])
    return float(score.score), str(metric.get_signature())


def saved_spec(spec_doc: dict[str, Any]) -> TranslationJob:
    """The job a model was saved with (in a checkpoint's meta.json or the MLflow model's job.json), as this
    version reads it: earlier versions called the task ``nmt`` and gave every job the char LM's
    training keys (``train.eval_max_symbols``, ``train.sample_length``), which are dropped."""
    train = {k: v for k, v in spec_doc.get("train", {}).items() if k in TrainSpec.model_fields}
    job: TranslationJob = validate_as(TranslationJob, {**spec_doc, "task": TASK_NAME, "train": train}, "model")
    return job


SRC_SPM_FILE, TGT_SPM_FILE = "spm_src.model", "spm_tgt.model"  # the MLflow model's subword models


def translator_of(source: ModelSource) -> Translator:
    """The translator of a trained model (:mod:`service.io.models`): the model, its sentencepiece models
    (an MLflow model's extra files, or a checkpoint's prepared data) and its spec's decoding settings."""
    import sentencepiece as spm  # deferred: only translation jobs need it

    if source.task not in (TASK_NAME, *OLD_NAMES):
        raise ModelSourceError(f"{source.given}: a model of a {source.task or 'unknown'} job, not of a translation job")
    spec = saved_spec(source.spec)
    if source.checkpoint is not None:
        prepared = load_prepared(source.prepared_root("the subword models"))
        src_uri, tgt_uri = prepared.model_files()
        src_model, tgt_model = storage.read_bytes(src_uri), storage.read_bytes(tgt_uri)
    else:
        src_model, tgt_model = source.file(SRC_SPM_FILE) or b"", source.file(TGT_SPM_FILE) or b""
        if not (src_model and tgt_model):
            raise ModelSourceError(f"{source.given}: the model has no {SRC_SPM_FILE} and {TGT_SPM_FILE}")
    src_sp = spm.SentencePieceProcessor(model_proto=src_model)
    tgt_sp = spm.SentencePieceProcessor(model_proto=tgt_model)
    model = source.module(lambda: build_model(spec, src_sp.get_piece_size(), tgt_sp.get_piece_size()))
    return Translator.for_spec(spec, model, src_sp, tgt_sp)


def load_translator(given: str, tracking_uri: str | None = None) -> Translator:
    """The translator of a run folder, checkpoint folder (local or s3://), MLflow run id, ``runs:/`` or
    ``models:/`` URI (these need ``tracking_uri``); ModelSourceError naming what is wrong."""

    def uri() -> str:
        if tracking_uri is None:
            raise ModelSourceError(
                f"{given}: not a checkpoint folder (no {META_FILE}); to load an MLflow run or model, give its "
                "tracking URI (--tracking-uri, or --storage of the job)"
            )
        return tracking_uri

    with open_model(given, uri) as source:
        return translator_of(source)


def evaluate(source: ModelSource, args: argparse.Namespace) -> Evaluation:
    """BLEU (sacreBLEU, detokenised, its signature said) of the translations of ``--source FILE``
    against ``--reference FILE``, aligned line for line."""
    if args.source_file is None or args.reference is None or args.split is not None:
        raise data_error("--source", "give --source FILE and --reference FILE for a translation model")
    sources = read_lines("--source", args.source_file)
    references = read_lines("--reference", args.reference)
    if len(sources) != len(references):
        raise data_error(
            "--reference",
            f"{args.reference} has {len(references):,} lines, {args.source_file} (--source) has "
            f"{len(sources):,}: they must be aligned line for line",
        )
    if not sources:
        raise data_error("--source", f"{args.source_file}: expected sentences, found none")
    translator = translator_of(source)
    hypotheses = translator.translate(sources)
    score, signature = bleu(hypotheses, references)
    name = Path(args.source_file.rstrip("/")).name.split(".")[0] or "source"
    return Evaluation(
        name,
        {"bleu": score},
        [f"{args.source_file}: {len(sources):,} sentences translated", f"sacreBLEU signature: {signature}"],
        {tracking.TAG_SACREBLEU: signature},
    )


__all__ = ["SRC_SPM_FILE", "TGT_SPM_FILE", "Translator", "bleu", "evaluate", "load_translator", "translator_of"]
