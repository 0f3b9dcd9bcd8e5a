"""The Ray Train worker loop of ``task: char_lm``: data-parallel truncated-BPTT training of a
character-level LM.

Read top to bottom: set up (spec, data, model, optimizer, resume) -> loop over steps (forward,
backward, clip, step; log / eval / checkpoint every so often) -> finish on rank 0 (whole-split
valid and test bpc, a sample, artifacts). What every task's loop shares (checkpoints, the
non-finite stop, MLflow buffering) is in :mod:`service.worker.worker`.

Data layout: the training ids are cut into ``data.batch_size`` contiguous streams
(:func:`hypermodels.stream_batches`); rank ``r`` of ``W`` trains on streams ``[r*b, (r+1)*b)`` with
``b = batch_size / W``. A step is one ``seq_len`` segment of every stream (the position's batch
is the segment's index); the recurrent state is carried from segment to segment (detached:
truncated BPTT) and reset when the epoch wraps.
"""

from __future__ import annotations

import math
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hypermodels import CharLM, CharVocab, HyperLSTM, bits_per_char, detach_state, stream_batches

from ...io.tracking import MetricBuffer
from ...worker import plots
from ...worker.worker import Window, Worker, log_model, make_optimizer, seed_rank
from .data import PreparedText, load_prepared, load_split
from .model import build_model
from .spec import CharLMJob

PAD = -100
SAMPLE_WIDTH = 80


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train.torch  # deferred: see service.worker.worker

    # ---- set-up -------------------------------------------------------------------------------
    w = Worker(config, CharLMJob)
    spec, device, rank, world = w.spec, w.device, w.rank, w.world
    tr, T, B = spec.train, spec.data.seq_len, spec.data.batch_size

    prepared = load_prepared(config["data_root"])
    vocab_size = len(prepared.vocab)
    train_ids = load_split(prepared, "train")
    valid_ids = load_split(prepared, "valid")

    torch.manual_seed(tr.seed)  # identical initial weights on every rank
    model: CharLM = build_model(spec, vocab_size).to(device)
    optimizer = make_optimizer(tr.optimizer, model.parameters())
    seed_rank(tr.seed, rank)

    b = B // world
    inputs, targets = stream_batches(train_ids, B, pad_id=PAD)
    inputs = inputs[:, rank * b : (rank + 1) * b].contiguous().to(device)
    targets = targets[:, rank * b : (rank + 1) * b].contiguous().to(device)
    segments_per_epoch = math.ceil(inputs.shape[0] / T)
    total_steps = tr.total_steps(segments_per_epoch)

    pos, state = w.restore(model, optimizer)
    ddp = ray.train.torch.prepare_model(model)  # DistributedDataParallel when world > 1
    w.start(pos, total_steps, model, batches_per_epoch=segments_per_epoch, unit="segments")
    meta = {"data_root": prepared.root, "content_hash": prepared.content_hash, "vocab_size": vocab_size}

    def evaluate(ids: torch.Tensor, cap: int | None = None) -> tuple[float, int]:
        """Bits per character on rank 0's unwrapped model, broadcast to every rank."""
        ids = ids[: cap + 1] if cap else ids
        value = bits_per_char(model, ids, batch_size=spec.data.eval_batch_size, seq_len=T) if rank == 0 else 0.0
        return w.broadcast(value), ids.numel() - 1

    # ---- training loop ------------------------------------------------------------------------
    window = Window()
    model.train()
    while pos.step < total_steps:
        if pos.batch == segments_per_epoch:  # epoch wrap: start the streams again from zero state
            pos.epoch, pos.batch, state = pos.epoch + 1, 0, None
        t0 = time.perf_counter()
        x = inputs[pos.batch * T : (pos.batch + 1) * T]
        y = targets[pos.batch * T : (pos.batch + 1) * T]

        with w.autocast():
            logits, state = ddp(x, state)
            loss_sum = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1), ignore_index=PAD, reduction="sum")
        state = detach_state(state)
        totals = w.optimize(pos, model, optimizer, loss_sum, int((y != PAD).sum()))
        if totals is None:  # non-finite: the driver reports it (service.worker.worker)
            return
        pos.step, pos.batch = pos.step + 1, pos.batch + 1
        window.add(*totals, time.perf_counter() - t0)

        if pos.step % tr.log_every == 0 or pos.step == total_steps:
            window = w.log_window(
                pos,
                total_steps,
                window,
                optimizer,
                loss=("train_bpc", window.mean_loss() / math.log(2), "bpc"),
                rate=("tokens_per_s", "tok/s"),
            )

        if pos.step % tr.eval_every == 0 and pos.step < total_steps:
            valid_bpc, symbols = evaluate(valid_ids, tr.eval_max_symbols)
            w.evaluated(pos, f"{symbols:,} symbols", valid_bpc=valid_bpc)

        if pos.step % tr.checkpoint_every == 0 or pos.step == total_steps:
            w.save_checkpoint(pos, model, optimizer, meta, recurrent_state=state)

    # ---- finish (rank 0): whole-split evaluation, a sample, artifacts -------------------------
    if rank != 0:
        return
    final_valid = bits_per_char(model, valid_ids, batch_size=spec.data.eval_batch_size, seq_len=T)
    final = {"valid_bpc": final_valid, "final_valid_bpc": final_valid}
    if prepared.has_split("test"):
        final["test_bpc"] = bits_per_char(
            model, load_split(prepared, "test"), batch_size=spec.data.eval_batch_size, seq_len=T
        )
    w.log(total_steps, **final)
    assert w.tracker is not None
    w.tracker.flush()
    w.emit(event="final", step=total_steps, metrics={k: v for k, v in final.items() if k != "final_valid_bpc"})
    finish_artifacts(spec, model, prepared, valid_ids, w.tracker)


def wrap(text: str, width: int = SAMPLE_WIDTH) -> str:
    """``text`` with every line broken at spaces to at most ``width`` characters: a viewer (MLflow's
    artifact preview) then shows the lines as written instead of wrapping them mid-word."""
    return "\n".join(textwrap.fill(line, width, break_on_hyphens=False) for line in text.split("\n"))


def finish_artifacts(
    spec: CharLMJob, model: CharLM, prepared: PreparedText, valid_ids: torch.Tensor, tracker: MetricBuffer
) -> None:
    """Final model, sampled text, learning curve and (HyperLSTM) weight-scaling plot."""
    vocab = CharVocab(prepared.vocab)
    model.eval()
    with tempfile.TemporaryDirectory(prefix="hyperctl-artifacts-") as tmp:
        tmp_path = Path(tmp)
        log_model(tracker, model, spec, vocab=list(prepared.vocab))
        if spec.train.sample_length:
            prime = valid_ids[: min(40, valid_ids.numel())].tolist()
            generator = torch.Generator().manual_seed(spec.train.seed)
            sampled = model.sample(prime, spec.train.sample_length, generator=generator)
            text = (
                f"prime ({len(prime)} symbols from the validation split):\n"
                f"{wrap(vocab.to_text(prime, prepared.ptb_format))}\n\n"
                f"sample ({len(sampled)} symbols, temperature 1):\n"
                f"{wrap(vocab.to_text(sampled, prepared.ptb_format))}\n"
            )
            tracker.log_text(text, "sample.txt")

        plots.log_learning_curve(
            tracker,
            "train_bpc",
            "valid_bpc",
            title=spec.name,
            train_label="train bpc",
            valid_label="valid bpc",
            ylabel="bits per character",
        )

        if isinstance(model.rnn, HyperLSTM):
            snippet = valid_ids[: min(plots.SCALING_VIEW_STEPS, valid_ids.numel())]
            device = model.decoder.weight.device
            x = F.one_hot(snippet.to(device), len(prepared.vocab)).to(model.decoder.weight.dtype).unsqueeze(1)
            d_h, d_x = model.rnn.scaling_vectors(x)
            plots.scaling_vectors(
                d_h.cpu(), d_x.cpu(), vocab.decode(snippet.tolist()), str(tmp_path / "scaling_vectors.png")
            )
            tracker.log_artifact(str(tmp_path / "scaling_vectors.png"), "plots")


__all__ = ["finish_artifacts", "train_loop_per_worker", "wrap"]
