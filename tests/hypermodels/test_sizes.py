"""hypermodels.sizes (torch-free parameter counts) against the built models, over a grid of arguments."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from hypermodels import CharLM, MNISTConvNet, Seq2Seq, WideResNet, build_rnn, count_parameters, sizes


@pytest.mark.parametrize(
    "cell, num_layers, layer_norm, recurrent_dropout",
    list(itertools.product(["hyperlstm", "lstm", "ln_lstm"], [1, 2], [True, False], [0.0, 0.2])),
)
def test_rnn_and_charlm(cell, num_layers, layer_norm, recurrent_dropout) -> None:
    kw = dict(hyper_size=6, embed_size=3, layer_norm=layer_norm, recurrent_dropout=recurrent_dropout)
    built = build_rnn(cell, 7, 9, num_layers, **kw)
    assert sizes.rnn_parameters(cell, 7, 9, num_layers, **kw) == count_parameters(built)
    lm = CharLM(11, cell, 9, num_layers, **kw)
    assert sizes.charlm_parameters(11, cell, 9, num_layers, **kw) == count_parameters(lm)


@pytest.mark.parametrize(
    "cell, attention, input_feeding, num_layers",
    [("hyperlstm", "additive", True, 2), ("lstm", "general", False, 1), ("ln_lstm", "additive", False, 3)],
)
def test_seq2seq(cell, attention, input_feeding, num_layers) -> None:
    kw = dict(
        cell=cell,
        hidden_size=12,
        num_layers=num_layers,
        embedding_size=10,
        hyper_size=6,
        embed_size=2,
        attention=attention,
        input_feeding=input_feeding,
    )
    assert sizes.seq2seq_parameters(17, 19, **kw) == count_parameters(Seq2Seq(17, 19, **kw))


@pytest.mark.parametrize("hyper", [True, False])
def test_mnist_convnet(hyper) -> None:
    assert (
        sizes.mnist_convnet_parameters(hyper, 4)
        == count_parameters(MNISTConvNet(hyper, 4))
        == (
            12_910 if hyper else 21_210  # the paper's counts, as MNISTConvNet's docstring derives them
        )
    )


@pytest.mark.parametrize(
    "depth, widen_factor, hyper, shortcut, bn_scale",
    [
        (40, 1, True, "pad", False),
        (40, 2, False, "pad", False),
        (16, 2, True, "conv", True),
        (10, 1, False, "conv", True),
    ],
)
def test_wide_resnet(depth, widen_factor, hyper, shortcut, bn_scale) -> None:
    kw = dict(depth=depth, widen_factor=widen_factor, hyper=hyper, shortcut=shortcut, bn_scale=bn_scale)
    assert sizes.wide_resnet_parameters(**kw, embed_size=8, in_channels=3) == count_parameters(
        WideResNet(**kw, embed_size=8, in_channels=3)
    )


def test_sizes_and_the_package_import_no_torch() -> None:
    code = "import sys, hypermodels, hypermodels.sizes; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("cell, layer_norm", [("hyperlstm", False), ("hyperlstm", True), ("lstm", False)])
def test_handwriting_model(cell, layer_norm) -> None:
    from hypermodels import HandwritingModel

    kw = dict(num_mixtures=5, hyper_size=6, embed_size=2, layer_norm=layer_norm)
    built = HandwritingModel(cell, 10, 2, **kw)
    assert sizes.handwriting_parameters(cell, 10, 2, **kw) == count_parameters(built)
