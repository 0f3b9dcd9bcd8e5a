"""The convnet an ``image_classification`` job describes: spec fields -> hypermodels arguments."""

from __future__ import annotations

from torch import nn

from hypermodels import MNISTConvNet, WideResNet, count_parameters, hyper_conv_layers, variable_count

from .spec import ImageJob


def build_model(spec: ImageJob, shape: tuple[int, int, int], num_classes: int) -> MNISTConvNet | WideResNet:
    """The convnet of an image job; ``shape`` is the images' (channels, height, width)."""
    m, hyper = spec.model, spec.model.kernels == "hyper"
    assert m.hyper.embed_size is not None  # the spec fills in the architecture's default
    if m.arch == "mnist_convnet":
        if tuple(shape) != (1, 28, 28) or num_classes != 10:
            raise ValueError(
                f"model.arch mnist_convnet takes 1x28x28 images in 10 classes, the data has "
                f"{'x'.join(map(str, shape))} images in {num_classes} classes (use wide_resnet)"
            )
        return MNISTConvNet(hyper=hyper, embed_size=m.hyper.embed_size)
    return WideResNet(
        depth=m.depth,
        widen_factor=m.widen_factor,
        num_classes=num_classes,
        hyper=hyper,
        embed_size=m.hyper.embed_size,
        in_channels=shape[0],
        dropout=m.dropout,
        shortcut=m.shortcut,
        bn_scale=m.bn_scale,
    )


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters: all, the hypernetwork's, the layer embeddings', and the weights of
    the kernels it generates (which are not parameters), for MLflow and the terminal. With batch
    norm, also the count with its running statistics: the convention of the paper's figures."""
    counts = {"params_total": count_parameters(model)}
    with_statistics = variable_count(model)
    if with_statistics != counts["params_total"]:
        counts["params_with_bn_statistics"] = with_statistics
    layers = hyper_conv_layers(model)
    if layers:
        hypernet = model.hyper
        assert isinstance(hypernet, nn.Module)
        counts["params_hypernetwork"] = count_parameters(hypernet)
        counts["params_embeddings"] = sum(layer.embeddings.numel() for _, layer in layers)
        counts["generated_kernel_weights"] = sum(layer.generate_weight().numel() for _, layer in layers)
    return counts


__all__ = ["build_model", "parameter_counts"]
