"""The Ray Train worker loop: data-parallel truncated-BPTT training of a character-level LM.

Read top to bottom: set up (spec, data, model, optimizer, resume) -> loop over steps (forward,
backward, clip, step; log / eval / checkpoint every so often) -> finish on rank 0 (whole-split
valid and test bpc, a sample, artifacts).

Data layout: the training ids are cut into ``data.batch_size`` contiguous streams
(:func:`hypermodels.stream_batches`); rank ``r`` of ``W`` trains on streams ``[r*b, (r+1)*b)`` with
``b = batch_size / W``. A step is one ``seq_len`` segment of every stream; the recurrent state is
carried from segment to segment (detached: truncated BPTT) and reset when the epoch wraps.

A non-finite loss or gradient norm (agreed on by all ranks through one all-reduce per step) stops
the job: Ray 2.60's failure policy retries every worker error up to ``max_failures`` and offers no
public hook for a non-retryable one, and a deterministic divergence would only repeat. So the
workers do not raise: rank 0 writes ``<storage>/<name>/failure.json`` naming the step, every rank
returns, and the driver raises :class:`NonFiniteLossError` and marks the MLflow run FAILED. The
model is not updated with the bad step and nothing after the last checkpoint reaches MLflow.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hypermodels import CharLM, bits_per_char, count_parameters, detach_state, stream_batches
from hypermodels.text import CharVocab

from . import checkpoint as ckpt
from . import storage
from .models import build_model
from .spec import JobSpec, OptimizerSpec

FAILURE_FILE = "failure.json"
PAD = -100


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradient; ``step`` is the step that failed."""

    def __init__(self, step: int, message: str) -> None:
        self.step = step
        super().__init__(message)


def make_optimizer(opt: OptimizerSpec, params) -> torch.optim.Optimizer:
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(params, lr=opt.lr, weight_decay=opt.weight_decay)


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank RNG streams (dropout masks differ between ranks, reproducibly)."""
    s = seed * 1009 + rank + 1
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def run_dir(spec: JobSpec) -> str:
    """``<storage>/<name>``: Ray's run folder, also holding the MLflow run id and failure marker."""
    return storage.join(spec.storage, spec.name)


def report_eval(config: dict[str, Any], step: int, epoch: int, checkpoint_every: int, last: dict[str, float]) -> None:
    """Hook for search campaigns (:mod:`service.campaign`): with ``config["report_evals"]`` every
    evaluation is also reported to Ray Train, without a checkpoint, so that the campaign's Tune
    callback sees the metric at each eval and ASHA can stop the trial between checkpoints. Called
    on every rank (a report is a barrier across ranks). An eval at a checkpoint step is left to the
    checkpoint's own report, which carries the same metrics. Plain jobs report nothing here."""
    if config.get("report_evals") and step % checkpoint_every:
        import ray.train

        ray.train.report({"step": step, "epoch": epoch, **last})


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from . import data
    from .tracking import MetricBuffer

    # ---- set-up -------------------------------------------------------------------------------
    spec = JobSpec.model_validate(config["spec"])
    tr, T, B = spec.train, spec.data.seq_len, spec.data.batch_size
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))  # fixed: same numbers run to run
    progress = config.get("progress")

    def emit(**event: Any) -> None:
        if rank == 0 and progress is not None:
            try:
                progress.put_nowait(event)
            except Exception:  # a full or vanished queue never stops training
                pass

    prepared = data.load_prepared(config["data_root"])
    vocab_size = len(prepared.vocab)
    train_ids = data.load_split(prepared, "train")
    valid_ids = data.load_split(prepared, "valid")

    torch.manual_seed(tr.seed)  # identical initial weights on every rank
    model: CharLM = build_model(spec, vocab_size).to(device)
    optimizer = make_optimizer(tr.optimizer, model.parameters())
    seed_rank(tr.seed, rank)

    b = B // world
    inputs, targets = stream_batches(train_ids, B, pad_id=PAD)
    inputs = inputs[:, rank * b:(rank + 1) * b].contiguous().to(device)
    targets = targets[:, rank * b:(rank + 1) * b].contiguous().to(device)
    segments_per_epoch = math.ceil(inputs.shape[0] / T)
    total_steps = tr.max_steps or tr.epochs * segments_per_epoch

    pos, state = ckpt.Position(), None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            restored = ckpt.load(folder, rank, world, model, optimizer, device)
        pos, state = restored.position, restored.recurrent_state

    ddp = ray.train.torch.prepare_model(model)  # DistributedDataParallel when world > 1
    tracker = MetricBuffer(config["tracking_uri"], config["run_id"]) if rank == 0 else None
    emit(event="start", step=pos.step, total_steps=total_steps, workers=world,
         segments_per_epoch=segments_per_epoch, parameters=count_parameters(model),
         threads=torch.get_num_threads())

    def evaluate(ids: torch.Tensor, cap: int | None = None, broadcast: bool = True) -> tuple[float, int]:
        """Bits per character on rank 0's unwrapped model; the value is broadcast to every rank
        (the other ranks wait there), except at the end, when only rank 0 is left."""
        ids = ids[:cap + 1] if cap else ids
        value = torch.zeros(1, dtype=torch.float64, device=device)
        if rank == 0:
            value[0] = bits_per_char(model, ids, batch_size=spec.data.eval_batch_size, seq_len=T)
        if broadcast and world > 1:
            dist.broadcast(value, src=0)
        return float(value[0]), ids.numel() - 1

    def save_checkpoint(metrics: dict[str, Any]) -> None:
        folder = tempfile.mkdtemp(prefix=f"hyperctl-ckpt-{rank}-")
        try:
            meta = {"spec": spec.model_dump(mode="json"), "world_size": world, "data_root": prepared.root,
                    "content_hash": prepared.content_hash, "vocab_size": vocab_size}
            ckpt.save(folder, rank, pos, state, model=model, optimizer=optimizer, meta=meta)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"checkpoint_{pos.step:08d}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if tracker is not None:  # everything flushed is now covered by a checkpoint
            tracker.flush()
        emit(event="checkpoint", step=pos.step)

    # ---- training loop ------------------------------------------------------------------------
    win_loss = win_tokens = win_time = 0.0
    win_steps = 0
    last: dict[str, float] = {}
    model.train()
    while pos.step < total_steps:
        if pos.segment == segments_per_epoch:  # epoch wrap: start the streams again from zero state
            pos.epoch, pos.segment, state = pos.epoch + 1, 0, None
        t0 = time.perf_counter()
        x = inputs[pos.segment * T:(pos.segment + 1) * T]
        y = targets[pos.segment * T:(pos.segment + 1) * T]

        logits, state = ddp(x, state)
        state = detach_state(state)
        loss_sum = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1), ignore_index=PAD,
                                   reduction="sum")
        n_tokens = int((y != PAD).sum())
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / max(n_tokens, 1)).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip or math.inf)

        # One small all-reduce: global loss and token count, and whether any rank went non-finite.
        loss_value, norm_value = float(loss_sum.detach()), float(grad_norm)
        stats = torch.tensor([loss_value, n_tokens, float(not (math.isfinite(loss_value) and math.isfinite(norm_value)))],
                             dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(stats)
        global_loss, global_tokens, bad_ranks = stats.tolist()
        if bad_ranks > 0:
            message = (f"non-finite loss or gradient at step {pos.step + 1} (epoch {pos.epoch}, segment "
                       f"{pos.segment}): training stopped; the last checkpoint is kept")
            if rank == 0:
                storage.write_bytes_atomic(storage.join(run_dir(spec), FAILURE_FILE),
                                           json.dumps({"step": pos.step + 1, "error": message}).encode())
                emit(event="error", message=message)
            return
        optimizer.step()
        pos.step, pos.segment = pos.step + 1, pos.segment + 1
        win_loss, win_tokens = win_loss + global_loss, win_tokens + global_tokens
        win_time, win_steps = win_time + time.perf_counter() - t0, win_steps + 1

        if pos.step % tr.log_every == 0 or pos.step == total_steps:
            logged = {"train_bpc": win_loss / max(win_tokens, 1) / math.log(2),
                      "tokens_per_s": win_tokens / max(win_time, 1e-9), "lr": optimizer.param_groups[0]["lr"]}
            last.update(logged)
            if tracker is not None:
                tracker.add(pos.step, **logged)
            emit(event="log", step=pos.step, total_steps=total_steps, epoch=pos.epoch,
                 eta_s=(total_steps - pos.step) * win_time / win_steps, **logged)
            win_loss = win_tokens = win_time = 0.0
            win_steps = 0

        if pos.step % tr.eval_every == 0 and pos.step < total_steps:
            last["valid_bpc"], symbols = evaluate(valid_ids, tr.eval_max_symbols)
            if tracker is not None:
                tracker.add(pos.step, valid_bpc=last["valid_bpc"])
            emit(event="eval", step=pos.step, valid_bpc=last["valid_bpc"], symbols=symbols)
            report_eval(config, pos.step, pos.epoch, tr.checkpoint_every, last)  # search campaigns only

        if pos.step % tr.checkpoint_every == 0 or pos.step == total_steps:
            save_checkpoint({"step": pos.step, "epoch": pos.epoch, **last})

    # ---- finish (rank 0): whole-split evaluation, a sample, artifacts -------------------------
    if rank != 0:
        return
    assert tracker is not None
    final_valid, _ = evaluate(valid_ids, broadcast=False)
    final = {"valid_bpc": final_valid, "final_valid_bpc": final_valid}
    if storage.exists(storage.join(prepared.root, "test.parquet")):
        final["test_bpc"], _ = evaluate(data.load_split(prepared, "test"), broadcast=False)
    tracker.add(total_steps, **final)
    tracker.flush()
    emit(event="final", step=total_steps, valid_bpc=final_valid, test_bpc=final.get("test_bpc"))
    finish_artifacts(spec, model, prepared, valid_ids, tracker)


def finish_artifacts(spec: JobSpec, model: CharLM, prepared, valid_ids: torch.Tensor, tracker) -> None:
    """Final model, sampled text, learning curve and (HyperLSTM) weight-scaling plot."""
    from . import plots

    vocab = CharVocab(prepared.vocab)
    model.eval()
    with tempfile.TemporaryDirectory(prefix="hyperctl-artifacts-") as tmp:
        tmp_path = Path(tmp)
        torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                    "spec": spec.model_dump(mode="json"), "vocab": list(prepared.vocab)},
                   tmp_path / "model.pt")
        tracker.log_artifact(str(tmp_path / "model.pt"), "model")

        if spec.train.sample_length:
            prime = valid_ids[:min(40, valid_ids.numel())].tolist()
            generator = torch.Generator().manual_seed(spec.train.seed)
            sampled = model.sample(prime, spec.train.sample_length, generator=generator)
            text = (f"prime ({len(prime)} symbols from the validation split):\n"
                    f"{vocab.to_text(prime, prepared.ptb_format)}\n\n"
                    f"sample ({len(sampled)} symbols, temperature 1):\n{vocab.to_text(sampled, prepared.ptb_format)}\n")
            tracker.log_text(text, "sample.txt")

        plots.learning_curve(tracker.history("train_bpc"), tracker.history("valid_bpc"),
                             str(tmp_path / "learning_curve.png"), title=spec.name)
        tracker.log_artifact(str(tmp_path / "learning_curve.png"), "plots")

        if spec.model.cell == "hyperlstm":
            snippet = valid_ids[:min(120, valid_ids.numel())]
            device = model.decoder.weight.device
            x = F.one_hot(snippet.to(device), len(prepared.vocab)).to(model.decoder.weight.dtype).unsqueeze(1)
            d_h, d_x = model.rnn.scaling_vectors(x)
            plots.scaling_vectors(d_h.cpu(), d_x.cpu(), vocab.decode(snippet.tolist()),
                                  str(tmp_path / "scaling_vectors.png"))
            tracker.log_artifact(str(tmp_path / "scaling_vectors.png"), "plots")


__all__ = ["FAILURE_FILE", "NonFiniteLossError", "make_optimizer", "report_eval", "run_dir", "train_loop_per_worker"]
