"""The fast HyperLSTM path on CUDA: per time step one matrix product and one fused Triton kernel.

The structure follows the "alternating" scheme of haste and FlashRNN (one GEMM plus one fused pointwise
kernel per step, input projections of the whole sequence up front), extended to the HyperLSTM's two
cells. With ``s_t = [h_t, ĥ_t]`` (the main and the hyper cell's outputs side by side, ``(B, H + Hh)``) and
the block matrix ``W2 = [[W_h, 0], [Ŵ_h, Ŵ_hh]]`` (``(4H + 4Hh, H + Hh)``), every step is:

* ``r_t = s_{t-1} W2^T``: the main cell's recurrent product ``u = W_h h`` and the hyper cell's whole
  recurrent input in ONE product (cuBLAS; the zero block costs ~10% extra work at the paper's sizes);
* one Triton program per batch row for everything else: the hyper cell (pre-activation ``r + Ŵ_x x + b̂``,
  per-gate layer norm, gates, ``ĉ``, ``LN(ĉ)``, ``ĥ``), the embeddings ``z = W_ĥz ĥ + b_z`` and scaling
  vectors ``d = W_z z`` (Eq. 11-12: small, so a loop over N_z inside the kernel), the scaled main
  pre-activation ``d_h ⊙ u + d_x ⊙ W_x x + d_b + b_0``, its per-gate layer norm, recurrent dropout on the
  candidate, ``c``, ``LN(c)`` and ``h``; the row of ``s_t`` for the next product is written there.

Backward mirrors it: per step one fused kernel (recomputing both cells' activations from what forward
saved: ``r``, ``z``, ``c``, ``ĉ``; the same trade as the CPU path) and ONE product
``[dh, dĥ]_{t-1} = [du, dr̂]_t W2``, the same ``W2``. Weight gradients are large products over the whole
sequence after the loop (in :mod:`hypermodels.fast_hyperlstm`). Layer-norm parameter gradients are
accumulated per batch row inside the kernel (each program owns its row: no atomics) and summed after.

Precision: the kernels read fp32, bf16 or fp16 and compute in fp32; the cell states ``c``, ``ĉ`` and the
gradients carried between steps inside the kernel are fp32; matrix products run in the input dtype
(cuBLAS accumulates in fp32).

The same kernels run on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``), which is how
the tests check them on machines without a GPU (tests/hypermodels/test_triton_hyperlstm.py).
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .fast_hyperlstm import BackwardLoopResult, Grads, Saved, _Prepared

GATES = 4


def available(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device``: CUDA with Triton installed, or any device under
    Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors)."""
    if importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return device.type == "cpu"
    return device.type == "cuda"


_KERNELS: Any = None


def _kernels() -> Any:
    """The jitted kernels, defined on first use (importing triton costs ~1 s; the CPU path never needs it)."""
    global _KERNELS
    if _KERNELS is None:
        from . import _triton_kernels

        _KERNELS = _triton_kernels
    return _KERNELS


def _launch_config(H: int, Hh: int) -> tuple[int, int, int]:
    """``(BLOCK_H, BLOCK_HH, num_warps)``: a program holds whole rows of both cells (layer norm needs the
    row's statistics), so the blocks are the sizes rounded up to a power of two."""
    import triton

    bh, bhh = triton.next_power_of_2(H), triton.next_power_of_2(Hh)
    warps = 4 if bh <= 256 else 8 if bh <= 1024 else 16
    return bh, bhh, warps


def _param_args(P: _Prepared) -> list[Tensor]:
    """The small per-step parameters in kernel order; layer-norm ones replaced by the bias when absent
    (never read: the kernels skip them unless ``LN``)."""
    dummy = P.bias_flat
    main = P.main.affine
    hyper = P.hyper.affine
    ln = [
        *(main if main is not None else (dummy,) * 4),
        *(hyper if hyper is not None else (dummy,) * 4),
    ]
    return [P.bias_flat, *ln, P.Zw, P.zb, P.DwT]


def forward_loop(
    x: Tensor, h: Tensor, c: Tensor, hh: Tensor, hc: Tensor, masks: Tensor | None, P: _Prepared, save: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Saved | None]:
    """Run one layer over ``x`` ``(T, B, I)`` from ``h, c`` ``(B, H)``, ``hh, hc`` ``(B, Hh)``.

    Returns ``out`` ``(T, B, H)`` (x's dtype), the final ``c`` and ``hc`` (fp32) and ``hh``, and (if
    ``save``) what :func:`backward_loop` needs: ``r`` ``(T, B, 4H + 4Hh)``, ``wx`` ``(T, B, 4H)``, ``hwx``
    ``(T, B, 4Hh)``, ``z`` ``(T, B, 12 N_z)`` (fp32), ``c`` ``(T + 1, B, H)`` and ``hc`` ``(T + 1, B, Hh)``
    (fp32, index 0 the initial state), ``hh`` ``(T, B, Hh)``.
    """
    K = _kernels()
    T, B, n_in = x.shape
    H, Hh, Nz = P.H, P.Hh, P.Nz
    dt = x.dtype
    RW = GATES * (H + Hh)
    f32 = torch.float32
    # Input-only products for the whole sequence at once (docs/paper.md §1, Efficiency).
    wx = torch.mm(x.view(T * B, n_in), P.W_x.t()).view(T, B, GATES * H)
    hwx = torch.addmm(P.hyper_bias, x.view(T * B, n_in), P.hW_x.t()).view(T, B, GATES * Hh)
    out = x.new_empty(T, B, H)
    slots = T + 1 if save else 2  # states of every step for backward, else a ping-pong pair
    C = x.new_empty(slots, B, H, dtype=f32)
    HC = x.new_empty(slots, B, Hh, dtype=f32)
    C[0].copy_(c)
    HC[0].copy_(hc)
    R = x.new_empty(T if save else 1, B, RW)
    Z = x.new_empty(T if save else 1, B, 3 * GATES * Nz, dtype=f32)
    HH = x.new_empty(T, B, Hh) if save else out  # written only when saving: any tensor stands in
    S = torch.cat([h, hh], dim=1).to(dt).contiguous()  # s_{t-1} = [h, ĥ], rewritten by every step
    mask_arg = masks if masks is not None else out
    bh, bhh, warps = _launch_config(H, Hh)
    params = _param_args(P)
    for t in range(T):
        r = R[t if save else 0]
        torch.mm(S, P.W2.t(), out=r)
        K.forward_step[(B,)](
            r,
            wx,
            hwx,
            mask_arg,
            S,
            out,
            C,
            HC,
            Z,
            HH,
            *params,
            t,
            B,
            H,
            Hh,
            Nz,
            P.main.eps,
            LN=P.ln,
            HAS_MASK=masks is not None,
            SAVE=save,
            BH=bh,
            BHH=bhh,
            num_warps=warps,
        )
    last = T if save else T % 2
    hh_last = S[:, H:].clone()
    saved: Saved | None = None
    if save:
        saved = {"r": R, "wx": wx, "hwx": hwx, "z": Z, "c": C, "hc": HC, "hh": HH}
    return out, C[last].clone(), hh_last, HC[last].clone(), saved


def backward_loop(
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
    """BPTT over what :func:`forward_loop` saved (see ``BackwardLoopResult`` in fast_hyperlstm).

    ``dh`` already holds ``dout[T-1]`` plus the gradient of the final ``h``; ``dout[t]`` for earlier
    steps is added inside the kernel.
    """
    K = _kernels()
    T, B, _ = x.shape
    H, Hh, Nz, G = P.H, P.Hh, P.Nz, GATES
    dt = x.dtype
    f32 = torch.float32

    def tensor(name: str) -> Tensor:
        v = saved[name]
        assert isinstance(v, Tensor)
        return v

    R, wx, hwx, Z, C, HC = (tensor(k) for k in ("r", "wx", "hwx", "z", "c", "hc"))
    RW = G * (H + Hh)
    DUH = x.new_empty(T, B, RW)  # [du, dr̂] per step: the gradients of both recurrent products
    DWX = x.new_empty(T, B, G * H)
    DPRE = x.new_empty(T, B, G * H, dtype=f32)  # d(main pre-activation): d b_0 and d W_z after the loop
    DZ = x.new_empty(T, B, 3 * G * Nz)
    # [dh, dĥ] arriving from step t+1 (the product's output), and the fp32 cell-state gradients.
    DREC = x.new_zeros(B, H + Hh)
    DREC[:, :H] = dh
    if dhh is not None:
        DREC[:, H:] = dhh
    DC = dc.to(f32).clone() if dc is not None else x.new_zeros(B, H, dtype=f32)
    DHC = dhc.to(f32).clone() if dhc is not None else x.new_zeros(B, Hh, dtype=f32)
    # Per-row accumulators of the layer-norm parameter gradients: main (gain, shift: 4H each; cell gain,
    # shift: H each), then hyper (the same with Hh).
    acc_width = 10 * H + 10 * Hh if P.ln else 1
    ACC = x.new_zeros(B, acc_width, dtype=f32)
    mask_arg = masks if masks is not None else DWX
    dout_arg = dout if dout is not None else DWX
    bh, bhh, warps = _launch_config(H, Hh)
    params = _param_args(P)
    for t in range(T - 1, -1, -1):
        K.backward_step[(B,)](
            R,
            wx,
            hwx,
            mask_arg,
            Z,
            C,
            HC,
            DREC,
            dout_arg,
            DC,
            DHC,
            DUH,
            DWX,
            DPRE,
            DZ,
            ACC,
            *params,
            t,
            B,
            H,
            Hh,
            Nz,
            P.main.eps,
            acc_width,
            LN=P.ln,
            HAS_MASK=masks is not None,
            ADD_DOUT=dout is not None and t < T - 1,
            BH=bh,
            BHH=bhh,
            num_warps=warps,
        )
        torch.mm(DUH[t], P.W2, out=DREC)  # [dh, dĥ]_{t-1}
    # d W_z: sum over (t, b) of z ⊗ dd, with dd = dpre ⊙ (u, W_x x, 1) for (d_h, d_x, d_b).
    TB = T * B
    zk = Z.view(TB, 3, G, Nz)
    dpre = DPRE.view(TB, G, H)
    dDwT = x.new_empty(3 * G, Nz, H, dtype=f32)
    for k, factor in enumerate((R[..., : G * H], wx, None)):
        dd = dpre if factor is None else dpre * factor.reshape(TB, G, H).to(f32)
        torch.bmm(zk[:, k].permute(1, 2, 0), dd.permute(1, 0, 2), out=dDwT[k * G : (k + 1) * G])
    grads: Grads = {"d_weight": dDwT, "bias": DPRE.sum((0, 1))}
    if P.ln:
        acc = ACC.sum(0)
        main_acc, hyper_acc = acc[: 10 * H], acc[10 * H :]
        for prefix, a, n in (("", main_acc, H), ("hyper_", hyper_acc, Hh)):
            grads[prefix + "ln_weight"] = a[: G * n].view(G, n)
            grads[prefix + "ln_bias"] = a[G * n : 2 * G * n].view(G, n)
            grads[prefix + "ln_cell_weight"] = a[2 * G * n : 2 * G * n + n]
            grads[prefix + "ln_cell_bias"] = a[2 * G * n + n :]
    dh0 = DREC[:, :H].to(dt)
    dhh0 = DREC[:, H:].to(dt)
    return (dh0, DC, dhh0, DHC), (DUH[..., : G * H], DWX, DUH[..., G * H :], DZ, DUH), grads


__all__ = ["available", "backward_loop", "forward_loop"]
