"""Fast training path of :class:`~hypermodels.hyperlstm.HyperLSTM`: one autograd node per layer.

The reference layer (``HyperLSTM`` with ``fast=False``) lets autograd record every step, about a hundred
small nodes per time step, and saves their inputs: the graph, the many small kernels and the saved
tensors cost far more than the arithmetic. Here a :class:`torch.autograd.Function` runs the whole
sequence of one layer under no-grad, saves only what backpropagation through time needs, and runs BPTT
by hand:

* forward saves per step what BPTT needs: the recurrent product ``r = [W_h; W_ĥh] h_{t-1}`` (or just
  ``u = W_h h``), the cell state ``c``, the small embeddings ``z``, ``ĥ``, ``ĉ``, the hyper cell's
  pre-activations and ``W_x x``; backward recomputes the main cell's pre-activations
  (``d_h u + d_x W_x x + d_b + b_0``), the layer norms and activations (the fused path can save the
  activations instead, :data:`SAVE_ACTIVATIONS`, slower on an idle machine) and (Python path) ``d = W_{.z} z``;
* backward runs only the recurrent matrix products per step; the weight gradients (``W_h``, ``W_x``, the
  hyper cell's weights, ``z`` projections) and the input gradient are one large matrix product each over
  the whole sequence after the loop.

Three implementations of the per-step work, chosen per device by :func:`backend_for`:

* ``fused`` (CPU): ``csrc/hyperlstm_cell.cpp``, built on first use with the machine's compiler. The whole
  time loop of a layer runs in C++, one call for forward and one for backward per layer and sequence.
  Batch rows are independent, so each thread takes its rows through the whole sequence: per step the
  recurrent product for its rows (MKL's packed GEMM: the weights are packed once per call, not on every
  product) and the element-wise work of the hyper cell, ``z``, ``d`` and the main cell (pre-activation,
  both layer norms, gates, cell state), with no fork/join between steps. Large buffers are reused across
  calls (first-touch page faults of fresh ones cost more than any kernel at the paper's size).
* ``triton`` (CUDA, the default there): per step one product for both cells' recurrent inputs and one
  fused Triton kernel for everything element-wise, forward and backward (:mod:`hypermodels.triton_hyperlstm`).
  Runs fp32, bf16 and fp16 inputs (autocast included) with fp32 cell states.
* ``python``: the same equations with ATen ops from a Python loop (``native_layer_norm`` and its
  backward, so no hand-written LN backward there); used where neither of the others can run.

Numerics: the same equations as ``HyperLSTMCell.step``; results agree with the reference to rounding
(tests/test_fast_hyperlstm.py runs both implementations). The forget-gate bias is folded into the LN
bias (or the gate bias without LN), which changes rounding only. Dropout masks are drawn up front by the
caller, in the same order as the reference path (:func:`~hypermodels.hyperlstm.recurrent_dropout_masks`),
so both paths see the same masks under one seed. Double backward is not supported (use ``fast=False``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias, TypedDict, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:  # only for annotations: hyperlstm imports this module
    from .hyperlstm import HyperLSTM, HyperLSTMCell, HyperLSTMState

GATES = 4  # i, g, f, o (gate f is index 2)

# Parameters of a HyperLSTMCell, in the order the Function receives them (LN ones may be None).
PARAM_NAMES = (
    "weight_ih",
    "weight_hh",
    "bias",
    "hyper_weight_ih",
    "hyper_weight_hh",
    "hyper_bias",
    "z_weight",
    "z_bias",
    "d_weight",
    "ln_weight",
    "ln_bias",
    "ln_cell_weight",
    "ln_cell_bias",
    "hyper_ln_weight",
    "hyper_ln_bias",
    "hyper_ln_cell_weight",
    "hyper_ln_cell_bias",
)

_layer_norm_backward = torch.ops.aten.native_layer_norm_backward

# What forward keeps for backward, by name: per-step lists of tensors (Python path) or whole-sequence
# tensors and lists of them (fused path).
Saved: TypeAlias = Mapping[str, Tensor | list[Tensor]]
# The gradients of a layer's parameters, by the names of PARAM_NAMES.
Grads: TypeAlias = dict[str, Tensor]
# What a BPTT loop returns: the gradients of the initial state ``h, c, hyper_h, hyper_c``; the per-step
# gradient buffers ``DU, DWX, DHP, DZ`` and (fused) ``DUH``; the gradients of the loop's own parameters.
BackwardLoopResult: TypeAlias = tuple[
    tuple[Tensor, Tensor | None, Tensor | None, Tensor | None],
    tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None],
    Grads,
]
# A layer's result: ``out`` and the final ``h, c, hyper_h, hyper_c``.
LayerOutput: TypeAlias = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]

# Which implementation of the per-step element-wise work runs (see backend_for): "auto" (CPU: "fused", the
# C++ kernels of csrc/hyperlstm_cell.cpp, compiled on first use, ~30 s, cached by torch in
# ~/.cache/torch_extensions, or "python" with a warning where they cannot be built; CUDA: "triton" where
# Triton is installed, else "python"), or one of "fused", "python", "triton" for every device ("triton" on
# CPU tensors needs Triton's interpreter, TRITON_INTERPRET=1: that is how the tests check the kernels).
# All compute the same equations; the tests run each against the reference layer.
BACKEND = os.environ.get("HYPERMODELS_FAST_BACKEND", "auto")
_EXTENSION: ModuleType | None = None
# Fused path: up to this many multiply-adds per step in the zero block of the combined recurrent product
# (batch x 4H x Hh), one product per step for [h, hh] against one weight; above it (every bench size), two
# products. With each thread running its own rows there is no fork/join per product to save, and the zero
# block's work made the combined form slower (256x32: 0.54 vs 0.59 x nn.LSTM, interleaved; bench/NOTES.md).
SPLIT_PRODUCT_MACS = 1_000_000
# Fused path: forward saves the gate activations of both cells for backward (True), or only the
# pre-activations, from which backward recomputes them (False, faster on an idle machine: at 256x32 and
# 512x64 saving them was 5-14% slower, the extra memory traffic costs more than the recomputation).
SAVE_ACTIVATIONS = False
_EXTENSION_ERROR: str | None = None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
        return f" {line.partition(':')[2].strip()} "
    except OSError:
        return " "


STALE_LOCK_S = 600  # a build takes well under a minute: an older lock was left by a killed process


class _BuildLocation(TypedDict):
    name: str
    sources: list[str]
    build_directory: str


def _build_location(isa: str, flags: list[str]) -> _BuildLocation:
    """``name``, ``sources`` and ``build_directory`` for torch's ``load``.

    The name holds the ISA and a digest of the source and flags, so a cache shared by different
    machines or versions never loads the wrong build. The source is copied into the build folder,
    so every checkout of the same code (clones, worktrees, Ray's job packages) shares one build
    instead of rebuilding whenever another path compiles it. A build lock older than
    :data:`STALE_LOCK_S` is removed: torch waits forever on the lock of a process that was killed
    while building.
    """
    import hashlib
    import sys
    import time

    from torch.utils.cpp_extension import get_default_build_root

    source = (Path(__file__).with_name("csrc") / "hyperlstm_cell.cpp").read_bytes()
    digest = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()[:12]
    name = f"hypermodels_hyperlstm_cell_{isa}_{digest}"
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    build_dir = root / f"py{sys.version_info.major}{sys.version_info.minor}_cpu" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    copied = build_dir / "hyperlstm_cell.cpp"
    if not copied.is_file() or copied.read_bytes() != source:
        tmp = build_dir / f".hyperlstm_cell.cpp.{os.getpid()}"
        tmp.write_bytes(source)
        os.replace(tmp, copied)
    lock = build_dir / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink()
    except FileNotFoundError:
        pass
    return {"name": name, "sources": [str(copied)], "build_directory": str(build_dir)}


def fused_extension() -> ModuleType | None:
    """The compiled fused kernels, or None when unavailable and :data:`BACKEND` allows the Python path."""
    global _EXTENSION, _EXTENSION_ERROR
    if BACKEND == "python":
        return None
    if _EXTENSION is None and _EXTENSION_ERROR is None:
        try:
            from torch.utils.cpp_extension import load

            # fast-math at compile time only: vectorised exp/tanh (libmvec) without FTZ side effects at load.
            # -fopenmp: at::parallel_for is inline OpenMP; without it the kernels would run on one thread.
            flags = ["-O3", "-ffast-math", "-fopenmp"]
            isa = "generic"
            if os.uname().machine in ("x86_64", "AMD64"):
                isa = "avx2"
                flags += ["-mavx2", "-mfma"]
                if " avx512f " in _cpu_flags() and " avx512dq " in _cpu_flags():
                    # 16-wide exp/tanh (libmvec's AVX-512 variants), as ATen's own kernels use here.
                    isa = "avx512"
                    flags += ["-mavx512f", "-mavx512dq", "-mprefer-vector-width=512"]
            _EXTENSION = load(
                extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False, **_build_location(isa, flags)
            )
        except Exception as exc:  # no compiler, no ninja, read-only cache, ...
            _EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"
            if BACKEND != "fused":
                warnings.warn(
                    f"fast HyperLSTM: fused C++ kernels unavailable, using the Python path ({_EXTENSION_ERROR[:300]})",
                    RuntimeWarning,
                    stacklevel=3,
                )
    if _EXTENSION is None and BACKEND == "fused":
        raise RuntimeError(f"fast HyperLSTM: fused C++ kernels unavailable: {_EXTENSION_ERROR}")
    return _EXTENSION


def backend_for(device: torch.device) -> str:
    """The implementation the fast path runs on ``device``: ``"fused"`` (C++, CPU), ``"triton"`` or
    ``"python"``; see :data:`BACKEND`.

    Raises:
        RuntimeError: :data:`BACKEND` forces an implementation that cannot run on ``device``.
    """
    from . import triton_hyperlstm

    if BACKEND not in ("auto", "fused", "python", "triton"):
        raise RuntimeError(f"HYPERMODELS_FAST_BACKEND: expected auto, fused, python or triton, found {BACKEND!r}")
    if BACKEND == "python":
        return "python"
    if BACKEND == "triton" or (BACKEND == "auto" and device.type == "cuda"):
        if triton_hyperlstm.available(device):
            return "triton"
        if BACKEND == "triton":
            raise RuntimeError(
                f"fast HyperLSTM: the Triton kernels cannot run on {device} (they need CUDA and the triton "
                "package, or TRITON_INTERPRET=1 with CPU tensors)"
            )
        return "python"
    if device.type == "cpu" and fused_extension() is not None:
        return "fused"
    return "python"


# ----------------------------------------------------------------------------------------------------
# The LSTM core shared by the main and the hyper cell: from gate pre-activations to (h, c).
# ----------------------------------------------------------------------------------------------------


class _LayerNorm(NamedTuple):
    """The layer-norm affine of one LSTM core.

    ``gain`` ``(4, n)`` and ``shift`` ``(4, n)`` per gate, the forget bias folded into ``shift``;
    ``cell_gain``/``cell_shift`` ``(n,)`` on the output path.
    """

    gain: Tensor
    shift: Tensor
    cell_gain: Tensor
    cell_shift: Tensor


class _Core:
    """Constants of one LSTM core (main or hyper cell), prepared once per call.

    ``affine`` is the core's :class:`_LayerNorm` (LN case; the forget bias folded into its ``shift``).
    Without layer norm it is None and the forget bias lives in the gate bias (see :func:`_forward_loop`).
    """

    def __init__(
        self,
        size: int,
        ln: bool,
        eps: float,
        forget_bias: float,
        gain: Tensor | None,
        shift: Tensor | None,
        cell_gain: Tensor | None,
        cell_shift: Tensor | None,
    ) -> None:
        self.size, self.ln, self.eps = size, ln, eps
        self.affine: _LayerNorm | None = None  # the kernels read "gain given" as LN
        if ln:
            if gain is None or shift is None or cell_gain is None or cell_shift is None:
                raise ValueError("a layer-normalised core needs gain, shift, cell_gain and cell_shift")
            shift = shift.clone()
            shift[2] += forget_bias  # after LN, as the reference (LN would cancel it before)
            self.affine = _LayerNorm(gain, shift, cell_gain, cell_shift)
        self.one: Tensor | None = None  # scalar 1, made lazily in the right dtype/device

    def ln_args(self) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, float]:
        """``(gain, shift, cell_gain, cell_shift, eps)`` for the fused kernels (LN tensors None without LN)."""
        if self.affine is None:
            return None, None, None, None, self.eps
        return (*self.affine, self.eps)

    def activations(self, pre: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None]:
        """``pre`` ``(B, 4, n)`` -> (sigmoid of all gates ``(B, 4, n)``, tanh(g) ``(B, n)``, LN stats).

        The LN stats are ``(norm, mean, rstd)`` of ``native_layer_norm``, None without layer norm.
        """
        affine = self.affine
        stats: tuple[Tensor, Tensor, Tensor] | None = None
        if affine is not None:
            norm, mean, rstd = torch.native_layer_norm(pre, (self.size,), None, None, self.eps)
            act = torch.addcmul(affine.shift, norm, affine.gain)
            stats = (norm, mean, rstd)
        else:
            act = pre
        # One sigmoid over all four gates (sigmoid(g) is unused): fewer kernels beats 25% less work.
        return torch.sigmoid(act), torch.tanh(act[:, 1]), stats

    def forward(
        self, pre: Tensor, c: Tensor, mask: Tensor | None, h_out: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One step: ``pre`` ``(B, 4, n)``, ``c`` ``(B, n)``, ``mask`` ``(B, n)`` or None -> ``h``, ``c_new``."""
        sig, cand, _ = self.activations(pre)
        if mask is not None:
            cand = cand * mask  # recurrent dropout on the candidate only
        c_new = torch.addcmul(sig[:, 2] * c, sig[:, 0], cand)
        affine = self.affine
        c_out = (
            F.layer_norm(c_new, (self.size,), affine.cell_gain, affine.cell_shift, self.eps)
            if affine is not None
            else c_new
        )
        h = torch.mul(sig[:, 3], torch.tanh(c_out), out=h_out) if h_out is not None else sig[:, 3] * torch.tanh(c_out)
        return h, c_new

    def backward(
        self,
        pre: Tensor,
        c_prev: Tensor,
        c_new: Tensor,
        mask: Tensor | None,
        dh: Tensor,
        dc: Tensor | None,
        grads: dict[str, list[Tensor]],
        dpre_out: Tensor,
    ) -> Tensor:
        """Backward of :meth:`forward`, recomputing the activations.

        ``dh``/``dc`` ``(B, n)`` are the gradients arriving at ``h``/``c_new`` (``dc`` None means zero).
        Writes ``dL/dpre`` into ``dpre_out`` ``(B, 4, n)`` and returns ``dL/dc_prev``; appends the
        per-step LN parameter gradients (summed over the batch) to the lists in ``grads``.
        """
        n = self.size
        affine = self.affine
        sig, tg, stats = self.activations(pre)
        dsig = torch.addcmul(sig, sig, sig, value=-1)  # sigmoid' = s (1 - s), all gates at once
        one = self.one
        if one is None:
            one = self.one = pre.new_ones(())
        if affine is not None:
            c_out, c_mean, c_rstd = torch.native_layer_norm(c_new, (n,), affine.cell_gain, affine.cell_shift, self.eps)
        else:
            c_out = c_new
        tco = torch.tanh(c_out)
        # The gate gradients are assembled in one (B, 4, n) tensor for the LN backward.
        dact = dpre_out if affine is None else torch.empty_like(sig)
        torch.mul(dh * tco, dsig[:, 3], out=dact[:, 3])  # o
        dc_out = dh * sig[:, 3] * torch.addcmul(one, tco, tco, value=-1)  # through tanh(LN(c))
        dc_new: Tensor
        if affine is not None:
            dc_new, dg_cell, db_cell = _layer_norm_backward(
                dc_out, c_new, (n,), c_mean, c_rstd, affine.cell_gain, affine.cell_shift, (True, True, True)
            )
            grads["cell_gain"].append(dg_cell)
            grads["cell_shift"].append(db_cell)
        else:
            dc_new = dc_out
        if dc is not None:
            dc_new = dc_new + dc
        torch.mul(dc_new * c_prev, dsig[:, 2], out=dact[:, 2])  # f
        cand = tg if mask is None else tg * mask
        torch.mul(dc_new * cand, dsig[:, 0], out=dact[:, 0])  # i
        dcand = dc_new * sig[:, 0]
        if mask is not None:
            dcand = dcand * mask
        torch.mul(dcand, torch.addcmul(one, tg, tg, value=-1), out=dact[:, 1])  # g through tanh
        dc_prev = dc_new * sig[:, 2]
        if affine is not None and stats is not None:  # layer norm: activations() gave its stats
            norm, mean, rstd = stats
            grads["shift"].append(dact.sum(0))
            grads["gain"].append((dact * norm).sum(0))
            dpre_out.copy_(
                _layer_norm_backward(dact * affine.gain, pre, (n,), mean, rstd, None, None, (True, False, False))[0]
            )
        return dc_prev


# ----------------------------------------------------------------------------------------------------
# Forward and backward of one layer over a whole sequence.
# ----------------------------------------------------------------------------------------------------


def _require(params: Mapping[str, Tensor | None], name: str) -> Tensor:
    """``params[name]``, which every HyperLSTM cell has (only the layer-norm parameters may be None)."""
    t = params[name]
    if t is None:
        raise ValueError(f"HyperLSTM parameter {name} is None")
    return t


class _Prepared:
    """Views and constants of one layer's parameters for a call (shapes in the comments)."""

    ext: ModuleType | None  # the fused kernels, None on the Python path
    W2: Tensor  # fused and triton paths: the recurrent weights of the per-step product
    hW_hh_split: Tensor | None  # fused path only: W_ĥh when it is a product of its own, else None

    def __init__(
        self,
        params: Mapping[str, Tensor | None],
        H: int,
        Hh: int,
        forget_bias: float,
        eps: float,
        device: torch.device,
        backend: str | None = None,
        batch: int = 1,
        dtype: torch.dtype | None = None,
    ) -> None:
        p = params

        def req(name: str) -> Tensor:
            return _require(p, name)

        # ``backend`` forces the choice (backward must use what forward used). ``dtype``: the triton path's
        # compute dtype (its matrix products run in it; the parameters are cast where they feed one).
        self.backend = backend = backend_for(device) if backend is None else backend
        self.ext = ext = fused_extension() if backend == "fused" else None
        self.ln = ln = p["ln_weight"] is not None
        Nz = req("d_weight").shape[-1]
        self.H, self.Hh, self.Nz = H, Hh, Nz
        self.W_x, self.W_h = req("weight_ih"), req("weight_hh")  # (4H, I), (4H, H)
        self.hW_h = req("hyper_weight_ih")[:, :H]  # (4Hh, H): h-part of x̂
        self.hW_x = req("hyper_weight_ih")[:, H:]  # (4Hh, I): x-part of x̂
        self.hW_hh = req("hyper_weight_hh")  # (4Hh, Hh)
        hyper_bias = req("hyper_bias")
        bias = req("bias")
        if not ln:  # no LN to cancel it: fold the forget bias into the gate biases
            hyper_bias = hyper_bias.clone()
            hyper_bias[2 * Hh : 3 * Hh] += forget_bias
            bias = bias.clone()
            bias[2 * H : 3 * H] += forget_bias
        self.hyper_bias = hyper_bias  # (4Hh,)
        self.Zw = req("z_weight").reshape(3 * GATES * Nz, Hh)  # (12Nz, Hh): rows (k, gate, Nz)
        # z_h and z_x have a bias, z_b has none.
        z_bias = req("z_bias")
        self.zb = torch.cat([z_bias.reshape(-1), z_bias.new_zeros(GATES * Nz)])  # (12Nz,)
        self.Dw = req("d_weight").reshape(3 * GATES, H, Nz)  # (12, H, Nz)
        self.DwT = self.Dw.transpose(1, 2).contiguous()  # (12, Nz, H): wide rows for the bmm
        # b_0 is added to pre separately: as a broadcast bias of the d product (baddbmm) it cost a
        # (12, B, H) copy per step, slower than the product itself.
        self.bias = bias.view(GATES, H)  # (4, H)
        self.main = _Core(H, ln, eps, forget_bias, p["ln_weight"], p["ln_bias"], p["ln_cell_weight"], p["ln_cell_bias"])
        self.hyper = _Core(
            Hh,
            ln,
            eps,
            forget_bias,
            p["hyper_ln_weight"],
            p["hyper_ln_bias"],
            p["hyper_ln_cell_weight"],
            p["hyper_ln_cell_bias"],
        )
        self.hW_hh_split = None
        self.bias_flat = self.bias.reshape(-1)  # (4H,)
        if backend == "triton":
            # One product per step for s = [h, ĥ]: W2 = [[W_h, 0], [Ŵ_h, Ŵ_hh]] (triton_hyperlstm), and the
            # input projections, in the compute dtype (autocast does not reach into the Function).
            cd = dtype or self.W_h.dtype
            self.W2 = self.W_h.new_zeros(GATES * (H + Hh), H + Hh, dtype=cd)
            self.W2[: GATES * H, :H] = self.W_h
            self.W2[GATES * H :, :H] = self.hW_h
            self.W2[GATES * H :, H:] = self.hW_hh
            self.W_x, self.hW_x, self.hyper_bias = (t.to(cd) for t in (self.W_x, self.hW_x, self.hyper_bias))
            self.W_h, self.hW_h, self.hW_hh = (t.to(cd) for t in (self.W_h, self.hW_h, self.hW_hh))
            self.Zw, self.zb, self.DwT = (t.contiguous() for t in (self.Zw, self.zb, self.DwT))
        elif ext is not None:
            # One product per step for both recurrent inputs [h, hh]_{t-1}: u = W_h h and the hyper cell's
            # recurrent part, with a zero block (hh does not feed u), at small sizes; above
            # SPLIT_PRODUCT_MACS of zero-block work, two products (h against [W_h; W_ĥh], hh against W_ĥhh).
            W_cat = torch.cat([self.W_h, self.hW_h])  # (4H + 4Hh, H)
            if batch * GATES * H * Hh > SPLIT_PRODUCT_MACS:
                self.W2 = W_cat
                self.hW_hh_split = self.hW_hh
            else:
                self.W2 = self.W_h.new_zeros(GATES * (H + Hh), H + Hh)  # (4H + 4Hh, H + Hh)
                self.W2[:, :H] = W_cat
                self.W2[GATES * H :, H:] = self.hW_hh

    def scales(self, z: Tensor, parts: int = 3) -> Tensor:
        """``z`` ``(B, 12Nz)`` -> ``d`` ``(parts, 4, B, H)``: d_h, d_x and the dynamic bias (without b_0).

        ``parts=2`` computes only d_h and d_x (backward does not need the dynamic bias).
        """
        B, n = z.shape[0], parts * GATES
        d = torch.bmm(z.view(B, 3 * GATES, self.Nz).transpose(0, 1)[:n], self.DwT[:n])
        return d.view(parts, GATES, B, self.H)

    def fused(self) -> ModuleType:
        """The fused kernels (the fused path only)."""
        if self.ext is None:
            raise RuntimeError("fast HyperLSTM: the fused path ran without its kernels")
        return self.ext


def _forward_loop(
    x: Tensor, h: Tensor, c: Tensor, hh: Tensor, hc: Tensor, masks: Tensor | None, P: _Prepared, save: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Saved | None]:
    """Run the layer over ``x`` ``(T, B, I)`` from state ``h, c`` ``(B, H)``, ``hh, hc`` ``(B, Hh)``.

    Returns ``out`` ``(T, B, H)``, the final ``c``, ``hh``, ``hc`` and (if ``save``) a dict of per-step
    lists that backward needs: ``u`` ``(B, 4H)`` (fused: ``r`` ``(B, 4H + 4Hh)``, whose first 4H columns
    are u), ``pre`` ``(B, 4, H)``, ``c`` ``(B, H)``, ``z`` ``(B, 12Nz)``, ``hpre`` ``(B, 4, Hh)``,
    ``hc`` ``(B, Hh)``, ``hh`` ``(B, Hh)``.
    """
    T, B, _ = x.shape
    H = P.H
    # Input-only products for the whole sequence at once (docs/paper.md §1, Efficiency).
    wx = F.linear(x, P.W_x).view(T, B, GATES, H)
    hwx = F.linear(x, P.hW_x, P.hyper_bias)
    out = x.new_empty(T, B, H)
    keys = ("u", "pre", "c", "z", "hpre", "hc", "hh")
    saved: dict[str, list[Tensor]] | None = {k: [] for k in keys} if save else None
    for t in range(T):
        mask = None if masks is None else masks[t]
        h, c, hh, hc, keep = _python_step(P, h, c, hh, hc, wx[t], hwx[t], mask, out[t])
        if saved is not None:
            for k, v in zip(keys, keep, strict=True):
                saved[k].append(v)
    return out, c, hh, hc, saved


def _python_step(
    P: _Prepared,
    h: Tensor,
    c: Tensor,
    hh: Tensor,
    hc: Tensor,
    wx_t: Tensor,
    hwx_t: Tensor,
    mask: Tensor | None,
    h_out: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """One step with ATen ops; returns the new state and the tensors to save (see :func:`_forward_loop`)."""
    B, H, Hh = h.shape[0], P.H, P.Hh
    # Hyper cell on x̂ = [h_{t-1}, x_t] (Eq. 10).
    hpre = torch.addmm(torch.addmm(hwx_t, h, P.hW_h.t()), hh, P.hW_hh.t()).view(B, GATES, Hh)
    hh, hc = P.hyper.forward(hpre, hc, None)
    # Embeddings (Eq. 11) and scaling vectors (Eq. 12).
    z = torch.addmm(P.zb, hh, P.Zw.t())
    d = P.scales(z)
    # Main cell (Eq. 12-13); u first so that pre is contiguous (B, 4, H).
    u = torch.mm(h, P.W_h.t())
    pre = u.view(B, GATES, H) * d[0].transpose(0, 1)
    pre.addcmul_(d[1].transpose(0, 1), wx_t)
    pre.add_(d[2].transpose(0, 1)).add_(P.bias)
    h, c = P.main.forward(pre, c, mask, h_out=h_out)
    return h, c, hh, hc, (u, pre, c, z, hpre, hc, hh)


def _backward_python(
    P: _Prepared,
    saved: Saved,
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    hh0: Tensor,
    hc0: Tensor,
    masks: Tensor | None,
    dout: Tensor | None,
    dh: Tensor,
    dc: Tensor | None,
    dhh: Tensor | None,
    dhc: Tensor | None,
) -> BackwardLoopResult:
    """BPTT with ATen ops. Returns the state gradients and the per-step gradient buffers (see caller)."""
    T, B, _ = x.shape
    H, Hh, Nz, G = P.H, P.Hh, P.Nz, GATES
    wx = F.linear(x, P.W_x).view(T, B, G, H)  # recomputed: W_x x_t for d(d_x)
    DU = x.new_empty(T, B, G * H)  # d pre * d_h: gradient of u = W_h h_{t-1}
    DWX = x.new_empty(T, B, G * H)  # d pre * d_x: gradient of W_x x_t
    DHP = x.new_empty(T, B, G * Hh)  # gradient of the hyper pre-activation
    DZ = x.new_empty(T, B, 3 * G * Nz)  # gradient of z
    dd = x.new_empty(3, G, B, H)  # gradients of d_h, d_x, dynamic bias, gate-major for the bmm
    dpre = dd[2].transpose(0, 1)  # (B, 4, H) view: d(pre) is the dynamic bias's gradient
    dDwT = P.DwT.new_zeros(P.DwT.shape)  # (12, Nz, H): accumulated as z^T dd (wide output rows: faster)
    dbias_steps: list[Tensor] = []
    main_grads: dict[str, list[Tensor]] = {k: [] for k in ("gain", "shift", "cell_gain", "cell_shift")}
    hyper_grads: dict[str, list[Tensor]] = {k: [] for k in ("gain", "shift", "cell_gain", "cell_shift")}
    for t in range(T - 1, -1, -1):
        c_prev = c0 if t == 0 else saved["c"][t - 1]
        hc_prev = hc0 if t == 0 else saved["hc"][t - 1]
        mask = None if masks is None else masks[t]
        # Main cell: gates, LN, cell state.
        dc = P.main.backward(saved["pre"][t], c_prev, saved["c"][t], mask, dh, dc, main_grads, dpre)
        # pre = d_h * u + d_x * wx + dynamic bias + b0.
        z = saved["z"][t]
        d = P.scales(z, parts=2)
        torch.mul(dd[2], saved["u"][t].view(B, G, H).transpose(0, 1), out=dd[0])
        torch.mul(dd[2], wx[t].transpose(0, 1), out=dd[1])
        dbias_steps.append(dd[2].sum(1))
        torch.mul(dpre, d[0].transpose(0, 1), out=DU[t].view(B, G, H))
        torch.mul(dpre, d[1].transpose(0, 1), out=DWX[t].view(B, G, H))
        # d = W_.z z per (k, gate): dz = W_.z^T dd; dW_.z += dd^T z.
        dd12 = dd.view(3 * G, B, H)
        z12 = z.view(B, 3 * G, Nz).transpose(0, 1)
        dz = torch.bmm(dd12, P.Dw)  # (12, B, Nz)
        dDwT.baddbmm_(z12.transpose(1, 2), dd12)
        DZ[t].view(B, 3 * G, Nz).copy_(dz.transpose(0, 1))
        # z = Zw hh + zb.
        dhh = torch.mm(DZ[t], P.Zw) if dhh is None else torch.addmm(dhh, DZ[t], P.Zw)
        # Hyper cell.
        dhc = P.hyper.backward(
            saved["hpre"][t], hc_prev, saved["hc"][t], None, dhh, dhc, hyper_grads, DHP[t].view(B, G, Hh)
        )
        # Into the previous step: h_{t-1} feeds u (main) and x̂ (hyper); hh_{t-1} feeds the hyper cell.
        dh = torch.mm(DU[t], P.W_h) if t == 0 or dout is None else torch.addmm(dout[t - 1], DU[t], P.W_h)
        dh.addmm_(DHP[t], P.hW_h)
        dhh = torch.mm(DHP[t], P.hW_hh)
    grads: Grads = {"d_weight": dDwT, "bias": torch.stack(dbias_steps).sum(0).view(-1)}
    if P.ln:
        for prefix, g in (("", main_grads), ("hyper_", hyper_grads)):
            grads[prefix + "ln_weight"] = torch.stack(g["gain"]).sum(0)
            grads[prefix + "ln_bias"] = torch.stack(g["shift"]).sum(0)
            grads[prefix + "ln_cell_weight"] = torch.stack(g["cell_gain"]).sum(0)
            grads[prefix + "ln_cell_bias"] = torch.stack(g["cell_shift"]).sum(0)
    return (dh, dc, dhh, dhc), (DU, DWX, DHP, DZ, None), grads


def _forward_fused(
    x: Tensor, h: Tensor, c: Tensor, hh: Tensor, hc: Tensor, masks: Tensor | None, P: _Prepared, save: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Saved | None]:
    """The whole forward loop in the extension (one call; see csrc/hyperlstm_cell.cpp).

    Returns ``out``, the final ``c``, ``hh``, ``hc`` and (if ``save``) what backward needs, as whole-sequence
    tensors: ``r`` ``(T, B, 4H + 4Hh)``, ``z``, ``c``, ``hc``, ``hh``, ``wx = W_x x``, and in ``act``/``hact``
    the activations of both cells (5 tensors each, see ``Acts`` in the C++) with :data:`SAVE_ACTIVATIONS`,
    else none for the main cell and the hyper cell's pre-activations.
    """
    T, B, n_in = x.shape
    ext = P.fused()
    # (T, B, 4H), kept for backward (d_x's gradient); in a reused buffer (see ``workspace`` in the C++)
    wx = ext.workspace([T, B, GATES * P.H], x)
    torch.mm(x.view(T * B, n_in), P.W_x.t(), out=wx.view(T * B, GATES * P.H))
    hwx = ext.workspace([T, B, GATES * P.Hh], x)  # (T, B, 4Hh): Ŵ_x x, the kernel adds b̂
    torch.mm(x.view(T * B, n_in), P.hW_x.t(), out=hwx.view(T * B, GATES * P.Hh))
    res = ext.forward_loop(
        wx,
        hwx,
        h,
        c,
        hh,
        hc,
        masks,
        P.W2,
        P.hW_hh_split,
        P.Zw,
        P.zb,
        P.DwT,
        P.bias.reshape(-1),
        P.hyper_bias,
        *P.main.ln_args()[:4],
        *P.hyper.ln_args()[:4],
        P.main.eps,
        save,
        SAVE_ACTIVATIONS,
    )
    out, c, hh, hc, R, Z, C, HC, HH = res[:9]
    saved: Saved | None = None
    if save:
        # 5 activation tensors per cell, or none for the main cell (recomputed from r, wx, z) and the hyper
        # cell's pre-activations
        k = 5 if SAVE_ACTIVATIONS else 0
        saved = {
            "r": R,
            "z": Z,
            "c": C,
            "hc": HC,
            "hh": HH,
            "wx": wx,
            "act": list(res[9 : 9 + k]),
            "hact": list(res[9 + k :]),
        }
    return out, c, hh, hc, saved


def _backward_fused(
    P: _Prepared,
    saved: Saved,
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    hh0: Tensor,
    hc0: Tensor,
    masks: Tensor | None,
    dout: Tensor | None,
    dh: Tensor,
    dc: Tensor | None,
    dhh: Tensor | None,
    dhc: Tensor | None,
) -> BackwardLoopResult:
    """The whole BPTT loop in the extension (one call; see csrc/hyperlstm_cell.cpp)."""
    G, H, Hh = GATES, P.H, P.Hh
    res = P.fused().backward_loop(
        saved["r"],
        saved["z"],
        saved["c"],
        saved["hc"],
        saved["act"],
        saved["hact"],
        saved["wx"],
        c0,
        hc0,
        masks,
        dout,
        dh,
        dc,
        dhh,
        dhc,
        P.W2,
        P.hW_hh_split,
        P.Zw,
        P.DwT,
        P.bias.reshape(-1),
        *P.main.ln_args()[:4],
        *P.hyper.ln_args()[:4],
        P.main.eps,
    )
    DUH, DWX, DZ, dDwT, dbias = res[:5]
    grads: Grads = {"d_weight": dDwT, "bias": dbias}
    if P.ln:
        for prefix, acc, n in (("", res[5:9], H), ("hyper_", res[9:13], Hh)):
            grads[prefix + "ln_weight"] = acc[0].view(G, n)
            grads[prefix + "ln_bias"] = acc[1].view(G, n)
            grads[prefix + "ln_cell_weight"] = acc[2]
            grads[prefix + "ln_cell_bias"] = acc[3]
    return (res[13], res[14], res[15], res[16]), (DUH[..., : G * H], DWX, DUH[..., G * H :], DZ, DUH), grads


def _loops(backend: str) -> tuple[Any, Any]:
    """The forward and backward loops of ``backend`` (see :func:`backend_for`); backward runs the one
    forward ran. The Triton module is imported only when it runs (it imports triton)."""
    if backend == "triton":
        from . import triton_hyperlstm

        return triton_hyperlstm.forward_loop, triton_hyperlstm.backward_loop
    if backend == "fused":
        return _forward_fused, _backward_fused
    return _forward_loop, _backward_python


class HyperLSTMLayerFunction(torch.autograd.Function):
    """One HyperLSTM layer over a whole sequence, with hand-written BPTT.

    ``apply(forget_bias, eps, x, h0, c0, hh0, hc0, masks, *params)``: ``x`` ``(T, B, I)``; ``h0, c0``
    ``(B, H)``; ``hh0, hc0`` ``(B, Hh)``; ``masks`` ``(T, B, H)`` (scaled recurrent-dropout masks) or None;
    ``params`` the cell's parameters in :data:`PARAM_NAMES` order (LN ones None without layer norm).
    Returns ``out`` ``(T, B, H)``, ``h_T, c_T`` ``(B, H)``, ``hh_T, hc_T`` ``(B, Hh)``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        forget_bias: float,
        eps: float,
        x: Tensor,
        h0: Tensor,
        c0: Tensor,
        hh0: Tensor,
        hc0: Tensor,
        masks: Tensor | None,
        *params: Tensor | None,
    ) -> LayerOutput:
        p = dict(zip(PARAM_NAMES, params, strict=True))
        H, Hh = h0.shape[1], hh0.shape[1]
        P = _Prepared(p, H, Hh, forget_bias, eps, x.device, batch=x.shape[1], dtype=x.dtype)
        x, h0, c0, hh0, hc0 = (t.contiguous() for t in (x, h0, c0, hh0, hc0))
        masks = None if masks is None else masks.contiguous()
        out, c, hh, hc, saved = _loops(P.backend)[0](x, h0, c0, hh0, hc0, masks, P, True)
        assert saved is not None  # save=True
        # Backward must use the implementation forward used (what is saved differs). Saved entries are
        # tensors (fused: whole sequence) or lists (per step, or the activation tensors of a cell).
        layout = tuple((k, len(v) if isinstance(v, list) else None) for k, v in saved.items())
        ctx.meta = (forget_bias, eps, layout, P.backend)
        # Everything goes through save_for_backward (so saved-tensor hooks and memory counts see it).
        flat = [t for v in saved.values() for t in (v if isinstance(v, list) else [v])]
        ctx.save_for_backward(x, h0, c0, hh0, hc0, masks, out, *params, *flat)
        return out, out[-1].clone(), c, hh, hc

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any,
        dout: Tensor | None,
        dhT: Tensor | None,
        dcT: Tensor | None,
        dhhT: Tensor | None,
        dhcT: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        forget_bias, eps, layout, backend = ctx.meta
        x, h0, c0, hh0, hc0, masks, out, *rest = ctx.saved_tensors
        params, flat = rest[: len(PARAM_NAMES)], rest[len(PARAM_NAMES) :]
        saved: dict[str, Tensor | list[Tensor]] = {}
        i = 0
        for k, count in layout:
            saved[k] = flat[i] if count is None else list(flat[i : i + count])
            i += 1 if count is None else count
        T = x.shape[0]
        p = dict(zip(PARAM_NAMES, params, strict=True))
        B, H, Hh, G = x.shape[1], h0.shape[1], hh0.shape[1], GATES
        P = _Prepared(p, H, Hh, forget_bias, eps, x.device, backend=backend, batch=B, dtype=x.dtype)

        def contiguous(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.contiguous()

        # An expanded gradient (e.g. from out.sum()) sends addmm down a slow path (25x): materialise it.
        dout = contiguous(dout)
        dh = dhT if dout is None else (dout[T - 1] if dhT is None else dout[T - 1] + dhT)
        dh = h0.new_zeros(B, H) if dh is None else dh.contiguous()
        loop = _loops(backend)[1]
        # DUH: (fused) DU and DHP side by side in one buffer, whose products with h_{t-1} are then one.
        (dh, dc, dhh, dhc), (DU, DWX, DHP, DZ, DUH), grads = loop(
            P, saved, x, h0, c0, hh0, hc0, masks, dout, dh, contiguous(dcT), contiguous(dhhT), contiguous(dhcT)
        )

        # Weight gradients: one product over all T*B rows each. h_{t-1} is out shifted by a step: step 0's
        # part (h0) is a product of its own, so no shifted copy of the sequence is made.
        TB = T * B
        hh_saved = saved["hh"]  # fused: one tensor; Python path: one per step
        hh_all = hh_saved if isinstance(hh_saved, Tensor) else torch.stack(hh_saved)  # (T, B, Hh)

        def prev_product(D: Tensor, first: Tensor, rest: Tensor) -> Tensor:
            """sum_t D_t^T s_{t-1} for D (T, B, n) and states s_{-1} = first (B, m), s_0..s_{T-2} = rest[:-1].

            Computed as (sum_t s_{t-1}^T D_t)^T: MKL is ~10-15% faster with the long rows of D as the right
            operand; the transposed result is copied once into the parameter's layout by autograd."""
            g = first.t() @ D[0]
            if T > 1:
                g.addmm_(rest[:-1].reshape((T - 1) * B, rest.shape[-1]).t(), D[1:].reshape((T - 1) * B, D.shape[-1]))
            return g.t()

        if DUH is not None:
            dW_h, dW_hh_part = torch.split(prev_product(DUH, h0, out), [G * H, G * Hh])
        else:
            dW_h, dW_hh_part = prev_product(DU, h0, out), prev_product(DHP, h0, out)
        xf = x.reshape(TB, -1)
        DWX2, DHP2, DZ2 = (t.reshape(TB, t.shape[-1]) for t in (DWX, DHP, DZ))
        grads.update(
            {
                "weight_ih": (xf.t() @ DWX2).t(),
                "weight_hh": dW_h,
                "hyper_weight_ih": torch.cat([dW_hh_part, DHP2.t() @ xf], dim=1),
                "hyper_weight_hh": prev_product(DHP, hh0, hh_all),
                "hyper_bias": DHP2.sum(0),
                "z_weight": (DZ2.t() @ hh_all.reshape(TB, Hh)).view_as(p["z_weight"]),
                "z_bias": DZ2.sum(0)[: 2 * G * P.Nz].view_as(p["z_bias"]),
            }
        )
        grads["d_weight"] = grads["d_weight"].transpose(1, 2).reshape(p["d_weight"].shape)
        dx = None
        if ctx.needs_input_grad[2]:
            dx = (DWX2 @ P.W_x).addmm_(DHP2, P.hW_x).view_as(x)
        param_grads = [grads.get(name) if ctx.needs_input_grad[8 + i] else None for i, name in enumerate(PARAM_NAMES)]
        return (None, None, dx, dh, dc, dhh, dhc, None, *param_grads)


def layer_forward(
    cell: HyperLSTMCell, x: Tensor, h0: Tensor, c0: Tensor, hh0: Tensor, hc0: Tensor, masks: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer over ``x`` ``(T, B, I)``: ``out`` ``(T, B, H)`` and the final ``h, c, hyper_h, hyper_c``.

    Uses the autograd Function when a gradient is needed, else the plain loop (nothing saved).
    """
    params = [getattr(cell, name) for name in PARAM_NAMES]
    tensors = [x, h0, c0, hh0, hc0, masks, *params]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        # torch leaves Function.apply unannotated: its result is typed here.
        result: LayerOutput = HyperLSTMLayerFunction.apply(cell.forget_bias, cell.eps, *tensors)  # type: ignore[no-untyped-call]
        return result
    with torch.no_grad():
        P = _Prepared(
            dict(zip(PARAM_NAMES, params, strict=True)),
            cell.hidden_size,
            cell.hyper_size,
            cell.forget_bias,
            cell.eps,
            x.device,
            batch=x.shape[1],
            dtype=x.dtype,
        )
        h0, c0, hh0, hc0 = (t.contiguous() for t in (h0, c0, hh0, hc0))
        masks = None if masks is None else masks.contiguous()
        x = x.contiguous()
        out, c, hh, hc, _ = _loops(P.backend)[0](x, h0, c0, hh0, hc0, masks, P, False)
    return out, out[-1], c, hh, hc


def fast_forward(module: HyperLSTM, x: Tensor, state: HyperLSTMState | None = None) -> tuple[Tensor, HyperLSTMState]:
    """``HyperLSTM.forward`` through :class:`HyperLSTMLayerFunction`, one node per layer.

    Same conventions, results and dropout masks (drawn in the same order) as the reference path.
    """
    from .hyperlstm import HyperLSTMState, recurrent_dropout_masks  # deferred: hyperlstm imports this module

    if x.dim() != 3:
        raise ValueError(f"expected a 3-D input (seq, batch, features), got shape {tuple(x.shape)}")
    if module.batch_first:
        x = x.transpose(0, 1)
    x = x.contiguous()
    T, B, _ = x.shape
    if state is None:
        state = module.zero_state(B, x)
    compute = _autocast_dtype(x.device)
    if compute is not None:
        # Autocast does not reach into an autograd Function: the Triton path takes the autocast dtype as
        # its compute dtype (inputs and matrix products in it, cell states in fp32), as cuDNN's LSTM does.
        x = x.to(compute)
        state = HyperLSTMState(state.h.to(compute), state.c.float(), state.hyper_h.to(compute), state.hyper_c.float())
    finals: list[list[Tensor]] = []
    layer_input = x
    for k, cell in enumerate(cast("Iterable[HyperLSTMCell]", module.cells)):
        masks = recurrent_dropout_masks(cell.recurrent_dropout, module.training, T, B, module.hidden_size, x)
        out, *final = layer_forward(
            cell, layer_input, state.h[k], state.c[k], state.hyper_h[k], state.hyper_c[k], masks
        )
        layer_input = out
        if module.dropout and k < module.num_layers - 1:
            layer_input = F.dropout(layer_input, module.dropout, module.training)
        finals.append(final)
    output = layer_input.transpose(0, 1) if module.batch_first else layer_input
    return output, HyperLSTMState(*(torch.stack(parts) for parts in zip(*finals, strict=True)))


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype in force for ``device`` when the Triton path runs there, else None."""
    if not torch.is_autocast_enabled(device.type) or backend_for(device) != "triton":
        return None
    return torch.get_autocast_dtype(device.type)


def release_workspace() -> None:
    """Free the buffers the fused path keeps for reuse between calls (about one training step's worth)."""
    if _EXTENSION is not None:
        _EXTENSION.release_workspace()


__all__ = ["HyperLSTMLayerFunction", "backend_for", "fast_forward", "layer_forward", "release_workspace"]
