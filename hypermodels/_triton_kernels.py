"""Triton kernels of the CUDA HyperLSTM path (see :mod:`hypermodels.triton_hyperlstm` for the scheme).

One program per batch row holds the row's four gates of both cells as ``(4, BLOCK)`` tiles (gate-major,
as the parameters are stacked: i, g, f, o), so per-gate layer norm is a row reduction inside the program.
Columns past the cell size are masked and kept at zero where a reduction reads them.
Everything is computed in fp32; loads convert from the storage dtype.
"""

# mypy: ignore-errors
# (Triton's language functions are untyped; the wrapper module is checked.)

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # exp of a non-positive argument only: no overflow for large |x|.
    e = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -y, y)


@triton.jit
def _gate(a, gidx, k: tl.constexpr):
    """Row ``k`` of a ``(4, BLOCK)`` tile as a ``(BLOCK,)`` vector."""
    return tl.sum(tl.where(gidx == k, a, 0.0), axis=0)


@triton.jit
def _stack(i, g, f, o, gidx):
    """Four ``(BLOCK,)`` vectors as the rows of a ``(4, BLOCK)`` tile."""
    return tl.where(gidx == 0, i[None, :], tl.where(gidx == 1, g[None, :], tl.where(gidx == 2, f[None, :], o[None, :])))


@triton.jit
def _norm_rows(a, valid, n, eps):
    """Per-gate layer norm statistics: ``(normalised tile, rstd (4,))`` over the ``n`` valid columns."""
    mean = tl.sum(tl.where(valid, a, 0.0), axis=1) / n
    xc = tl.where(valid, a - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / n + eps)
    return xc * rstd[:, None], rstd


@triton.jit
def _norm_vec(a, valid, n, eps):
    """Layer norm statistics of one ``(BLOCK,)`` vector: ``(normalised, rstd)``."""
    mean = tl.sum(tl.where(valid, a, 0.0), axis=0) / n
    xc = tl.where(valid, a - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / n + eps)
    return xc * rstd, rstd


@triton.jit
def _load(ptr, offs, valid):
    return tl.load(ptr + offs, mask=valid, other=0.0).to(tl.float32)


@triton.jit
def _activations(pre, gidx, valid2, n, eps, g_ptr, s_ptr, offs2, LN: tl.constexpr):
    """Gates ``i, g, f, o`` (sigmoid, tanh, sigmoid, sigmoid) of pre-activations ``(4, BLOCK)``, and the
    layer-norm's normalised tile and rstd (dummies without LN)."""
    if LN:
        norm, rstd = _norm_rows(pre, valid2, n, eps)
        gain = _load(g_ptr, offs2, valid2)
        act = norm * gain + _load(s_ptr, offs2, valid2)
    else:
        norm = pre
        rstd = tl.sum(pre, axis=1)
        gain = pre
        act = pre
    i = _sigmoid(_gate(act, gidx, 0))
    g = _tanh(_gate(act, gidx, 1))
    f = _sigmoid(_gate(act, gidx, 2))
    o = _sigmoid(_gate(act, gidx, 3))
    return i, g, f, o, norm, rstd, gain


@triton.jit
def _cell_output(c, valid1, n, eps, cg_ptr, cs_ptr, offs1, LN: tl.constexpr):
    """``LN(c)`` (or ``c``) on the output path, with its normalised vector, rstd and gain."""
    if LN:
        cn, crstd = _norm_vec(c, valid1, n, eps)
        cg = _load(cg_ptr, offs1, valid1)
        c_out = cn * cg + _load(cs_ptr, offs1, valid1)
    else:
        cn = c
        crstd = tl.sum(c, axis=0)
        cg = c
        c_out = c
    return c_out, cn, crstd, cg


@triton.jit
def _core_forward(
    pre, c_prev, mask, gidx, valid2, valid1, n, eps, g_ptr, s_ptr, cg_ptr, cs_ptr, offs2, offs1,
    LN: tl.constexpr, HAS_MASK: tl.constexpr,
):  # fmt: skip
    """One LSTM core step (main or hyper cell): pre-activations ``(4, BLOCK)`` -> ``h``, ``c``."""
    i, g, f, o, _n, _r, _g = _activations(pre, gidx, valid2, n, eps, g_ptr, s_ptr, offs2, LN)
    cand = g * mask if HAS_MASK else g
    c = tl.where(valid1, f * c_prev + i * cand, 0.0)
    c_out, _cn, _cr, _cg = _cell_output(c, valid1, n, eps, cg_ptr, cs_ptr, offs1, LN)
    h = tl.where(valid1, o * _tanh(c_out), 0.0)
    return h, c


@triton.jit
def _core_backward(
    pre, c_prev, c, mask, dh, dc, gidx, valid2, valid1, n, eps, g_ptr, s_ptr, cg_ptr, cs_ptr, offs2, offs1,
    acc_ptr, LN: tl.constexpr, HAS_MASK: tl.constexpr,
):  # fmt: skip
    """Backward of :func:`_core_forward`, recomputing its activations.

    Returns ``d pre`` ``(4, BLOCK)`` and ``d c_prev``; adds this row's layer-norm parameter gradients to
    ``acc_ptr``: gain (4n), shift (4n), cell gain (n), cell shift (n).
    """
    i, g, f, o, norm, rstd, gain = _activations(pre, gidx, valid2, n, eps, g_ptr, s_ptr, offs2, LN)
    c_out, cn, crstd, cg = _cell_output(c, valid1, n, eps, cg_ptr, cs_ptr, offs1, LN)
    tco = _tanh(c_out)
    da_o = dh * tco * o * (1.0 - o)
    dc_out = dh * o * (1.0 - tco * tco)
    if LN:
        cell_off = 8 * n
        tl.store(acc_ptr + cell_off + offs1, _load(acc_ptr + cell_off, offs1, valid1) + dc_out * cn, mask=valid1)
        tl.store(acc_ptr + cell_off + n + offs1, _load(acc_ptr + cell_off + n, offs1, valid1) + dc_out, mask=valid1)
        dcn = tl.where(valid1, dc_out * cg, 0.0)
        dc_new = crstd * (dcn - tl.sum(dcn, axis=0) / n - cn * (tl.sum(dcn * cn, axis=0) / n))
    else:
        dc_new = dc_out
    dc_new = tl.where(valid1, dc_new + dc, 0.0)
    cand = g * mask if HAS_MASK else g
    da_f = dc_new * c_prev * f * (1.0 - f)
    da_i = dc_new * cand * i * (1.0 - i)
    dcand = dc_new * i * mask if HAS_MASK else dc_new * i
    da_g = dcand * (1.0 - g * g)
    dc_prev = dc_new * f
    dact = tl.where(valid2, _stack(da_i, da_g, da_f, da_o, gidx), 0.0)
    if LN:
        tl.store(acc_ptr + offs2, _load(acc_ptr, offs2, valid2) + dact * norm, mask=valid2)
        tl.store(acc_ptr + 4 * n + offs2, _load(acc_ptr + 4 * n, offs2, valid2) + dact, mask=valid2)
        dn = dact * gain
        m1 = tl.sum(dn, axis=1) / n
        m2 = tl.sum(dn * norm, axis=1) / n
        dpre = tl.where(valid2, rstd[:, None] * (dn - m1[:, None] - norm * m2[:, None]), 0.0)
    else:
        dpre = dact
    return dpre, dc_prev


@triton.jit(do_not_specialize=["t"])
def forward_step(
    R, WX, HWX, MASK, S, OUT, C, HC, Z, HH,
    bias_ptr, g_ptr, s_ptr, cg_ptr, cs_ptr, hg_ptr, hs_ptr, hcg_ptr, hcs_ptr, Zw_ptr, zb_ptr, DwT_ptr,
    t, B, H, Hh, Nz, eps,
    LN: tl.constexpr, HAS_MASK: tl.constexpr, SAVE: tl.constexpr, BH: tl.constexpr, BHH: tl.constexpr,
):  # fmt: skip
    """Step ``t`` of one layer for batch row ``program_id(0)``; ``R`` is this step's ``(B, 4H + 4Hh)``
    product; ``C``/``HC`` hold the cell states by slot (``t`` -> ``t + 1``; a ping-pong pair unless SAVE).
    """
    b = tl.program_id(0)
    gidx = tl.arange(0, 4)[:, None]
    jh = tl.arange(0, BH)
    jhh = tl.arange(0, BHH)
    v1 = jh < H
    hv1 = jhh < Hh
    offs = gidx * H + jh[None, :]
    v2 = (gidx < 4) & v1[None, :]
    hoffs = gidx * Hh + jhh[None, :]
    hv2 = (gidx < 4) & hv1[None, :]
    RW = 4 * H + 4 * Hh
    tb = t * B + b
    if SAVE:
        prev = t
        cur = t + 1
        zslot = t
    else:
        prev = t % 2
        cur = (t + 1) % 2
        zslot = 0

    # Hyper cell (Eq. 10): r̂ + Ŵ_x x + b̂ (b̂ added to hwx up front).
    hpre = _load(R + b * RW + 4 * H, hoffs, hv2) + _load(HWX + tb * 4 * Hh, hoffs, hv2)
    hc_prev = _load(HC + (prev * B + b) * Hh, jhh, hv1)
    hh, hc = _core_forward(
        hpre, hc_prev, hc_prev, gidx, hv2, hv1, Hh, eps, hg_ptr, hs_ptr, hcg_ptr, hcs_ptr, hoffs, jhh, LN, False
    )
    tl.store(HC + (cur * B + b) * Hh + jhh, hc, mask=hv1)
    tl.store(S + b * (H + Hh) + H + jhh, hh.to(S.dtype.element_ty), mask=hv1)
    if SAVE:
        tl.store(HH + tb * Hh + jhh, hh.to(HH.dtype.element_ty), mask=hv1)

    # z = W_ĥz ĥ + b_z (Eq. 11) and d = W_z z (Eq. 12), per (k, gate), looping over N_z.
    d0 = tl.zeros([4, BH], dtype=tl.float32)
    d1 = tl.zeros([4, BH], dtype=tl.float32)
    d2 = tl.zeros([4, BH], dtype=tl.float32)
    g1 = tl.arange(0, 4)
    for n in range(Nz):
        for k in tl.static_range(3):
            zrow = (k * 4 + g1) * Nz + n  # (4,) rows of W_ĥz / entries of z
            zw = _load(Zw_ptr, zrow[:, None] * Hh + jhh[None, :], hv2)
            z = tl.sum(zw * hh[None, :], axis=1) + tl.load(zb_ptr + zrow).to(tl.float32)
            if SAVE:
                tl.store(Z + (zslot * B + b) * 12 * Nz + zrow, z)
            w = _load(DwT_ptr, zrow[:, None] * H + jh[None, :], v2)
            if k == 0:
                d0 += z[:, None] * w
            elif k == 1:
                d1 += z[:, None] * w
            else:
                d2 += z[:, None] * w

    # Main cell (Eq. 12-13).
    u = _load(R + b * RW, offs, v2)
    wx = _load(WX + tb * 4 * H, offs, v2)
    pre = d0 * u + d1 * wx + d2 + _load(bias_ptr, offs, v2)
    c_prev = _load(C + (prev * B + b) * H, jh, v1)
    if HAS_MASK:
        mask = _load(MASK + tb * H, jh, v1)
    else:
        mask = c_prev
    h, c = _core_forward(pre, c_prev, mask, gidx, v2, v1, H, eps, g_ptr, s_ptr, cg_ptr, cs_ptr, offs, jh, LN, HAS_MASK)
    tl.store(C + (cur * B + b) * H + jh, c, mask=v1)
    tl.store(S + b * (H + Hh) + jh, h.to(S.dtype.element_ty), mask=v1)
    tl.store(OUT + tb * H + jh, h.to(OUT.dtype.element_ty), mask=v1)


@triton.jit(do_not_specialize=["t"])
def backward_step(
    R, WX, HWX, MASK, Z, C, HC, DREC, DOUT, DC, DHC, DUH, DWX, DPRE, DZ, ACC,
    bias_ptr, g_ptr, s_ptr, cg_ptr, cs_ptr, hg_ptr, hs_ptr, hcg_ptr, hcs_ptr, Zw_ptr, zb_ptr, DwT_ptr,
    t, B, H, Hh, Nz, eps, acc_width,
    LN: tl.constexpr, HAS_MASK: tl.constexpr, ADD_DOUT: tl.constexpr, BH: tl.constexpr, BHH: tl.constexpr,
):  # fmt: skip
    """BPTT step ``t`` for batch row ``program_id(0)``.

    Reads ``DREC`` ``(B, H + Hh)`` (``[dh, dĥ]`` from step t+1's product) and the fp32 state gradients
    ``DC``, ``DHC`` (updated in place to step t-1's); writes ``DUH[t]`` (``[du, dr̂]``, the input of the
    next product), ``DWX[t]``, ``DPRE[t]``, ``DZ[t]``.
    """
    b = tl.program_id(0)
    gidx = tl.arange(0, 4)[:, None]
    g1 = tl.arange(0, 4)
    jh = tl.arange(0, BH)
    jhh = tl.arange(0, BHH)
    v1 = jh < H
    hv1 = jhh < Hh
    offs = gidx * H + jh[None, :]
    v2 = (gidx < 4) & v1[None, :]
    hoffs = gidx * Hh + jhh[None, :]
    hv2 = (gidx < 4) & hv1[None, :]
    RW = 4 * H + 4 * Hh
    tb = t * B + b
    acc_row = ACC + b * acc_width

    # Recompute the main cell's pre-activation: d from the saved z, then d_h u + d_x W_x x + d_b + b_0.
    d0 = tl.zeros([4, BH], dtype=tl.float32)
    d1 = tl.zeros([4, BH], dtype=tl.float32)
    d2 = tl.zeros([4, BH], dtype=tl.float32)
    for n in range(Nz):
        for k in tl.static_range(3):
            zrow = (k * 4 + g1) * Nz + n
            z = tl.load(Z + tb * 12 * Nz + zrow)
            w = _load(DwT_ptr, zrow[:, None] * H + jh[None, :], v2)
            if k == 0:
                d0 += z[:, None] * w
            elif k == 1:
                d1 += z[:, None] * w
            else:
                d2 += z[:, None] * w
    u = _load(R + tb * RW, offs, v2)
    wx = _load(WX + tb * 4 * H, offs, v2)
    pre = d0 * u + d1 * wx + d2 + _load(bias_ptr, offs, v2)
    c_prev = _load(C + (t * B + b) * H, jh, v1)
    c = _load(C + ((t + 1) * B + b) * H, jh, v1)
    if HAS_MASK:
        mask = _load(MASK + tb * H, jh, v1)
    else:
        mask = c
    dh = _load(DREC + b * (H + Hh), jh, v1)
    if ADD_DOUT:
        dh += _load(DOUT + tb * H, jh, v1)
    dc = _load(DC + b * H, jh, v1)
    dpre, dc_prev = _core_backward(
        pre, c_prev, c, mask, dh, dc, gidx, v2, v1, H, eps, g_ptr, s_ptr, cg_ptr, cs_ptr, offs, jh,
        acc_row, LN, HAS_MASK,
    )  # fmt: skip
    tl.store(DC + b * H + jh, dc_prev, mask=v1)
    tl.store(DPRE + tb * 4 * H + offs, dpre, mask=v2)
    tl.store(DUH + tb * RW + offs, (dpre * d0).to(DUH.dtype.element_ty), mask=v2)
    tl.store(DWX + tb * 4 * H + offs, (dpre * d1).to(DWX.dtype.element_ty), mask=v2)

    # dz = W_z^T dd with dd = dpre ⊙ (u, W_x x, 1); dĥ = W_ĥz^T dz + (dĥ from step t+1's product).
    dd0 = dpre * u
    dd1 = dpre * wx
    dhh = _load(DREC + b * (H + Hh) + H, jhh, hv1)
    for n in range(Nz):
        for k in tl.static_range(3):
            zrow = (k * 4 + g1) * Nz + n
            w = _load(DwT_ptr, zrow[:, None] * H + jh[None, :], v2)
            if k == 0:
                dz = tl.sum(dd0 * w, axis=1)
            elif k == 1:
                dz = tl.sum(dd1 * w, axis=1)
            else:
                dz = tl.sum(dpre * w, axis=1)
            tl.store(DZ + tb * 12 * Nz + zrow, dz.to(DZ.dtype.element_ty))
            zw = _load(Zw_ptr, zrow[:, None] * Hh + jhh[None, :], hv2)
            dhh += tl.sum(dz[:, None] * zw, axis=0)

    # Hyper cell.
    hpre = _load(R + tb * RW + 4 * H, hoffs, hv2) + _load(HWX + tb * 4 * Hh, hoffs, hv2)
    hc_prev = _load(HC + (t * B + b) * Hh, jhh, hv1)
    hc = _load(HC + ((t + 1) * B + b) * Hh, jhh, hv1)
    dhc = _load(DHC + b * Hh, jhh, hv1)
    dhpre, dhc_prev = _core_backward(
        hpre, hc_prev, hc, hc, dhh, dhc, gidx, hv2, hv1, Hh, eps, hg_ptr, hs_ptr, hcg_ptr, hcs_ptr, hoffs, jhh,
        acc_row + 10 * H, LN, False,
    )  # fmt: skip
    tl.store(DHC + b * Hh + jhh, dhc_prev, mask=hv1)
    tl.store(DUH + tb * RW + 4 * H + hoffs, dhpre.to(DUH.dtype.element_ty), mask=hv2)
