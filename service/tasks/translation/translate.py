"""Translating with a trained model: batching, beam search, detokenising, BLEU, and loading a model
from an MLflow run or a checkpoint folder (``hyperctl translate``, :mod:`.commands`).

BLEU is sacreBLEU's corpus BLEU, detokenised and case-sensitive (its defaults: 13a tokenisation,
exponential smoothing), on the raw references; :func:`bleu` returns the score with its signature,
which goes with every reported number.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...io import storage, tracking
from ...spec.errors import validate_as
from ...spec.schema import TrainSpec
from ...worker.checkpoint import META_FILE, MODEL_FILE
from .data import load_prepared
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


def _is_translation(spec_doc: dict[str, Any]) -> bool:
    return spec_doc.get("task") in (TASK_NAME, *OLD_NAMES)


def saved_spec(spec_doc: dict[str, Any]) -> TranslationJob:
    """The job a model was saved with (in a checkpoint's meta.json or the run's model.pt), as this
    version reads it: earlier versions called the task ``nmt`` and gave every job the char LM's
    training keys (``train.eval_max_symbols``, ``train.sample_length``), which are dropped."""
    train = {k: v for k, v in spec_doc.get("train", {}).items() if k in TrainSpec.model_fields}
    job: TranslationJob = validate_as(TranslationJob, {**spec_doc, "task": TASK_NAME, "train": train}, "model")
    return job


def build_translator(
    spec_doc: dict[str, Any], state_dict: dict[str, torch.Tensor], src_model: bytes, tgt_model: bytes
) -> Translator:
    import sentencepiece as spm  # deferred: only translation jobs need it

    spec = saved_spec(spec_doc)
    src_sp = spm.SentencePieceProcessor(model_proto=src_model)
    tgt_sp = spm.SentencePieceProcessor(model_proto=tgt_model)
    model = build_model(spec, src_sp.get_piece_size(), tgt_sp.get_piece_size())
    model.load_state_dict(state_dict)
    model.eval()
    return Translator.for_spec(spec, model, src_sp, tgt_sp)


def latest_checkpoint(run_folder: str) -> str | None:
    """The newest checkpoint folder of a run folder (``<storage>/<name>``, as ``submit`` prints it), or None
    when ``run_folder`` is not one or holds no checkpoint yet."""
    if not storage.exists(storage.join(run_folder, tracking.RUN_ID_FILE)):
        return None
    names = [n for n in storage.list_names(run_folder) if n.startswith("checkpoint_")]
    for name in reversed(names):
        if storage.exists(storage.join(run_folder, name, META_FILE)):
            return storage.join(run_folder, name)
    return None


def load_translator(source: str, tracking_uri: str | None = None) -> Translator:
    """A translator from a checkpoint folder (local or s3://, holding ``model.pt`` and ``meta.json``), a run
    folder (its newest checkpoint: the final model once the job has finished) or an MLflow run id (its
    ``model/model.pt`` artifact, which carries the spec and the sentencepiece models)."""
    source = latest_checkpoint(source) or source
    if storage.exists(storage.join(source, META_FILE)):
        meta = json.loads(storage.read_bytes(storage.join(source, META_FILE)))
        if not _is_translation(meta.get("spec", {})):
            raise ValueError(
                f"{source}: a checkpoint of a {meta.get('spec', {}).get('task')} job, not of a translation job"
            )
        prepared = load_prepared(meta["data_root"])
        src_uri, tgt_uri = prepared.model_files()
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / MODEL_FILE
            local.write_bytes(storage.read_bytes(storage.join(source, MODEL_FILE)))
            state = torch.load(local, map_location="cpu", weights_only=True)
        return build_translator(meta["spec"], state, storage.read_bytes(src_uri), storage.read_bytes(tgt_uri))
    if tracking_uri is None:
        raise ValueError(
            f"{source}: not a checkpoint folder (no {META_FILE}); to load an MLflow run, give its "
            "tracking URI (--tracking-uri, or --storage of the job)"
        )
    run = tracking.find_run(tracking_uri, source)
    if run is None:
        raise ValueError(f"{source}: neither a checkpoint folder nor a run in {tracking.redact(tracking_uri)}")
    task = run["tags"].get(tracking.TAG_TASK)
    if task not in (TASK_NAME, *OLD_NAMES):
        raise ValueError(f"run {source} is not a translation job (its task: {task or 'not recorded'})")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracking.download_artifact(tracking_uri, source, "model/model.pt", tmp)
        except FileNotFoundError:
            raise ValueError(
                f"run {source} has no model/model.pt artifact yet (it is written when training "
                "finishes; use a checkpoint folder of a running job)"
            ) from None
        saved = torch.load(path, map_location="cpu", weights_only=False)
    return build_translator(saved["spec"], saved["state_dict"], saved["spm"]["src"], saved["spm"]["tgt"])


__all__ = ["Translator", "bleu", "build_translator", "load_translator"]
