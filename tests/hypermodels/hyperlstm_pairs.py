"""A reference HyperLSTM and a fast copy with the same random weights, and the comparison of their results:
shared by the tests of every fast-path backend (CPU C++ and Python, Triton)."""

from __future__ import annotations

import copy

import torch

from hypermodels import HyperLSTM, HyperLSTMState

TOL = {torch.float64: dict(rtol=1e-6, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def randomize_(module, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)
    return module


def pair(seed=0, dtype=torch.float64, scale=0.3, **kw):
    """A reference layer and a fast copy with identical random weights."""
    kw = dict(dict(input_size=5, hidden_size=7, hyper_size=6, embed_size=3), **kw)
    ref = randomize_(HyperLSTM(**kw, fast=False), seed, scale).to(dtype)
    fast = copy.deepcopy(ref)
    fast.fast = True
    return ref, fast


def run(layer, x, state, loss_weights, use_output=True, use_state=True):
    """Forward, a loss touching the output and/or every part of the final state, and all gradients."""
    out, new = layer(x, state)
    loss = x.new_zeros(())
    if use_output:
        loss = loss + (out * loss_weights[0]).sum() + out.pow(2).sum()
    if use_state:
        loss = loss + sum((s * w).sum() for s, w in zip(new, loss_weights[1:], strict=True))
    inputs = [t for t in (x, *(state or ())) if t.requires_grad] + list(layer.parameters())
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return out, new, grads


def assert_same(ref_result, fast_result, dtype, names):
    tol = TOL[dtype]
    (ro, rs, rg), (fo, fs, fg) = ref_result, fast_result
    torch.testing.assert_close(fo, ro, **tol)
    for a, b in zip(fs, rs, strict=True):
        torch.testing.assert_close(a, b, **tol)
    assert len(rg) == len(fg) == len(names)
    for name, a, b in zip(names, fg, rg, strict=True):
        assert (a is None) == (b is None), name
        if b is not None:
            torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"gradient of {name}: {m}")


def make_inputs(layer, T=6, B=4, dtype=torch.float64, seed=1, with_state=True):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    L, H, Hh = layer.num_layers, layer.hidden_size, layer.hyper_size
    x = rnd(B, T, layer.input_size) if layer.batch_first else rnd(T, B, layer.input_size)
    x.requires_grad_()
    state = None
    if with_state:
        state = HyperLSTMState(*(rnd(L, B, n).requires_grad_() for n in (H, H, Hh, Hh)))
    out_shape = (B, T, H) if layer.batch_first else (T, B, H)
    weights = [rnd(*out_shape)] + [rnd(L, B, n) for n in (H, H, Hh, Hh)]
    return x, state, weights


def grad_names(layer, x, state):
    names = ["x"] if x.requires_grad else []
    names += [f"state.{f}" for f, s in zip(HyperLSTMState._fields, state or (), strict=False) if s.requires_grad]
    return names + [n for n, _ in layer.named_parameters()]
