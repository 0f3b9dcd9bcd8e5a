"""The model a job spec describes: the one place that maps spec fields to hypermodels arguments."""
from __future__ import annotations

from torch import nn

from hypermodels import CharLM, MNISTConvNet, WideResNet, count_parameters

from .spec import CharLMJob, ImageJob, JobSpec, TranslationJob


def build_model(spec: CharLMJob, vocab_size: int) -> CharLM:
    m = spec.model
    return CharLM(vocab_size, cell=m.cell, hidden_size=m.hidden_size, num_layers=m.num_layers,
                  hyper_size=m.hyper.hidden_size, embed_size=m.hyper.embed_size, layer_norm=m.layer_norm,
                  dropout=m.dropout.output, recurrent_dropout=m.dropout.recurrent, input_dropout=m.dropout.input,
                  fast=m.fast)


def build_image_model(spec: ImageJob, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The convnet of an image job; ``shape`` is the images' (channels, height, width)."""
    m, hyper = spec.model, spec.model.kernels == "hyper"
    if m.arch == "mnist_convnet":
        if tuple(shape) != (1, 28, 28) or num_classes != 10:
            raise ValueError(f"model.arch mnist_convnet takes 1x28x28 images in 10 classes, the data has "
                             f"{'x'.join(map(str, shape))} images in {num_classes} classes (use wide_resnet)")
        return MNISTConvNet(hyper=hyper, embed_size=m.hyper.embed_size)
    return WideResNet(depth=m.depth, widen_factor=m.widen_factor, num_classes=num_classes, hyper=hyper,
                      embed_size=m.hyper.embed_size, in_channels=shape[0], dropout=m.dropout,
                      shortcut=m.shortcut, bn_scale=m.bn_scale)


def build_translation_model(spec: TranslationJob, src_vocab_size: int, tgt_vocab_size: int) -> nn.Module:
    """The encoder-decoder of a translation job (special ids as service.nmt_data fixes them)."""
    from hypermodels import Seq2Seq

    from .nmt_data import BOS_ID, EOS_ID, PAD_ID

    m = spec.model
    return Seq2Seq(src_vocab_size, tgt_vocab_size, cell=m.cell, hidden_size=m.hidden_size, num_layers=m.num_layers,
                   embedding_size=m.embedding_size, hyper_size=m.hyper.hidden_size, embed_size=m.hyper.embed_size,
                   layer_norm=m.layer_norm, dropout=m.dropout, attention=m.attention,
                   input_feeding=m.input_feeding, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters: all, the hypernetwork's, the layer embeddings', and the weights of
    the kernels it generates (which are not parameters), for MLflow and the terminal. With batch
    norm, also the count with its running statistics: the convention of the paper's figures."""
    from hypermodels import hyper_conv_layers, variable_count

    counts = {"params_total": count_parameters(model)}
    with_statistics = variable_count(model)
    if with_statistics != counts["params_total"]:
        counts["params_with_bn_statistics"] = with_statistics
    layers = hyper_conv_layers(model)
    if layers:
        hypernet = getattr(model, "hyper")
        counts["params_hypernetwork"] = count_parameters(hypernet)
        counts["params_embeddings"] = sum(layer.embeddings.numel() for _, layer in layers)
        counts["generated_kernel_weights"] = sum(layer.generate_weight().numel() for _, layer in layers)
    return counts


def model_parameter_count(spec: JobSpec) -> int:
    """Trainable parameters of the job's model before its data is prepared: a char LM at PTB's 50
    symbols, an image model at its data set's image shape (28x28 grey for idx files), a
    translation model at the configured subword vocabulary size."""
    if isinstance(spec, ImageJob):
        cifar = spec.data.dataset is None and spec.data.format == "cifar10"
        return count_parameters(build_image_model(spec, (3, 32, 32) if cifar else (1, 28, 28), 10))
    if isinstance(spec, TranslationJob):
        v = spec.data.subwords.vocab_size
        return count_parameters(build_translation_model(spec, v, v))
    return count_parameters(build_model(spec, 50))
