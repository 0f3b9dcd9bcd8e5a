"""The fast HyperLSTM path (hypermodels/fast_hyperlstm.py) against the step-by-step reference layer.

Every comparison uses random (non-initial) weights: at init every d is 0.1 and several parameters are
zero, which would hide wrong gradients.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hyperlstm_pairs import TOL, assert_same, grad_names, make_inputs, pair, randomize_, run

import hypermodels.fast_hyperlstm as fh
from hypermodels import HyperLSTM, fast_hyperlstm
from hypermodels.fast_hyperlstm import PARAM_NAMES, HyperLSTMLayerFunction, _Core


@pytest.fixture(autouse=True, params=["python", "fused"])
def backend(request, monkeypatch):
    """Every test runs with the ATen (Python) element-wise path and with the fused C++ kernels."""
    monkeypatch.setattr(fh, "BACKEND", request.param)
    if request.param == "fused":
        try:
            fh.fused_extension()
        except RuntimeError as exc:  # no compiler here: the Python path is what runs
            pytest.skip(str(exc)[:200])
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("num_layers,batch_first", [(1, False), (2, False), (2, True)])
def test_fast_matches_reference_outputs_state_and_all_gradients(dtype, layer_norm, num_layers, batch_first):
    ref, fast = pair(seed=3, dtype=dtype, layer_norm=layer_norm, num_layers=num_layers, batch_first=batch_first)
    x, state, w = make_inputs(ref, dtype=dtype)
    names = grad_names(ref, x, state)
    assert_same(run(ref, x, state, w), run(fast, x, state, w), dtype, names)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("split,save_activations", [(True, False), (False, True), (True, True)])
def test_product_and_saving_variants_match_reference(dtype, split, save_activations, monkeypatch):
    # The fused path's variants: two recurrent products per step (h and the hyper state separately, the
    # large-size form) instead of one combined product, and forward saving the gate activations instead of
    # backward recomputing them. The other tests run the defaults.
    if split:
        monkeypatch.setattr(fh, "SPLIT_PRODUCT_MACS", -1)
    monkeypatch.setattr(fh, "SAVE_ACTIVATIONS", save_activations)
    ref, fast = pair(seed=13, dtype=dtype, num_layers=2)
    x, state, w = make_inputs(ref, dtype=dtype)
    names = grad_names(ref, x, state)
    assert_same(run(ref, x, state, w), run(fast, x, state, w), dtype, names)
    with torch.no_grad():
        torch.testing.assert_close(fast(x, state)[0], ref(x, state)[0], **TOL[dtype])


@pytest.mark.parametrize("use_output,use_state", [(True, False), (False, True)])
def test_loss_on_output_only_or_final_state_only(use_output, use_state):
    # Exercises backward with no gradient arriving at the output (or at the final state).
    ref, fast = pair(seed=4, num_layers=2)
    x, state, w = make_inputs(ref)
    names = grad_names(ref, x, state)
    assert_same(
        run(ref, x, state, w, use_output, use_state),
        run(fast, x, state, w, use_output, use_state),
        torch.float64,
        names,
    )


def test_zero_initial_state_and_input_without_grad():
    ref, fast = pair(seed=5, num_layers=2)
    x, _, w = make_inputs(ref, with_state=False)
    x = x.detach()
    names = grad_names(ref, x, None)
    assert_same(run(ref, x, None, w), run(fast, x, None, w), torch.float64, names)


def test_longer_sequence_and_wider_cells():
    # Errors in BPTT grow with the sequence; 40 steps and sizes closer to real ones.
    ref, fast = pair(seed=6, scale=0.15, input_size=9, hidden_size=24, hyper_size=10, embed_size=4)
    x, state, w = make_inputs(ref, T=40, B=3)
    names = grad_names(ref, x, state)
    assert_same(run(ref, x, state, w), run(fast, x, state, w), torch.float64, names)


def test_row_blocks_and_unit_chunks_of_the_fused_kernels():
    # The fused kernels walk rows in blocks of 8 and units in chunks of 64: a batch of 21 (two full
    # blocks and a partial one per thread) and 150 units (two full chunks and a partial one).
    ref, fast = pair(seed=13, scale=0.15, input_size=5, hidden_size=150, hyper_size=20, embed_size=3)
    x, state, w = make_inputs(ref, T=5, B=21)
    names = grad_names(ref, x, state)
    assert_same(run(ref, x, state, w), run(fast, x, state, w), torch.float64, names)


def test_state_carried_across_segments():
    ref, fast = pair(seed=7, num_layers=2)
    x, _, _ = make_inputs(ref, T=8)
    with torch.no_grad():
        _, mid = ref(x[:3])
        ref_out, ref_state = ref(x[3:], mid)
        _, mid_fast = fast(x[:3])
        fast_out, fast_state = fast(x[3:], mid_fast)
    torch.testing.assert_close(fast_out, ref_out, **TOL[torch.float64])
    for a, b in zip(fast_state, ref_state, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("layer_norm", [True, False])
def test_dropout_masks_are_shared_and_results_identical(layer_norm):
    ref, fast = pair(seed=8, num_layers=2, layer_norm=layer_norm, dropout=0.4, recurrent_dropout=0.3)
    ref.train()
    fast.train()
    x, state, w = make_inputs(ref)
    names = grad_names(ref, x, state)
    torch.manual_seed(11)
    r = run(ref, x, state, w)
    torch.manual_seed(11)
    f = run(fast, x, state, w)
    assert_same(r, f, torch.float64, names)
    # The masks do something: another seed, or eval mode, changes the result.
    torch.manual_seed(12)
    other = run(fast, x, state, w)
    assert not torch.allclose(other[0], f[0])
    fast.eval()
    assert not torch.allclose(run(fast, x, state, w)[0], f[0])


def test_recurrent_dropout_alone_matches_reference():
    # Only the candidate mask (no inter-layer dropout): checks the mask is applied where the reference does.
    ref, fast = pair(seed=9, recurrent_dropout=0.5)
    x, state, w = make_inputs(ref)
    names = grad_names(ref, x, state)
    torch.manual_seed(3)
    r = run(ref, x, state, w)
    torch.manual_seed(3)
    f = run(fast, x, state, w)
    assert_same(r, f, torch.float64, names)
    torch.manual_seed(3)
    no_mask = run(fast.eval(), x, state, w)
    assert not torch.allclose(no_mask[0], f[0])


def test_eval_and_no_grad_path_matches_reference():
    ref, fast = pair(seed=10, num_layers=2, dropout=0.3, recurrent_dropout=0.3)
    ref.eval()
    fast.eval()
    x, state, _ = make_inputs(ref)
    with torch.no_grad():
        a, sa = ref(x, state)
        b, sb = fast(x, state)
    torch.testing.assert_close(b, a, **TOL[torch.float64])
    for u, v in zip(sb, sa, strict=True):
        torch.testing.assert_close(u, v, **TOL[torch.float64])


def function_inputs(layer_norm, masks, seed=0):
    """Tiny float64 inputs of HyperLSTMLayerFunction: (x, h0, c0, hh0, hc0, masks, *params)."""
    ref, _ = pair(seed=seed, input_size=3, hidden_size=4, hyper_size=3, embed_size=2, layer_norm=layer_norm)
    cell = ref.cells[0]
    g = torch.Generator().manual_seed(seed + 1)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()  # noqa: E731
    T, B = 3, 2
    m = None
    if masks:
        m = (torch.rand(T, B, 4, generator=g, dtype=torch.float64) > 0.3).double() / 0.7
    params = [getattr(cell, n) for n in PARAM_NAMES]
    return cell, (rnd(T, B, 3), rnd(B, 4), rnd(B, 4), rnd(B, 3), rnd(B, 3), m, *params)


@pytest.mark.parametrize("layer_norm,masks", [(True, False), (False, False), (True, True)])
def test_gradcheck_layer_function_float64(layer_norm, masks):
    cell, inputs = function_inputs(layer_norm, masks)

    def f(*args):
        return HyperLSTMLayerFunction.apply(cell.forget_bias, cell.eps, *args)

    # nondet_tol: repeated backward passes may differ in the last bits (multi-threaded BLAS and kernels
    # under load); 1e-12 still fails on any real error.
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, nondet_tol=1e-12)


@pytest.mark.parametrize("layer_norm", [True, False])
def test_core_backward_including_layer_norm_matches_autograd(layer_norm, backend):
    # The LSTM core alone: gate LN with per-gate gains (affine applied by hand), forget bias, cell LN.
    torch.manual_seed(0)
    B, n, eps, fb = 5, 6, 1e-5, 1.0
    dbl = lambda *s: torch.randn(*s, dtype=torch.float64, requires_grad=True)  # noqa: E731
    pre, c, dh, dc = (
        dbl(B, 4, n),
        dbl(B, n),
        torch.randn(B, n, dtype=torch.float64),
        torch.randn(B, n, dtype=torch.float64),
    )
    gain, shift, cgain, cshift = dbl(4, n), dbl(4, n), dbl(n), dbl(n)
    mask = (torch.rand(B, n) > 0.5).double() * 2

    # Autograd through the reference equations (as in HyperLSTMCell.step).
    a = F.layer_norm(pre, (n,), eps=eps) * gain + shift if layer_norm else pre
    i, g, f, o = a.unbind(1)
    c_new = torch.sigmoid(f + fb) * c + torch.sigmoid(i) * torch.tanh(g) * mask
    c_out = F.layer_norm(c_new, (n,), cgain, cshift, eps) if layer_norm else c_new
    h = torch.sigmoid(o) * torch.tanh(c_out)
    wrt = [pre, c] + ([gain, shift, cgain, cshift] if layer_norm else [])
    want = torch.autograd.grad((h * dh).sum() + (c_new * dc).sum(), wrt)

    names = ("gain", "shift", "cell_gain", "cell_shift")
    with torch.no_grad():
        core = _Core(n, layer_norm, eps, fb, gain, shift, cgain, cshift)
        pre_nb = pre if layer_norm else pre + torch.tensor([0.0, 0.0, fb, 0.0], dtype=torch.float64).view(4, 1)
        pre_nb = pre_nb.contiguous()
        dpre = torch.empty(B, 4, n, dtype=torch.float64)
        if backend == "fused":
            # The main-cell kernel with d_h = 1, d_x = 0, dynamic bias 0, b0 = 0 (N_z = 1): pre = u.
            ext, dbl0 = fh.fused_extension(), lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
            z, DwT = torch.ones(B, 12, dtype=torch.float64), dbl0(12, 1, n)
            DwT[:4] = 1.0
            u, wx = pre_nb.view(B, 4 * n), dbl0(B, 4 * n)
            h2, c2, pre_out = dbl0(B, n), dbl0(B, n), dbl0(B, 4 * n)
            ext.main_forward(u, z, DwT, wx, dbl0(4 * n), c, mask, *core.ln_args(), pre_out, c2, h2)
            torch.testing.assert_close(pre_out, u, rtol=0, atol=0)
            acc = [dbl0(B, 4 * n), dbl0(B, 4 * n), dbl0(B, n), dbl0(B, n)] if layer_norm else [None] * 4
            dc_prev = dbl0(B, n)
            ext.main_backward(
                pre_out,
                u,
                z,
                DwT,
                wx,
                c,
                c2,
                mask,
                *core.ln_args(),
                dh,
                dc,
                dc_prev,
                dpre.view(B, 4 * n),
                dbl0(B, 4 * n),
                dbl0(B, 12),
                dbl0(torch.get_num_threads(), 12, 1, n),
                dbl0(B, 4 * n),
                *acc,
            )
            ln_grads = (
                [a.sum(0).view(4, n) if k in ("gain", "shift") else a.sum(0) for k, a in zip(names, acc, strict=True)]
                if layer_norm
                else []
            )
        else:
            h2, c2 = core.forward(pre_nb, c, mask)
            grads = {k: [] for k in names}
            dc_prev = core.backward(pre_nb, c, c2, mask, dh, dc, grads, dpre)
            ln_grads = [grads[k][0] for k in names] if layer_norm else []
        torch.testing.assert_close(h2, h, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c2, c_new, rtol=1e-12, atol=1e-12)
    got = [dpre, dc_prev] + (ln_grads if layer_norm else [])
    for name, u, v in zip(["pre", "c", "gain", "shift", "cell_gain", "cell_shift"], got, want, strict=False):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


def test_fast_is_default_and_switch_selects_the_path():
    layer = HyperLSTM(3, 4, hyper_size=2, embed_size=1)
    assert layer.fast
    x = torch.randn(2, 1, 3)
    assert type(layer(x)[0].grad_fn).__name__ == "HyperLSTMLayerFunctionBackward"
    layer.fast = False
    assert type(layer(x)[0].grad_fn).__name__ != "HyperLSTMLayerFunctionBackward"


def test_double_backward_is_refused():
    layer = randomize_(HyperLSTM(3, 4, hyper_size=2, embed_size=1).double())
    x = torch.randn(2, 1, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()


def test_fast_saves_less_for_backward_than_reference():
    ref, fast = pair(seed=12, input_size=8, hidden_size=32, hyper_size=8, embed_size=4)
    x = torch.randn(20, 4, 8, dtype=torch.float64)

    def saved(layer):
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, _ = layer(x)
        out.sum().backward()
        return sum(seen.values())

    # With fh.SAVE_ACTIVATIONS the fused path keeps the gate activations too (bench: 1.4-1.7x nn.LSTM's
    # saved bytes, within the 2x budget): ~2/3 of the reference here.
    assert saved(fast) < (0.75 if fh.SAVE_ACTIVATIONS else 0.5) * saved(ref)


def test_loading_the_fused_kernels_keeps_denormals(backend):
    # The kernels are compiled with -ffast-math; linked with it, the library would switch the whole
    # process to flush-to-zero when loaded.
    if backend != "fused":
        pytest.skip("fused kernels only")
    fh.fused_extension()
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    assert (tiny * 1.0).item() != 0.0


def test_build_location_is_shared_by_checkouts_and_clears_a_stale_lock(tmp_path, monkeypatch) -> None:
    """A killed build leaves torch's lock file behind, and torch waits on it forever: an old lock is
    removed, a fresh one (a build in progress) is kept; the source is copied into the build folder so
    every checkout of the same code builds once."""
    import os
    import time

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    where = fast_hyperlstm._build_location("avx2", ["-O3"])
    build = Path(where["build_directory"])
    assert where["sources"] == [str(build / "hyperlstm_cell.cpp")] and build.parent.parent == tmp_path
    assert (build / "hyperlstm_cell.cpp").read_bytes() == (
        Path(fast_hyperlstm.__file__).with_name("csrc") / "hyperlstm_cell.cpp"
    ).read_bytes()
    assert fast_hyperlstm._build_location("avx2", ["-O2"])["name"] != where["name"]  # flags are in the name
    lock = build / "lock"
    lock.touch()
    fast_hyperlstm._build_location("avx2", ["-O3"])
    assert lock.exists()  # fresh: a build in progress
    old = time.time() - fast_hyperlstm.STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    fast_hyperlstm._build_location("avx2", ["-O3"])
    assert not lock.exists()


def test_reused_buffers_never_overwrite_a_live_graph(backend):
    # The fused loops take their large buffers (>= 1 MiB) from a cache and reuse one only when nothing else
    # holds it. Two graphs alive at once, one backward twice (retain_graph), an output kept by the caller:
    # every gradient must still equal the reference's.
    if backend != "fused":
        pytest.skip("fused kernels only")
    ref, fast = pair(
        seed=14, dtype=torch.float32, scale=0.1, input_size=16, hidden_size=192, hyper_size=32, embed_size=4
    )
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(12, 48, 16, generator=g) for _ in range(3)]
    assert 12 * 48 * 4 * (192 + 32) * 4 >= 2**20  # r alone is over the cache's threshold

    ref_grads = []
    for x in xs:
        out, _ = ref(x)
        ref_grads.append(torch.autograd.grad((out * out.detach().sin()).sum(), list(ref.parameters())))
    outs, losses = [], []
    for x in xs[:2]:  # two graphs alive
        out, _ = fast(x)
        outs.append(out)
        losses.append((out * out.detach().sin()).sum())
    first = torch.autograd.grad(losses[0], list(fast.parameters()), retain_graph=True)
    out3, _ = fast(xs[2])  # a third forward between the two backward passes
    again = torch.autograd.grad(losses[0], list(fast.parameters()))
    second = torch.autograd.grad(losses[1], list(fast.parameters()))
    third = torch.autograd.grad((out3 * out3.detach().sin()).sum(), list(fast.parameters()))
    for got, want in ((first, ref_grads[0]), (again, ref_grads[0]), (second, ref_grads[1]), (third, ref_grads[2])):
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[0], ref(xs[0])[0], rtol=1e-4, atol=1e-5)  # a kept output is untouched
    fh.release_workspace()  # empties the cache; the next call allocates afresh
    torch.testing.assert_close(fast(xs[0])[0], outs[0])


def test_packed_products_are_found_where_torch_has_mkl(backend):
    # The per-step products use MKL's packed GEMM, looked up at run time in the library that holds ATen;
    # losing it would not break anything, only cost ~25% of the speed: make that visible.
    if backend != "fused":
        pytest.skip("fused kernels only")
    if not torch.backends.mkl.is_available() or os.environ.get("HYPERMODELS_PACKED_GEMM") == "0":
        pytest.skip("this torch has no MKL (or the packed products are turned off): the plain products run")
    assert fh.fused_extension().packed_gemm_available()
