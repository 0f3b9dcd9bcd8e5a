"""The picture of an image job: the generated conv kernels, as the paper shows them."""

from __future__ import annotations

import torch

from ...worker.plots import pyplot


def kernel_grid(kernels: dict[str, torch.Tensor], path: str, title: str = "", max_layers: int = 4) -> None:
    """Generated conv kernels as the paper shows them: for each layer (up to ``max_layers``), the
    first 16 x 16 (out x in) basic kernel as a mosaic of its f x f filters, each filter scaled
    to its own range."""
    plt = pyplot()
    names = list(kernels)[:max_layers]
    fig, axes = plt.subplots(1, len(names), figsize=(max(6.5, 4.2 * len(names)), 4.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        k = kernels[name].detach().float().cpu()[:16, :16]
        out, inp, f, _ = k.shape
        lo = k.amin(dim=(2, 3), keepdim=True)
        hi = k.amax(dim=(2, 3), keepdim=True)
        k = (k - lo) / (hi - lo).clamp_min(1e-12)
        mosaic = torch.ones(out * (f + 1) - 1, inp * (f + 1) - 1)
        for o in range(out):
            for i in range(inp):
                mosaic[o * (f + 1) : o * (f + 1) + f, i * (f + 1) : i * (f + 1) + f] = k[o, i]
        ax.imshow(mosaic.numpy(), cmap="gray", interpolation="nearest")
        ax.set_title(f"{name}\n{out}x{inp} filters of {f}x{f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "generated kernels", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["kernel_grid"]
