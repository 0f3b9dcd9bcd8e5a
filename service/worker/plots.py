"""Plots every task may log as run artifacts: learning curves and the HyperLSTM weight-scaling view
(paper Fig. 5-6). A task's own pictures live in its folder and draw with :func:`pyplot`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import torch

from ..io.tracking import RunLog


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend. Deferred: matplotlib takes a second to
    import, and only the end of a run draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(
    train: Sequence[tuple[int, float]],
    valid: Sequence[tuple[int, float]],
    path: str,
    *,
    title: str,
    train_label: str,
    valid_label: str,
    ylabel: str,
    valid_axis: str | None = None,
) -> None:
    """Train and validation curves against the optimizer step; with ``valid_axis`` the validation
    curve gets its own y axis (e.g. loss on the left, error rate on the right)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train, strict=True), label=train_label, lw=1.2)
    vax = ax.twinx() if valid_axis else ax
    if valid:
        vax.plot(*zip(*valid, strict=True), "o-", color="tab:orange", label=valid_label, lw=1.5, ms=4)
    if valid_axis:
        vax.set_ylabel(valid_axis)
        vax.legend(loc="upper center")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_learning_curve(
    tracker: RunLog,
    train_metric: str,
    valid_metric: str,
    *,
    title: str,
    train_label: str,
    valid_label: str,
    ylabel: str,
    valid_axis: str | None = None,
) -> None:
    """:func:`learning_curve` of two of the run's metrics, logged as ``plots/learning_curve.png``."""
    with tempfile.TemporaryDirectory(prefix="hyperctl-plot-") as tmp:
        path = os.path.join(tmp, "learning_curve.png")
        learning_curve(
            tracker.history(train_metric),
            tracker.history(valid_metric),
            path,
            title=title,
            train_label=train_label,
            valid_label=valid_label,
            ylabel=ylabel,
            valid_axis=valid_axis,
        )
        tracker.log_artifact(path, "plots")


def norm_changes(d: torch.Tensor) -> torch.Tensor:
    """``||d_t - d_{t-1}||_2`` per step for ``d`` ``(T, ...)``; returns ``(T-1,)``."""
    flat = d.reshape(d.shape[0], -1).double()
    return (flat[1:] - flat[:-1]).norm(dim=1)


def scaling_vectors(
    d_h: torch.Tensor, d_x: torch.Tensor, symbols: Sequence[str], path: str, max_units: int = 64
) -> None:
    """The paper's Fig. 5-6 view for one stream of text.

    ``d_h``, ``d_x``: ``(num_layers, T, B, 4, N_h)`` from ``HyperLSTM.scaling_vectors``; stream 0 is
    drawn. Top: the L2-norm change of d_h and d_x between consecutive steps, per layer, with the
    input symbols along the x axis. Bottom: heatmap of the first ``max_units`` units of d_h
    (gate i, layer 1) over time.
    """
    plt = pyplot()
    layers, T = d_h.shape[0], d_h.shape[1]
    fig, (ax, hm) = plt.subplots(
        2, 1, figsize=(max(8, T * 0.14), 7), sharex=True, gridspec_kw={"height_ratios": [1, 1.3]}
    )
    steps = range(1, T)
    for k in range(layers):
        suffix = f" (layer {k + 1})" if layers > 1 else ""
        ax.plot(steps, norm_changes(d_h[k, :, 0]), label=f"‖Δd_h‖{suffix}")
        ax.plot(steps, norm_changes(d_x[k, :, 0]), label=f"‖Δd_x‖{suffix}", ls="--")
    ax.set_ylabel("L2 norm of change")
    ax.set_title("HyperLSTM weight-scaling vectors over time (paper Fig. 5-6)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    heat = d_h[0, :, 0, 0, :max_units].double().t()
    im = hm.imshow(heat.numpy(), aspect="auto", cmap="RdBu_r", interpolation="nearest")
    fig.colorbar(im, ax=hm, orientation="horizontal", fraction=0.05, pad=0.25, label="d_h (input gate)")
    hm.set_ylabel("unit")
    labels = [s if s not in ("\n", " ") else "⏎" if s == "\n" else "␣" for s in symbols[:T]]
    hm.set_xticks(range(len(labels)))
    hm.set_xticklabels(labels, fontsize=7, family="monospace")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["learning_curve", "log_learning_curve", "norm_changes", "pyplot", "scaling_vectors"]
