"""Static hypernetwork for convnets (docs/paper.md §2): parameter counts, kernel generation, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hypermodels import (
    CenteredBatchNorm2d,
    HyperConv2d,
    KernelHyperNetwork,
    MNISTConvNet,
    WideBlock,
    WideResNet,
    count_parameters,
    variable_count,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- hypernetwork and generated kernels ------------------------------------------------------------


def test_mnist_hypernetwork_is_4240_params_and_kernel_12544_weights():
    net = MNISTConvNet(hyper=True, embed_size=4)
    assert n_params(net.hyper) == 4240
    kernel = net.conv2.weight
    assert kernel.shape == (16, 16, 7, 7) and kernel.numel() == 12544
    assert net.generated_kernels()["conv2"].shape == (16, 16, 7, 7)
    # Normal variant: a free 7x7x16x16 kernel; hyper variant: 12,544 - 4,240 - 4 (embedding) fewer.
    plain = MNISTConvNet(hyper=False)
    assert plain.conv2.weight.numel() == 12544
    assert n_params(plain) - n_params(net) == 12544 - 4240 - 4
    assert net.generated_kernels() and not plain.generated_kernels()


def test_hypernetwork_matches_paper_equations():
    """K_i = <W_out, W_i z + B_i> + B_out, written out per input channel i."""
    torch.manual_seed(0)
    h = KernelHyperNetwork(embed_size=5, in_size=3, out_size=2, kernel_size=3)
    for p in h.parameters():
        nn.init.normal_(p)  # non-zero biases too
    z = torch.randn(4, 5)
    out = h(z)
    assert out.shape == (4, 2, 3, 3, 3)
    for n in range(4):
        for i in range(3):
            a_i = h.weight_in[i] @ z[n] + h.bias_in[i]  # (d,)
            k_i = (a_i @ h.weight_out + h.bias_out).view(2, 3, 3)  # (N_out, f, f)
            torch.testing.assert_close(out[n, :, i], k_i)


def test_kernel_is_tiled_from_16x16_basic_kernels_one_embedding_each():
    torch.manual_seed(0)
    h = KernelHyperNetwork(embed_size=8, kernel_size=3)
    conv = HyperConv2d(32, 64, h, padding=1)
    assert conv.embeddings.shape == (4, 2, 8)  # a 32->64 kernel uses 4*2 = 8 embeddings
    w = conv.weight
    assert w.shape == (64, 32, 3, 3)
    for o in range(4):
        for i in range(2):
            tile = h(conv.embeddings[o, i][None])[0]
            torch.testing.assert_close(w[16 * o : 16 * (o + 1), 16 * i : 16 * (i + 1)], tile)
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(conv(x), F.conv2d(x, w, padding=1))
    with pytest.raises(ValueError):
        HyperConv2d(24, 32, h)


def test_hyper_conv_has_no_free_kernel_and_grads_flow_through_hypernet_and_embeddings():
    torch.manual_seed(0)
    net = WideResNet(depth=10, widen_factor=2, hyper=True, embed_size=8)
    layers = [m for m in net.modules() if isinstance(m, HyperConv2d)]
    assert len(layers) == 6
    for m in layers:
        own = dict(m.named_parameters())
        assert set(own) == {"embeddings"}, own.keys()
        assert all(p.dim() != 4 for p in own.values())  # no (out, in, f, f) parameter
    w = layers[-1].weight
    assert not w.is_leaf and w.grad_fn is not None and w.requires_grad
    assert all(w.data_ptr() != p.data_ptr() for p in net.parameters())

    net(torch.randn(2, 3, 16, 16)).logsumexp(-1).sum().backward()
    for name, p in net.hyper.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for m in layers:
        assert m.embeddings.grad is not None and m.embeddings.grad.abs().sum() > 0
        assert (m.embeddings.grad != 0).any(dim=-1).all()  # every tile's embedding gets gradient


def test_shared_hypernetwork_counted_once():
    net = WideResNet(depth=40, widen_factor=1, hyper=True)
    hyper_keys = [k for k in net.state_dict() if "weight_in" in k or "weight_out" in k]
    assert hyper_keys == ["hyper.weight_in", "hyper.weight_out"]
    assert n_params(net.hyper) == 75920
    embeds = sum(m.embeddings.numel() for m in net.modules() if isinstance(m, HyperConv2d))
    assert embeds == 242 * 64
    assert len(net.generated_kernels()) == 36
    # Summing over modules one by one (hypernet is a child of the net only) equals parameters().
    assert sum(p.numel() for m in net.modules() for p in m.parameters(recurse=False)) == n_params(net)
    assert count_parameters(net) == n_params(net)


# ---- Wide ResNet parameter counts vs the paper ---------------------------------------------------


@pytest.mark.parametrize(
    "k, hyper, trainable, variables, paper",
    [
        (1, False, 560_010, 562_730, 0.563e6),
        (2, False, 2_230_090, 2_235_498, 2.236e6),
        (1, True, 93_850, 96_570, 0.097e6),
        (2, True, 142_170, 147_578, 0.148e6),
    ],
)
def test_wrn_parameter_count_within_2pct_of_paper(k, hyper, trainable, variables, paper):
    """The paper's network (parameter-free shortcuts, BN with β only), counted as the paper counts:
    every variable, BN's running mean and variance included (see the WideResNet docstring)."""
    net = WideResNet(depth=40, widen_factor=k, hyper=hyper)
    assert n_params(net) == trainable
    assert (
        variable_count(net)
        == variables
        == trainable
        + 2 * sum(m.running_mean.numel() for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    )
    assert abs(variables / paper - 1) < 0.005
    assert round(variables, -3) == paper or (k, hyper) == (2, False)  # 2,235,498 rounds to 2.235M


@pytest.mark.parametrize(
    "k, hyper, expected", [(1, False, 563_930), (2, False, 2_243_546), (1, True, 97_770), (2, True, 155_626)]
)
def test_reference_wrn_variant_counts(k, hyper, expected):
    """Zagoruyko's WRN (1x1 projection shortcuts, BN with γ and β): 0.56M / 2.24M plain, as published."""
    net = WideResNet(depth=40, widen_factor=k, hyper=hyper, shortcut="conv", bn_scale=True)
    assert n_params(net) == expected


def test_pad_shortcut_is_pooled_input_with_zero_channels():
    torch.manual_seed(0)
    block = WideBlock(16, 32, stride=2).eval()
    x = torch.randn(2, 16, 8, 8)
    for conv in (block.conv1, block.conv2):
        nn.init.zeros_(conv.weight)  # the residual branch adds nothing: the block is its shortcut
    out = block(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.allclose(out[:, :16], F.avg_pool2d(x, 2)) and torch.equal(out[:, 16:], torch.zeros(2, 16, 4, 4))
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in block.modules())


def test_centered_batch_norm_learns_shift_only():
    bn = CenteredBatchNorm2d(4)
    assert [n for n, _ in bn.named_parameters()] == ["bias"]
    x = torch.randn(8, 4, 3, 3) * 5 + 2
    with torch.no_grad():
        bn.bias.fill_(0.5)
    y = bn(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.full((4,), 0.5), atol=1e-5)
    assert torch.allclose(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)


# ---- shapes and a tiny training run --------------------------------------------------------------


def test_output_shapes():
    x = torch.randn(3, 1, 28, 28)
    assert MNISTConvNet(hyper=True)(x).shape == (3, 10)
    assert MNISTConvNet(hyper=False)(x).shape == (3, 10)
    img = torch.randn(2, 3, 32, 32)
    assert WideResNet(depth=10, widen_factor=1, hyper=True)(img).shape == (2, 10)
    assert WideResNet(depth=10, widen_factor=2, hyper=False, num_classes=7)(img).shape == (2, 7)


def test_mnist_hyper_convnet_overfits_tiny_batch():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))  # random labels: pure memorisation
    net = MNISTConvNet(hyper=True)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    emb0 = net.conv2.embeddings.detach().clone()
    hyper0 = net.hyper.weight_out.detach().clone()
    first = None
    for _ in range(40):
        loss = F.cross_entropy(net(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = F.cross_entropy(net(x), y).item()
    assert first > 2.0 and final < 0.05, (first, final)
    assert not torch.equal(net.conv2.embeddings, emb0) and not torch.equal(net.hyper.weight_out, hyper0)
