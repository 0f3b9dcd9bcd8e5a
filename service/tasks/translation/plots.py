"""The picture of a translation job: attention heatmaps of a few translated sentences."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...worker.plots import pyplot


def attention_maps(maps: Sequence[tuple[list[str], list[str], torch.Tensor]], path: str, title: str = "") -> None:
    """Attention heatmaps: for each sentence, (source pieces, output pieces, weights (T_out, S))."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(maps), figsize=(5.5 * len(maps), 5.0), squeeze=False)
    for ax, (src, out, weights) in zip(axes[0], maps, strict=True):
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


__all__ = ["attention_maps"]
