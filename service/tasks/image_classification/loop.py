"""The Ray Train worker loop of ``task: image_classification``: data-parallel training of a
convnet whose kernels a static hypernetwork generates (or of the plain baseline).

Read top to bottom: set up (spec, data, model, optimizer, resume) -> loop over steps (a global
batch split across ranks; forward, backward, clip, step; log / eval / checkpoint every so often)
-> finish on rank 0 (valid and test error, parameter counts, kernel picture, artifacts).

Data order: epoch ``e`` visits the training images in the permutation drawn from
``seed + e``; global batch ``i`` is images ``[i*G, (i+1)*G)`` of it, ``G = data.batch_size x
train.accumulate_steps`` (the last partial batch is dropped); its micro-batch ``j`` is images
``[j*B, (j+1)*B)`` of that, of which rank ``r`` takes its slice ``[r*b, (r+1)*b)``. A checkpoint's
(epoch, batch) position therefore resumes the exact same order.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hypermodels import MNISTConvNet, WideResNet

from ...io.tracking import TAG_PREFIX, MetricBuffer
from ...worker import plots
from ...worker.worker import Window, Worker, log_model, make_optimizer, seed_rank
from .data import PreparedImages, load_prepared, load_split
from .model import build_model, parameter_counts
from .plots import kernel_grid
from .spec import ImageJob
from .use import NORMALISATION_FILE, normalisation_document


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, standardised per channel with the training split's statistics."""
    return (x.float() / 255.0 - mean) / std


def augment(x: torch.Tensor, pad_crop: int, flip: bool) -> torch.Tensor:
    """The paper's augmentation on a float batch: zero-pad by ``pad_crop`` and crop back at a random
    offset per image; random horizontal flips. The random draws come from the CPU generator (the
    same numbers whatever device ``x`` is on, saved with each checkpoint); the result stays on ``x``'s device."""
    if pad_crop:
        b, _, h, w = x.shape
        padded = F.pad(x, (pad_crop,) * 4)
        dy = torch.randint(0, 2 * pad_crop + 1, (b,))
        dx = torch.randint(0, 2 * pad_crop + 1, (b,))
        x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    if flip:
        mask = (torch.rand(x.shape[0]) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """(error rate, mean cross-entropy) of ``model`` over a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    wrong, loss = 0, 0.0
    device = mean.device
    for i in range(0, len(x), batch_size):
        xb, yb = normalise(x[i : i + batch_size].to(device), mean, std), y[i : i + batch_size].to(device)
        logits = model(xb)
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        wrong += int((logits.argmax(1) != yb).sum())
    model.train(was_training)
    return wrong / max(len(x), 1), loss / max(len(x), 1)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train.torch  # deferred: see service.worker.worker

    # ---- set-up -------------------------------------------------------------------------------
    w = Worker(config, ImageJob)
    spec, device, rank, world = w.spec, w.device, w.rank, w.world
    tr, B = spec.train, spec.data.batch_size
    G = B * tr.accumulate_steps  # the global batch of one optimizer step

    prepared = load_prepared(config["data_root"])
    train_x, train_y = load_split(prepared, "train")
    valid_x, valid_y = load_split(prepared, "valid")
    mean = torch.tensor(prepared.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(prepared.std, device=device).view(1, -1, 1, 1).clamp_min(1e-6)

    torch.manual_seed(tr.seed)  # identical initial weights on every rank
    model = build_model(spec, prepared.shape, prepared.num_classes).to(device)
    optimizer = make_optimizer(tr.optimizer, model.parameters())
    seed_rank(tr.seed, rank)

    b = B // world
    batches_per_epoch = len(train_x) // G
    if batches_per_epoch == 0:
        raise ValueError(
            f"data.batch_size x train.accumulate_steps ({G}) is larger than the training split ({len(train_x)} images)"
        )
    total_steps = tr.total_steps(batches_per_epoch)  # None: train.time_budget alone bounds the run

    pos, _ = w.restore(model, optimizer, total_steps)
    ddp = ray.train.torch.prepare_model(model)  # DistributedDataParallel when world > 1
    w.start(pos, total_steps, model, batches_per_epoch=batches_per_epoch, unit="batches")
    meta = {"data_root": prepared.root, "content_hash": prepared.content_hash}

    def epoch_order(epoch: int) -> torch.Tensor:
        return torch.randperm(len(train_x), generator=torch.Generator().manual_seed(tr.seed * 100_003 + epoch))

    def validate() -> tuple[float, float]:
        err, loss = evaluate(model, valid_x, valid_y, mean, std, spec.data.eval_batch_size) if rank == 0 else (0.0, 0.0)
        return w.broadcast(err), w.broadcast(loss)

    # ---- training loop ------------------------------------------------------------------------
    window, order = Window(), epoch_order(pos.epoch)
    model.train()
    while not w.done(pos):
        if pos.batch == batches_per_epoch:  # next epoch, next permutation
            pos.epoch, pos.batch = pos.epoch + 1, 0
            order = epoch_order(pos.epoch)
        t0 = time.perf_counter()
        for i in w.micro_batches(ddp):
            start = pos.batch * G + i * B
            idx = order[start + rank * b : start + (rank + 1) * b]
            x = augment(
                normalise(train_x[idx].to(device), mean, std), spec.data.augment.pad_crop, spec.data.augment.flip
            )
            y = train_y[idx].to(device)
            with w.autocast():
                logits = ddp(x)
                loss_sum = F.cross_entropy(logits, y, reduction="sum")
            w.backward(loss_sum, len(y))
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
                loss=("train_loss", window.mean_loss(), "nats"),
                rate=("images_per_s", "images/s"),
            )

        if w.eval_due(pos):
            valid_error, valid_loss = validate()
            w.evaluated(pos, f"{len(valid_x):,} images", valid_error=valid_error, valid_loss=valid_loss)

        if w.checkpoint_due(pos):
            w.save_checkpoint(pos, model, optimizer, meta)

    # ---- finish (rank 0): valid and test error, parameter counts, artifacts --------------------
    if not w.finishes():  # rank 0 finishes, unless preempted
        return
    test_x, test_y = load_split(prepared, "test")
    valid_error, valid_loss = evaluate(model, valid_x, valid_y, mean, std, spec.data.eval_batch_size)
    test_error, test_loss = evaluate(model, test_x, test_y, mean, std, spec.data.eval_batch_size)
    counts = parameter_counts(model)
    curve = {"valid_error": valid_error, "valid_loss": valid_loss}
    w.log_final(pos.step, curve=curve, figures={"test_error": test_error, "test_loss": test_loss})
    assert w.tracker is not None
    # Parameter counts are properties of the model, not of training: tags (a column each in the runs
    # table), never metrics (a one-point chart each).
    w.tracker.set_tags(**{f"{TAG_PREFIX}{k}": v for k, v in counts.items()})
    w.emit(
        event="info", text="parameters: " + ", ".join(f"{k.removeprefix('params_')} {v:,}" for k, v in counts.items())
    )
    finish_artifacts(spec, model, prepared, w.tracker)


def finish_artifacts(
    spec: ImageJob, model: MNISTConvNet | WideResNet, prepared: PreparedImages, tracker: MetricBuffer
) -> None:
    """Final model, learning curve and (hyper kernels) the picture of the generated kernels."""
    model.eval()
    with tempfile.TemporaryDirectory(prefix="hyperctl-artifacts-") as tmp:
        tmp_path = Path(tmp)
        example = np.zeros((1, *prepared.shape), dtype=np.float32)  # (batch, C, H, W), standardised
        log_model(tracker, model, spec, example, {NORMALISATION_FILE: normalisation_document(prepared)})
        plots.log_learning_curve(
            tracker,
            "train_loss",
            "valid_error",
            title=spec.name,
            train_label="train loss",
            valid_label="valid error",
            ylabel="cross-entropy (nats)",
            valid_axis="error rate",
        )
        if spec.model.kernels == "hyper":
            with torch.no_grad():
                kernels = model.generated_kernels()
            kernel_grid(
                kernels,
                str(tmp_path / "generated_kernels.png"),
                title=f"{spec.name}: kernels generated by the hypernetwork (N_z = {spec.model.hyper.embed_size})",
            )
            tracker.log_artifact(str(tmp_path / "generated_kernels.png"), "plots")


__all__ = ["augment", "evaluate", "normalise", "train_loop_per_worker"]
