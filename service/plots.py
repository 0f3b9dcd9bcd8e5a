"""Plots logged as run artifacts: learning curves, the HyperLSTM weight-scaling view (Fig. 5-6),
the generated conv kernels (the static hypernetwork's, as the paper shows them) and attention maps."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def learning_curve(train: Sequence[tuple[int, float]], valid: Sequence[tuple[int, float]], path: str,
                   title: str = "", train_label: str = "train bpc", valid_label: str = "valid bpc",
                   ylabel: str = "bits per character", valid_axis: str | None = None) -> None:
    """Train and validation curves against the optimizer step; with ``valid_axis`` the validation
    curve gets its own y axis (e.g. loss on the left, error rate on the right)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train), label=train_label, lw=1.2)
    vax = ax.twinx() if valid_axis else ax
    if valid:
        vax.plot(*zip(*valid), "o-", color="tab:orange", label=valid_label, lw=1.5, ms=4)
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


def norm_changes(d: torch.Tensor) -> torch.Tensor:
    """``||d_t - d_{t-1}||_2`` per step for ``d`` ``(T, ...)``; returns ``(T-1,)``."""
    flat = d.reshape(d.shape[0], -1).double()
    return (flat[1:] - flat[:-1]).norm(dim=1)


def scaling_vectors(d_h: torch.Tensor, d_x: torch.Tensor, symbols: Sequence[str], path: str,
                    max_units: int = 64) -> None:
    """The paper's Fig. 5-6 view for one stream of text.

    ``d_h``, ``d_x``: ``(num_layers, T, B, 4, N_h)`` from ``HyperLSTM.scaling_vectors``; stream 0 is
    drawn. Top: the L2-norm change of d_h and d_x between consecutive steps, per layer, with the
    input symbols along the x axis. Bottom: heatmap of the first ``max_units`` units of d_h
    (gate i, layer 1) over time.
    """
    layers, T = d_h.shape[0], d_h.shape[1]
    fig, (ax, hm) = plt.subplots(2, 1, figsize=(max(8, T * 0.14), 7), sharex=True,
                                 gridspec_kw={"height_ratios": [1, 1.3]})
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


__all__ = ["learning_curve", "norm_changes", "scaling_vectors"]


def kernel_grid(kernels: dict[str, torch.Tensor], path: str, title: str = "", max_layers: int = 4) -> None:
    """Generated conv kernels as the paper shows them: for each layer (up to ``max_layers``), the
    first 16 x 16 (out x in) basic kernel as a mosaic of its f x f filters, each filter scaled
    to its own range."""
    names = list(kernels)[:max_layers]
    fig, axes = plt.subplots(1, len(names), figsize=(max(6.5, 4.2 * len(names)), 4.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        k = kernels[name].detach().float().cpu()[:16, :16]
        out, inp, f, _ = k.shape
        lo = k.amin(dim=(2, 3), keepdim=True)
        hi = k.amax(dim=(2, 3), keepdim=True)
        k = (k - lo) / (hi - lo).clamp_min(1e-12)
        mosaic = torch.ones(out * (f + 1) - 1, inp * (f + 1) - 1)
        for o in range(out):
            for i in range(inp):
                mosaic[o * (f + 1):o * (f + 1) + f, i * (f + 1):i * (f + 1) + f] = k[o, i]
        ax.imshow(mosaic.numpy(), cmap="gray", interpolation="nearest")
        ax.set_title(f"{name}\n{out}x{inp} filters of {f}x{f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "generated kernels", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def attention_maps(maps: Sequence[tuple[list[str], list[str], torch.Tensor]], path: str, title: str = "") -> None:
    """Attention heatmaps: for each sentence, (source pieces, output pieces, weights (T_out, S))."""
    fig, axes = plt.subplots(1, len(maps), figsize=(5.5 * len(maps), 5.0), squeeze=False)
    for ax, (src, out, weights) in zip(axes[0], maps):
        ax.imshow(weights.detach().float().cpu().numpy(), cmap="viridis", aspect="auto", vmin=0.0)
        ax.set_xticks(range(len(src)))
        ax.set_xticklabels(src, rotation=90, fontsize=7)
        ax.set_yticks(range(len(out)))
        ax.set_yticklabels(out, fontsize=7)
        ax.set_xlabel("source")
        ax.set_ylabel("output")
    fig.suptitle(title or "attention")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
