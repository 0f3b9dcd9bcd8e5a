"""The parameter count an image job describes, without building it (no torch: ``validate`` is quick)."""

from __future__ import annotations

from hypermodels.sizes import mnist_convnet_parameters, wide_resnet_parameters

from .spec import ImageJob


def input_shape(spec: ImageJob) -> tuple[int, int, int]:
    """The images' (channels, height, width) before the data is read: CIFAR-10's for its batches, else MNIST's."""
    cifar = spec.data.dataset is None and spec.data.format == "cifar10"
    return (3, 32, 32) if cifar else (1, 28, 28)


def parameter_count(spec: ImageJob, channels: int | None = None, num_classes: int = 10) -> int:
    """Trainable parameters of :func:`.model.build_model` (``channels`` default: :func:`input_shape`'s)."""
    m, hyper = spec.model, spec.model.kernels == "hyper"
    assert m.hyper.embed_size is not None  # the spec fills in the architecture's default
    if m.arch == "mnist_convnet":
        return mnist_convnet_parameters(hyper=hyper, embed_size=m.hyper.embed_size)
    return wide_resnet_parameters(
        depth=m.depth,
        widen_factor=m.widen_factor,
        num_classes=num_classes,
        hyper=hyper,
        embed_size=m.hyper.embed_size,
        in_channels=channels or input_shape(spec)[0],
        shortcut=m.shortcut,
        bn_scale=m.bn_scale,
    )


__all__ = ["input_shape", "parameter_count"]
