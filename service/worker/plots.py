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


PREVIEW_DPI = 100  # with the sizes below, pictures 800 px wide: MLflow's artifact pane scales them to its width
SCALING_VIEW_STEPS = 48  # symbols of the weight-scaling view: more are unreadable in the preview


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
    """Train and validation curves against the optimizer step, on one axis; with ``valid_axis``
    (the validation metric has another unit, e.g. error rate beside a loss) the validation curve
    gets a panel of its own below, sharing the step axis: one y axis and one legend per panel."""
    plt = pyplot()
    if valid_axis:
        fig, (ax, vax) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        vax = ax
    if train:
        ax.plot(*zip(*train, strict=True), label=train_label, lw=1.2)
    if valid:
        vax.plot(*zip(*valid, strict=True), "o-", color="tab:orange", label=valid_label, lw=1.5, ms=4)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "learning curve")
    for a in {ax, vax}:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend()
    if valid_axis:
        vax.set_ylabel(valid_axis)
    vax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=PREVIEW_DPI)
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


def _symbol_labels(symbols: Sequence[str]) -> list[str]:
    return [{"\n": "⏎", " ": "␣"}.get(s, s) for s in symbols]


def scaling_vectors_figure(
    d_h: torch.Tensor,
    d_x: torch.Tensor,
    symbols: Sequence[str],
    max_units: int = 64,
    max_steps: int = SCALING_VIEW_STEPS,
) -> Any:
    """The paper's Fig. 5-6 view of one stream of text, as a matplotlib figure of 800 x 650 px.

    ``d_h``, ``d_x``: ``(num_layers, T, B, 4, N_h)`` from ``HyperLSTM.scaling_vectors``; stream 0 and
    its first ``max_steps`` steps are drawn (more symbols than that are unreadable at this width).
    Top: the L2-norm change of d_h and d_x between consecutive steps, per layer. Bottom: heatmap of
    d_h of layer 1's input gate for the first ``max_units`` of its N_h units (the title says which).
    Both panels carry the input symbols along the x axis.
    """
    plt = pyplot()
    layers, steps, n_h = d_h.shape[0], min(d_h.shape[1], max_steps), d_h.shape[-1]
    units = min(max_units, n_h)
    d_h, d_x = d_h[:, :steps], d_x[:, :steps]
    fig, (ax, hm) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [1, 1.3]})
    for k in range(layers):
        suffix = f" (layer {k + 1})" if layers > 1 else ""
        ax.plot(range(1, steps), norm_changes(d_h[k, :, 0]), label=f"‖Δd_h‖{suffix}")
        ax.plot(range(1, steps), norm_changes(d_x[k, :, 0]), label=f"‖Δd_x‖{suffix}", ls="--")
    ax.set_ylabel("L2 norm of change\nfrom the previous step")
    ax.set_title(f"HyperLSTM weight-scaling vectors over {steps} symbols (paper Fig. 5-6)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    heat = d_h[0, :, 0, 0, :units].double().t()
    extent = (-0.5, steps - 0.5, units + 0.5, 0.5)  # rows numbered as the title counts units: from 1
    im = hm.imshow(heat.numpy(), aspect="auto", cmap="RdBu_r", interpolation="nearest", extent=extent)
    fig.colorbar(im, ax=hm, orientation="horizontal", fraction=0.05, pad=0.2, label="d_h value")
    shown = f"units 1-{units} of {n_h}" if units < n_h else f"all {n_h} units"
    hm.set_title(f"d_h of the input gate, layer 1: {shown}", fontsize=11)
    hm.set_ylabel("unit")
    labels = _symbol_labels(symbols[:steps])
    for a in (ax, hm):  # sharex hides the top panel's labels: both read the symbols
        a.set_xticks(range(len(labels)))
        a.set_xticklabels(labels, fontsize=9, family="monospace")
        a.tick_params(axis="x", labelbottom=True, length=2)
    fig.tight_layout()
    return fig


def scaling_vectors(d_h: torch.Tensor, d_x: torch.Tensor, symbols: Sequence[str], path: str, **kw: int) -> None:
    """:func:`scaling_vectors_figure` saved as a PNG at ``path``."""
    fig = scaling_vectors_figure(d_h, d_x, symbols, **kw)
    fig.savefig(path, dpi=PREVIEW_DPI)
    pyplot().close(fig)


__all__ = [
    "PREVIEW_DPI",
    "SCALING_VIEW_STEPS",
    "learning_curve",
    "log_learning_curve",
    "norm_changes",
    "pyplot",
    "scaling_vectors",
    "scaling_vectors_figure",
]
