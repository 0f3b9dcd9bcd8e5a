"""The handwriting task's pictures: a grid of drawn sequences, and the weight-scaling vectors of a
HyperLSTM over a sequence with its pen lifts marked (the paper's handwriting figure)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ...worker.plots import norm_changes, pyplot


def strokes(seq: np.ndarray) -> list[np.ndarray]:
    """Stroke-3 rows ``(n, 3)`` -> the pen-down polylines, each ``(k, 2)`` absolute positions."""
    xy = np.cumsum(seq[:, :2], axis=0)
    ends = np.flatnonzero(seq[:, 2] > 0.5) + 1
    return [part for part in np.split(xy, ends) if len(part)]


def draw(ax: object, seq: np.ndarray, color: str = "black") -> None:
    """One sequence on ``ax``: y down (screen coordinates), equal aspect, no axes."""
    for line in strokes(seq):
        ax.plot(line[:, 0], line[:, 1], color=color, lw=1.2, solid_capstyle="round")  # type: ignore[attr-defined]
    ax.set_aspect("equal", adjustable="datalim")  # type: ignore[attr-defined]
    ax.invert_yaxis()  # type: ignore[attr-defined]
    ax.axis("off")  # type: ignore[attr-defined]


def sample_grid(seqs: list[np.ndarray], path: str, title: str) -> None:
    """The sequences (raw units, stroke-3) drawn in a near-square grid."""
    plt = pyplot()
    cols = max(1, math.ceil(math.sqrt(len(seqs))))
    rows = max(1, math.ceil(len(seqs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows + 0.4), squeeze=False)
    for ax, seq in zip(axes.flat, seqs, strict=False):
        draw(ax, seq)
    for ax in list(axes.flat)[len(seqs) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def scaling_vectors(seq: np.ndarray, d_h: torch.Tensor, d_x: torch.Tensor, path: str, title: str) -> None:
    """Top: the sequence, each stroke in its own colour. Bottom: ‖d_t − d_(t−1)‖ of d_h and d_x per
    layer against the point index, with the pen lifts as vertical lines (where the paper sees the
    weights change most). ``d_h``, ``d_x``: ``(num_layers, T, B, 4, N_h)``, stream 0 drawn."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(8.0, len(seq) * 0.05), 6.5), gridspec_kw={"height_ratios": [1.2, 1]}
    )
    colours = plt.get_cmap("tab10")
    for k, line in enumerate(strokes(seq)):
        top.plot(line[:, 0], line[:, 1], color=colours(k % 10), lw=1.5)
    top.set_aspect("equal", adjustable="datalim")
    top.invert_yaxis()
    top.axis("off")
    top.set_title(title, fontsize=10)
    steps = np.arange(1, d_h.shape[1])
    for k in range(d_h.shape[0]):
        suffix = f" (layer {k + 1})" if d_h.shape[0] > 1 else ""
        bottom.plot(steps, norm_changes(d_h[k, :, 0]).numpy(), label=f"‖Δd_h‖{suffix}", lw=1.0)
        bottom.plot(steps, norm_changes(d_x[k, :, 0]).numpy(), label=f"‖Δd_x‖{suffix}", lw=1.0, ls="--")
    for i, t in enumerate(np.flatnonzero(seq[:, 2] > 0.5)):
        bottom.axvline(t, color="grey", lw=0.8, alpha=0.6, label="pen lifted" if i == 0 else None)
    bottom.set_yscale("log")  # the first steps' change (from the zero state) dwarfs the rest
    bottom.set_xlabel("point")
    bottom.set_ylabel("L2 norm of change")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["draw", "sample_grid", "scaling_vectors", "strokes"]
