"""The Ray Train worker loop of ``task: translation``: data-parallel training of an attention
encoder-decoder whose recurrent layers are HyperLSTMs (or the LSTM baselines).

Read top to bottom: set up (spec, subword data, model, optimizer, resume) -> loop over steps (a
global batch of sentence pairs split across ranks; forward, label-smoothed loss, backward, clip,
step; log / eval / checkpoint every so often) -> finish on rank 0 (validation and every test set
translated with beam search and scored with sacreBLEU, artifacts).

Batches (:mod:`.batches`): each worker reads only its share of every training shard, one shard at a
time, and makes its own batches of ``data.batch_size / workers x train.accumulate_steps`` pairs (its
micro-batch ``j`` is pairs ``[j*b, (j+1)*b)`` of it) in an order fixed by the seed and the epoch,
bucketed by source length. Pairs longer than ``data.max_len`` subwords on either side are left out
(counted at the start). A checkpoint's (epoch, batch) position resumes the same order exactly.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hypermodels import label_smoothed_nll

from ...io import storage
from ...io.tracking import TAG_SACREBLEU, MetricBuffer
from ...worker import plots
from ...worker.worker import Window, Worker, log_model, make_optimizer, seed_rank
from .batches import RankBatches
from .data import BOS_ID, EOS_ID, PAD_ID, PreparedCorpus, Split, load_prepared, load_processors, load_split
from .model import build_model
from .plots import attention_maps
from .spec import TranslationJob
from .translate import SRC_SPM_FILE, TGT_SPM_FILE, Translator, bleu


def collate(src: list[list[int]], tgt: list[list[int]], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Padded tensors: src (B, S), src lengths (B,), decoder input bos+tgt (B, T), output tgt+eos (B, T)."""
    lengths = torch.tensor([len(s) for s in src])
    S, T = int(lengths.max()), max(len(t) for t in tgt) + 1
    x = torch.full((len(src), S), PAD_ID, dtype=torch.long)
    y_in = torch.full((len(src), T), PAD_ID, dtype=torch.long)
    y_out = torch.full((len(src), T), PAD_ID, dtype=torch.long)
    for i, (s, t) in enumerate(zip(src, tgt, strict=True)):
        x[i, : len(s)] = torch.tensor(s)
        y_in[i, : len(t) + 1] = torch.tensor([BOS_ID] + t)
        y_out[i, : len(t) + 1] = torch.tensor(t + [EOS_ID])
    return x.to(device), lengths.to(device), y_in.to(device), y_out.to(device)


@torch.no_grad()
def perplexity(model: torch.nn.Module, split: Split, batch_size: int, device: torch.device) -> float:
    """Teacher-forced per-token perplexity (no label smoothing) over a whole split."""
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    order = sorted(range(len(split.src)), key=lambda i: len(split.src[i]))
    for start in range(0, len(order), batch_size):
        idx = [i for i in order[start : start + batch_size] if split.src[i]]
        if not idx:
            continue
        x, lengths, y_in, y_out = collate([split.src[i] for i in idx], [split.tgt[i] for i in idx], device)
        logits = model(x, lengths, y_in)
        nll += float(
            F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y_out.reshape(-1), ignore_index=PAD_ID, reduction="sum"
            )
        )
        count += int((y_out != PAD_ID).sum())
    model.train(was_training)
    return math.exp(nll / max(count, 1))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train.torch  # deferred: see service.worker.worker

    # ---- set-up -------------------------------------------------------------------------------
    w = Worker(config, TranslationJob)
    spec, device, rank, world = w.spec, w.device, w.rank, w.world
    tr, B, m = spec.train, spec.data.batch_size, spec.model
    G = B * tr.accumulate_steps  # the global batch of one optimizer step

    prepared = load_prepared(config["data_root"])
    src_sp, tgt_sp = load_processors(prepared)
    valid = load_split(prepared, "valid")

    torch.manual_seed(tr.seed)  # identical initial weights on every rank
    model = build_model(spec, *prepared.vocab_sizes).to(device)
    optimizer = make_optimizer(tr.optimizer, model.parameters())
    seed_rank(tr.seed, rank)
    translator = Translator.for_spec(spec, model, src_sp, tgt_sp)

    b = B // world
    train = RankBatches(prepared, rank, world, b * tr.accumulate_steps, spec.data.max_len, tr.seed)
    batches_per_epoch = train.steps_per_epoch
    if batches_per_epoch == 0:
        raise ValueError(
            f"data.batch_size x train.accumulate_steps ({G}) is larger than the usable training pairs "
            f"(worker {rank} of {world} has {train.usable[rank]:,} of {prepared.usable(spec.data.max_len):,})"
        )
    total_steps = tr.total_steps(batches_per_epoch)  # None: train.time_budget alone bounds the run

    pos, _ = w.restore(model, optimizer, total_steps)
    ddp = ray.train.torch.prepare_model(model)  # DistributedDataParallel when world > 1
    w.start(pos, total_steps, model, batches_per_epoch=batches_per_epoch, unit="batches")
    usable = prepared.usable(spec.data.max_len)
    if usable < prepared.counts["train"]:
        w.emit(
            event="info",
            text=f"{prepared.counts['train'] - usable:,} of {prepared.counts['train']:,} training pairs are longer "
            f"than data.max_len ({spec.data.max_len} subwords) and are left out",
        )
    meta = {"data_root": prepared.root, "content_hash": prepared.content_hash}

    def valid_scores(sentences: int | None) -> tuple[float, float]:
        """(BLEU on the first ``sentences`` of valid, whole-valid perplexity), from rank 0."""
        if rank != 0:
            return w.broadcast(0.0), w.broadcast(0.0)
        n = len(valid.src) if sentences is None else min(sentences, len(valid.src))
        hyps = tgt_sp.decode(translator.translate_ids(valid.src[:n], spec.data.eval_batch_size))
        score, _ = bleu(hyps, valid.tgt_text[:n])
        return w.broadcast(score), w.broadcast(perplexity(model, valid, spec.data.eval_batch_size, device))

    # ---- training loop ------------------------------------------------------------------------
    window = Window()
    batches = train.epoch(pos.epoch, skip=pos.batch)
    model.train()
    while not w.done(pos):
        if pos.batch == batches_per_epoch:  # next epoch, next order
            pos.epoch, pos.batch = pos.epoch + 1, 0
            batches = train.epoch(pos.epoch)
        src_batch, tgt_batch = next(batches)
        t0 = time.perf_counter()
        for j in w.micro_batches(ddp):
            x, lengths, y_in, y_out = collate(src_batch[j * b : (j + 1) * b], tgt_batch[j * b : (j + 1) * b], device)
            with w.autocast():
                logits = ddp(x, lengths, y_in)
                loss_sum, n_tokens = label_smoothed_nll(logits, y_out, m.label_smoothing, ignore_index=PAD_ID)
                nll_sum = F.cross_entropy(
                    logits.detach().reshape(-1, logits.shape[-1]),
                    y_out.reshape(-1),
                    ignore_index=PAD_ID,
                    reduction="sum",
                )
            w.backward(loss_sum, n_tokens, reported=nll_sum)  # perplexity without smoothing
        totals = w.step(pos, model, optimizer)
        if totals is None:  # non-finite: the driver reports it (service.worker.worker)
            return
        pos.step, pos.batch = pos.step + 1, pos.batch + 1
        window.add(*totals, time.perf_counter() - t0)

        if w.log_due(pos):
            window = w.log_window(
                pos,
                total_steps,
                window,
                optimizer,
                loss=("train_ppl", math.exp(min(window.mean_loss(), 50.0)), "ppl"),
                rate=("tokens_per_s", "target tok/s"),
            )

        if w.eval_due(pos):
            valid_bleu, valid_ppl = valid_scores(spec.data.eval_sentences)
            n = len(valid.src) if spec.data.eval_sentences is None else min(spec.data.eval_sentences, len(valid.src))
            w.evaluated(pos, f"BLEU on {n:,} sentences, beam {m.beam_size}", valid_bleu=valid_bleu, valid_ppl=valid_ppl)

        if w.checkpoint_due(pos):
            w.save_checkpoint(pos, model, optimizer, meta)

    # ---- finish (rank 0): whole validation and test sets, sacreBLEU, artifacts ------------------
    if not w.finishes():  # rank 0 finishes, unless preempted
        return
    assert w.tracker is not None
    final: dict[str, float] = {}
    outputs: dict[str, list[str]] = {}
    splits = {"valid": valid, **{f"test.{t}": load_split(prepared, f"test.{t}") for t in prepared.tests}}
    signature = ""
    for name, split in splits.items():
        outputs[name] = tgt_sp.decode(translator.translate_ids(split.src, spec.data.eval_batch_size))
        score, signature = bleu(outputs[name], split.tgt_text)
        key = "valid_bleu" if name == "valid" else f"test_bleu_{name.removeprefix('test.')}"
        final[key] = score
        w.emit(event="eval", step=pos.step, metrics={key: score}, over=f"{len(split.src):,} sentences")
    final["valid_ppl"] = perplexity(model, valid, spec.data.eval_batch_size, device)
    if prepared.tests:
        final["test_bleu"] = final[f"test_bleu_{prepared.tests[0]}"]
    curve = {k: final.pop(k) for k in ("valid_bleu", "valid_ppl")}
    w.log_final(pos.step, curve=curve, figures=final)
    w.tracker.set_tags(**{TAG_SACREBLEU: signature})
    w.emit(event="info", text=f"sacreBLEU signature: {signature}")
    finish_artifacts(spec, model, translator, prepared, splits, outputs, signature, w.tracker)


def finish_artifacts(
    spec: TranslationJob,
    model: torch.nn.Module,
    translator: Translator,
    prepared: PreparedCorpus,
    splits: dict[str, Split],
    outputs: dict[str, list[str]],
    signature: str,
    tracker: MetricBuffer,
) -> None:
    """The model (with its spec and sentencepiece models: all ``hyperctl translate`` needs), the
    subword models, every split's translations, sample translations, an attention heatmap and
    the learning curve."""
    model.eval()
    src_uri, tgt_uri = prepared.model_files()
    spm_bytes = {"src": storage.read_bytes(src_uri), "tgt": storage.read_bytes(tgt_uri)}
    with tempfile.TemporaryDirectory(prefix="hyperctl-artifacts-") as tmp:
        tmp_path = Path(tmp)
        src_ids = splits["valid"].src[0] if splits["valid"].src else [EOS_ID]
        example = {
            "src": np.array([src_ids], dtype=np.int64),  # (batch, source length)
            "src_lengths": np.array([len(src_ids)], dtype=np.int64),
            "tgt_in": np.array([[BOS_ID]], dtype=np.int64),  # (batch, target length)
        }
        log_model(tracker, model, spec, example, {SRC_SPM_FILE: spm_bytes["src"], TGT_SPM_FILE: spm_bytes["tgt"]})
        for name, body in (
            (("spm.model", spm_bytes["src"]),)
            if prepared.shared_vocab
            else (("spm_src.model", spm_bytes["src"]), ("spm_tgt.model", spm_bytes["tgt"]))
        ):
            (tmp_path / name).write_bytes(body)
            tracker.log_artifact(str(tmp_path / name), "subwords")
        for name, lines in outputs.items():
            tracker.log_text("\n".join(lines) + "\n", f"translations/{name.removeprefix('test.')}.txt")

        first = f"test.{prepared.tests[0]}" if prepared.tests else "valid"
        split = splits[first]
        lines = [
            f"# {first.removeprefix('test.')}: source / reference / hypothesis (beam {translator.beam_size})",
            f"# {signature}",
            "",
        ]
        for i in range(min(20, len(split.src))):
            lines += [f"SRC  {split.src_text[i]}", f"REF  {split.tgt_text[i]}", f"HYP  {outputs[first][i]}", ""]
        tracker.log_text("\n".join(lines), "sample_translations.txt")

        picks = sorted(range(len(split.src)), key=lambda i: abs(len(split.src[i]) - 12))[:3]
        hyps, maps = translator.translate_ids([split.src[i] for i in picks], return_attention=True)
        heat = []
        for i, hyp, weights in zip(picks, hyps, maps, strict=True):
            src_pieces = translator.src_sp.id_to_piece(split.src[i])
            out_pieces = translator.tgt_sp.id_to_piece(hyp) + ["</s>"]
            heat.append((src_pieces, out_pieces[: weights.shape[0]], weights))
        attention_maps(
            heat, str(tmp_path / "attention.png"), title=f"{spec.name}: attention ({first.removeprefix('test.')})"
        )
        tracker.log_artifact(str(tmp_path / "attention.png"), "plots")

        plots.log_learning_curve(
            tracker,
            "train_ppl",
            "valid_bleu",
            title=spec.name,
            train_label="train perplexity",
            valid_label="valid BLEU",
            ylabel="perplexity",
            valid_axis="BLEU",
        )


__all__ = ["collate", "perplexity", "train_loop_per_worker"]
