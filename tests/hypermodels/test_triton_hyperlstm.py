"""The Triton kernels of the fast HyperLSTM (hypermodels/triton_hyperlstm.py) against the reference layer.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1, set here
before the kernels are first defined; fp32 only, so the tolerance is fp32's: 1e-4 relative). With a GPU
the same comparisons run on CUDA, plus the tests marked ``cuda`` (bf16 / fp16 and the paper's sizes).
"""

from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch
from hyperlstm_pairs import TOL, assert_same, grad_names, make_inputs, pair, run

import hypermodels.fast_hyperlstm as fh
from hypermodels import HyperLSTM, triton_hyperlstm

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = torch.device("cuda" if CUDA else "cpu")
F32 = torch.float32

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    """The fast path forced onto the Triton kernels (on CPU tensors: the interpreter)."""
    monkeypatch.setattr(fh, "BACKEND", "triton")
    assert fh.backend_for(DEVICE) == "triton"


def on_device(ref, fast, x, state, w):
    ref, fast = ref.to(DEVICE), fast.to(DEVICE)

    def move(t):
        return t.detach().to(DEVICE).requires_grad_(t.requires_grad)

    state = None if state is None else type(state)(*(move(s) for s in state))
    return ref, fast, move(x), state, [t.to(DEVICE) for t in w]


@pytest.mark.parametrize(
    "layer_norm,num_layers,with_state,batch_first",
    [(True, 1, True, False), (False, 1, True, False), (True, 2, False, True), (False, 2, True, False)],
)
def test_kernels_match_reference_outputs_state_and_all_gradients(layer_norm, num_layers, with_state, batch_first):
    # Sizes that are not powers of two (masked columns in every tile), N_z > 1, a state carried in.
    ref, fast = pair(seed=3, dtype=F32, layer_norm=layer_norm, num_layers=num_layers, batch_first=batch_first)
    x, state, w = make_inputs(ref, T=5, B=3, dtype=F32, with_state=with_state)
    names = grad_names(ref, x, state)
    ref, fast, x, state, w = on_device(ref, fast, x, state, w)
    assert_same(run(ref, x, state, w), run(fast, x, state, w), F32, names)


@pytest.mark.parametrize("layer_norm", [True, False])
def test_dropout_masks_are_equal_under_a_seed(layer_norm):
    ref, fast = pair(seed=8, dtype=F32, num_layers=2, layer_norm=layer_norm, dropout=0.4, recurrent_dropout=0.3)
    ref.train()
    fast.train()
    x, state, w = make_inputs(ref, T=4, B=3, dtype=F32)
    names = grad_names(ref, x, state)
    ref, fast, x, state, w = on_device(ref, fast, x, state, w)
    torch.manual_seed(11)
    r = run(ref, x, state, w)
    torch.manual_seed(11)
    f = run(fast, x, state, w)
    assert_same(r, f, F32, names)
    torch.manual_seed(12)  # the masks act: another seed changes the result
    assert not torch.allclose(run(fast, x, state, w)[0], f[0])


@pytest.mark.parametrize("T", [4, 5])  # the no-grad path keeps its cell states in a ping-pong pair
def test_no_grad_forward_and_state_across_segments(T):
    ref, fast = pair(seed=5, dtype=F32, num_layers=2)
    x, _, _ = make_inputs(ref, T=2 * T, B=3, dtype=F32)
    ref, fast, x, _, _ = on_device(ref, fast, x, None, [])
    with torch.no_grad():
        _, mid = ref(x[:T])
        ref_out, ref_state = ref(x[T:], mid)
        _, mid_fast = fast(x[:T])
        fast_out, fast_state = fast(x[T:], mid_fast)
    torch.testing.assert_close(fast_out, ref_out, **TOL[F32])
    for a, b in zip(fast_state, ref_state, strict=True):
        torch.testing.assert_close(a, b, **TOL[F32])


def test_backend_for_names_what_can_run(monkeypatch):
    monkeypatch.setattr(fh, "BACKEND", "auto")
    assert fh.backend_for(torch.device("cpu")) in ("fused", "python")  # never Triton by default on CPU
    if CUDA:
        assert fh.backend_for(torch.device("cuda")) == "triton"
    monkeypatch.setattr(fh, "BACKEND", "tirton")
    with pytest.raises(RuntimeError, match="HYPERMODELS_FAST_BACKEND: expected auto, fused, python or triton"):
        fh.backend_for(torch.device("cpu"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert triton_hyperlstm.available(torch.device("cpu")) is False  # compiled Triton needs CUDA


# --------------------------------------------------------------------------------------------------
# Lower precisions (everywhere) and the paper's sizes (CUDA only).
# --------------------------------------------------------------------------------------------------


def paper_pair(hidden, hyper, embed, layer_norm=True, seed=0):
    torch.manual_seed(seed)
    ref = HyperLSTM(hidden, hidden, hyper_size=hyper, embed_size=embed, layer_norm=layer_norm, fast=False)
    fast = copy.deepcopy(ref)
    fast.fast = True
    return ref.cuda(), fast.cuda()


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("hidden,hyper,embed", [(256, 128, 4), (1000, 128, 4)])
def test_cuda_fp32_at_paper_sizes(hidden, hyper, embed):
    ref, fast = paper_pair(hidden, hyper, embed)
    x = torch.randn(20, 16, hidden, device="cuda", requires_grad=True)
    (ro, _), (fo, _) = ref(x), fast(x)
    torch.testing.assert_close(fo, ro, rtol=1e-3, atol=1e-4)
    gr = torch.autograd.grad(ro.square().sum(), [x, *ref.parameters()])
    gf = torch.autograd.grad(fo.square().sum(), [x, *fast.parameters()])
    for a, b in zip(gf, gr, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_in_low_precision_with_fp32_cell_state(dtype):
    # On CPU under the interpreter at a small size; on CUDA at the paper's 256/128/4.
    hidden, hyper, embed, T, B = (256, 128, 4, 30, 16) if CUDA else (12, 6, 2, 5, 3)
    torch.manual_seed(0)
    ref = HyperLSTM(hidden, hidden, hyper_size=hyper, embed_size=embed, fast=False).to(DEVICE)
    fast = copy.deepcopy(ref)
    fast.fast = True
    x = torch.randn(T, B, hidden, device=DEVICE)
    x_ref = x.clone().requires_grad_()
    ro, _ = ref(x_ref)
    ro.square().mean().backward()
    ro = ro.detach()
    with torch.autocast(DEVICE.type, dtype=dtype):
        fo, state = fast(x.requires_grad_())
        loss = fo.float().square().mean()
    loss.backward()
    assert fo.dtype == dtype and state.h.dtype == dtype
    assert state.c.dtype == torch.float32 and state.hyper_c.dtype == torch.float32
    # Agreement with the fp32 reference to a few units of the format's rounding (bf16: 8 bits of mantissa).
    err = (fo.float() - ro).abs().max().item()
    assert err < (0.05 if dtype == torch.bfloat16 else 0.01), err
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert ((x.grad - x_ref.grad).norm() / x_ref.grad.norm()).item() < 0.05  # BPTT through every step
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fast.parameters())
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters())
