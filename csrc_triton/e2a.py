"""Triton kernels for efficient additive attention over S coupled streams.

E2A (SwiftFormer) is S = 1; CroCNet's cross-E2A is S = 3. Tensors are stacked ``(S, B, N, D)``:

    q̂ = q / max(‖q‖, eps),  k̂ = k / max(‖k‖, eps)        per token, over D
    a_n = scale · q̂_n·w_g[s]                              token scores of stream s
    â = a / max(‖a‖, eps)  (l2) | softmax(a) | 1 (none)   over the N tokens of one image
    G_s = Σ_n â_n q̂_n                                     global query, (S, B, D)
    y_s = Σ_t proj_{s,t}(G_s ⊙ k̂_t) + q̂_s

Forward, two launches: ``_pool_partials_kernel`` streams q once and writes per-program partial sums
(``Σa²`` or the online-softmax ``(max, Σexp)``, and ``Σ a·q̂``); ``_key_interaction_kernel`` reduces
those partials in a fixed order (deterministic) into G and computes the projection as a GEMM over
``k̂ ⊙ G`` with ``+ b + q̂`` in its epilogue.

Backward, three launches plus tiny sums: ``_key_grad_kernel`` (dk and per-program partials of dG),
``_query_grad_kernel`` (dq, partials of dw_g and db), ``_proj_weight_grad_kernel`` (split-K partials of
dW); for rows of D ≤ 32 two, the key-gradient kernel computing dW's partials from the tiles it holds.
Every cross-program reduction goes through fp32 partial buffers and ``torch.sum``: no atomics, so two runs
give bit-identical results. All offsets are int64; the token count N is a runtime value.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _config

L2, SOFTMAX, NONE = 0, 1, 2
TOKEN_NORM_CODES = {"l2": L2, "softmax": SOFTMAX, "none": NONE}

#: Allocator of every buffer the launchers hand back or reduce; tests swap it for a NaN-filling one.
empty = torch.empty


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _token_range(pid, nprog, N, BLOCK_N: tl.constexpr):
    """Token tiles [start, end) of program ``pid`` out of ``nprog`` sharing one row of N tokens."""
    num_tiles = tl.cdiv(N, BLOCK_N)
    per = tl.cdiv(num_tiles, nprog)
    start = pid * per
    end = tl.minimum(start + per, num_tiles)
    return start, end


@triton.jit
def _col_mask(cols, D, VEC: tl.constexpr):
    """``cols < D``; for VEC > 1 written so that Triton sees it constant over each aligned group of VEC
    columns (the launcher makes D a multiple of VEC), which lets masked row accesses be vectorised."""
    if VEC > 1:
        return (cols // VEC) * VEC < D
    else:
        return cols < D


@triton.jit
def _row_ptrs(ptr, row0, rows, cols, LD, VEC: tl.constexpr):
    """``[BLOCK_N, BLOCK_D]`` pointers to rows ``row0 + rows`` (int64 base), columns ``cols`` of a tensor whose
    rows lie LD elements apart; for VEC > 1 marked as starting on VEC-element boundaries (the launcher checks
    the base pointer, LD and D), so that Triton uses vector accesses of up to 16 bytes also where D, or a
    packed k's offset, is not a multiple of 16, the only alignment its own specialisation recognises."""
    offs = (row0 + rows.to(tl.int64))[:, None] * LD + cols[None, :]
    ptrs = ptr + offs
    if VEC > 1:
        ptrs = tl.multiple_of(ptrs, [1, VEC * (ptr.dtype.element_ty.primitive_bitwidth // 8)])
    return ptrs


@triton.jit
def _load_rows(ptr, row0, rows, cols, N, D, LD, VEC: tl.constexpr, ACC: tl.constexpr):
    """A [BLOCK_N, BLOCK_D] tile of rows ``row0 + rows`` (int64 base) of a (…, N, D) tensor whose rows lie
    ``LD`` elements apart (D, or 2D for q and k packed in one ``(…, N, 2D)`` tensor), in ACC."""
    mask = (rows[:, None] < N) & _col_mask(cols, D, VEC)[None, :]
    return tl.load(_row_ptrs(ptr, row0, rows, cols, LD, VEC), mask=mask, other=0.0).to(ACC)


@triton.jit
def _load_qk(ptr, row0, rows, cols, N, D, LD, QKB, bias_off, HAS_QKB: tl.constexpr, VEC: tl.constexpr,
             ACC: tl.constexpr):
    """``_load_rows`` of q or k plus the input linear's bias ``QKB[bias_off + cols]`` when HAS_QKB (rows past N
    stay 0: they must not add to any sum over tokens)."""
    x = _load_rows(ptr, row0, rows, cols, N, D, LD, VEC, ACC)
    if HAS_QKB:
        b = tl.load(QKB + bias_off + cols, mask=cols < D, other=0.0).to(ACC)
        x = tl.where((rows < N)[:, None], x + b[None, :], 0.0)
    return x


@triton.jit
def _floor(n, eps):
    """``max(n, eps)`` that keeps a NaN ``n`` NaN (``tl.maximum`` returns eps for it by default, which made a row
    with a NaN finite everywhere but its NaN column, and the gradients built from it finite where the reference's
    are NaN). One ``max.NaN`` instruction: a ``tl.where`` made Triton 3.6 spill the fp32 key-gradient kernel."""
    return tl.maximum(n, eps, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _dot(a, b, acc, IN_DTYPE: tl.constexpr, DOT_IN_ACC: tl.constexpr, DOT_PREC: tl.constexpr):
    """``acc + a @ b``; operands in the input dtype (tensor cores) unless DOT_IN_ACC."""
    if DOT_IN_ACC:
        return tl.dot(a.to(acc.dtype), b.to(acc.dtype), acc, input_precision=DOT_PREC)
    else:
        return tl.dot(a.to(IN_DTYPE), b.to(IN_DTYPE), acc, input_precision=DOT_PREC)


@triton.jit
def _project(X, x0, rows, N, C, SXN, SXC, WQK, QKB, cols, D, HAS_QKB: tl.constexpr, WITH_Q: tl.constexpr,
             WITH_K: tl.constexpr, IN_DTYPE: tl.constexpr, DOT_IN_ACC: tl.constexpr, DOT_PREC: tl.constexpr,
             ACC: tl.constexpr, X_UNIT: tl.constexpr, XVEC: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    """Columns ``cols`` of q (if WITH_Q) and of k (if WITH_K) of token rows ``rows``, made from the tokens
    themselves: ``x[rows] @ W_qkᵀ (+ b)`` with ``x`` at ``X + x0`` (strides SXN, SXC: any layout) and ``W_qk
    (2D, C)`` row-major, q its first D rows; C in BLOCK_C chunks, one x load for both. Rows past N are 0, and
    so is the one not asked for. X_UNIT names the unit stride, which Triton does not specialise on: 1 for
    tokens (the 2D modules' token view of a feature map), 2 for channels (contiguous tokens), 0 neither;
    XVEC > 1: the launcher found the runs along it aligned to XVEC elements (as VEC for the rows)."""
    rmask = rows < N
    cmask = cols < D
    q = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    k = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        ccmask = cc < C
        if X_UNIT == 2:  # contiguous tokens: channels adjacent
            xt = X + x0 + rows.to(tl.int64)[:, None] * SXN + cc[None, :]
            if XVEC > 1:
                xt = tl.multiple_of(xt, [1, XVEC * (X.dtype.element_ty.primitive_bitwidth // 8)])
        elif X_UNIT == 1:  # a feature map's token view: tokens adjacent
            xt = X + x0 + rows.to(tl.int64)[:, None] + cc[None, :].to(tl.int64) * SXC
            if XVEC > 1:
                xt = tl.multiple_of(xt, [XVEC * (X.dtype.element_ty.primitive_bitwidth // 8), 1])
        else:
            xt = X + x0 + rows.to(tl.int64)[:, None] * SXN + cc[None, :].to(tl.int64) * SXC
        if X_UNIT == 1:  # the masks constant over each aligned group of XVEC along the unit stride
            xmask = _col_mask(rows, N, XVEC)[:, None] & ccmask[None, :]
        elif X_UNIT == 2:
            xmask = rmask[:, None] & _col_mask(cc, C, XVEC)[None, :]
        else:
            xmask = rmask[:, None] & ccmask[None, :]
        xt = tl.load(xt, mask=xmask, other=0.0)
        wmask = ccmask[:, None] & cmask[None, :]
        if WITH_Q:
            wq = tl.load(WQK + cols[None, :].to(tl.int64) * C + cc[:, None], mask=wmask, other=0.0)
            q = _dot(xt, wq, q, IN_DTYPE, DOT_IN_ACC, DOT_PREC)
        if WITH_K:
            wk = tl.load(WQK + (D + cols[None, :]).to(tl.int64) * C + cc[:, None], mask=wmask, other=0.0)
            k = _dot(xt, wk, k, IN_DTYPE, DOT_IN_ACC, DOT_PREC)
    if HAS_QKB:
        if WITH_Q:
            q = tl.where(rmask[:, None], q + tl.load(QKB + cols, mask=cmask, other=0.0).to(ACC)[None, :], 0.0)
        if WITH_K:
            k = tl.where(rmask[:, None], k + tl.load(QKB + D + cols, mask=cmask, other=0.0).to(ACC)[None, :], 0.0)
    return q, k


@triton.jit
def _weight_tile(W, offset, cols, ocols, D, wmask, VEC: tl.constexpr):
    """``W[o, i]`` at ``W + offset`` (a row-major ``(D, D)`` weight) transposed and restricted to the output
    columns: the tile ``[i, o]`` a GEMM over the token rows takes."""
    wt = W + offset + ocols[None, :].to(tl.int64) * D + cols[:, None]
    if VEC > 1:
        wt = tl.multiple_of(wt, [VEC * (W.dtype.element_ty.primitive_bitwidth // 8), 1])
    return tl.load(wt, mask=wmask, other=0.0)


@triton.jit
def _combine_partials(PART_G, PART_STAT, row, P, D, cols, eps, TOKEN_NORM: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    """Reduce the P pooling partials of one (stream, image) row, always in the same order.

    Returns G ([BLOCK_D]) and the two statistics the backward needs:
    l2 → (‖a‖, 0); softmax → (Σ exp(a − m), m); none → (0, 0).
    """
    cmask = cols < D
    base = row * P
    m = tl.full((), float("-inf"), ACC)
    if TOKEN_NORM == 1:
        for p in range(0, P):
            m = tl.maximum(m, tl.load(PART_STAT + (base + p) * 2 + 1).to(ACC))
    g = tl.zeros([BLOCK_D], dtype=ACC)
    tot = tl.zeros((), dtype=ACC)
    for p in range(0, P):
        gp = tl.load(PART_G + (base + p) * D + cols, mask=cmask, other=0.0).to(ACC)
        sp = tl.load(PART_STAT + (base + p) * 2).to(ACC)
        if TOKEN_NORM == 1:
            w = tl.exp(tl.load(PART_STAT + (base + p) * 2 + 1).to(ACC) - m)
            g += gp * w
            tot += sp * w
        else:
            g += gp
            tot += sp
    if TOKEN_NORM == 0:
        norm_a = tl.sqrt(tot)
        G = g / _floor(norm_a, eps)
        st0 = norm_a
        st1 = tl.zeros((), dtype=ACC)
    elif TOKEN_NORM == 1:
        G = g / tot
        st0 = tot
        st1 = m
    else:
        G = g
        st0 = tl.zeros((), dtype=ACC)
        st1 = tl.zeros((), dtype=ACC)
    return G, st0, st1


# --------------------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------------------


@triton.autotune(
    configs=_config.row_configs(),
    key=["BLOCK_D", "TOKEN_NORM", "HAS_QKB", "FROM_X", "X_UNIT", "XVEC", "BLOCK_C", "VEC"],
    prune_configs_by={"early_config_prune": _config.prune_rows},
    cache_results=_config.AUTOTUNE_CACHE,
)
@triton.jit(do_not_specialize=["B", "N", "P", "SXB", "SXC"])
def _pool_partials_kernel(
    Q, QKB, WG, NQ, PART_G, PART_STAT, X, WQK,
    B, N, D, LDQ, P, scale, eps_arg, C, SXB, SXN, SXC,
    HAS_QKB: tl.constexpr, TOKEN_NORM: tl.constexpr, ACC: tl.constexpr, VEC: tl.constexpr, BLOCK_D: tl.constexpr,
    FROM_X: tl.constexpr, IN_DTYPE: tl.constexpr, DOT_IN_ACC: tl.constexpr, DOT_PREC: tl.constexpr,
    X_UNIT: tl.constexpr, XVEC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid (P, S·B). One pass over q: per-token norms (kept for the epilogue) and pooling partials.
    ``FROM_X`` (one stream): q made from the tokens (``_project``), its norms not kept."""
    eps = tl.full((), eps_arg, ACC)  # scalar args are fp32; keep eps exact for fp64 (interpreter)
    pid = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)  # s·B + b
    s = row // B
    cols = tl.arange(0, BLOCK_D)
    cmask = _col_mask(cols, D, VEC)
    wg = tl.load(WG + s * D + cols, mask=cmask, other=0.0).to(ACC)

    acc_g = tl.zeros([BLOCK_D], dtype=ACC)
    acc_s = tl.zeros((), dtype=ACC)
    m = tl.full((), float("-inf"), ACC)
    start, end = _token_range(pid, P, N, BLOCK_N)
    for tile in range(start, end):
        rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        if FROM_X:
            x, _ = _project(X, row * SXB, rows, N, C, SXN, SXC, WQK, QKB, cols, D, HAS_QKB, True, False,
                            IN_DTYPE, DOT_IN_ACC, DOT_PREC, ACC, X_UNIT, XVEC, BLOCK_N, BLOCK_D, BLOCK_C)
        else:
            x = _load_qk(Q, row * N, rows, cols, N, D, LDQ, QKB, s * 2 * D, HAS_QKB, VEC, ACC)
        nq = tl.sqrt(tl.sum(x * x, axis=1))
        if not FROM_X:
            tl.store(NQ + row * N + rows, nq, mask=rmask)
        qh = x / _floor(nq, eps)[:, None]
        a = tl.sum(qh * wg[None, :], axis=1) * scale
        if TOKEN_NORM == 0:
            acc_s += tl.sum(a * a, axis=0)
            acc_g += tl.sum(a[:, None] * qh, axis=0)
        elif TOKEN_NORM == 1:
            a = tl.where(rmask, a, float("-inf"))
            m_new = tl.maximum(m, tl.max(a, axis=0))
            alpha = tl.exp(m - m_new)
            p = tl.exp(a - m_new)
            acc_s = acc_s * alpha + tl.sum(p, axis=0)
            acc_g = acc_g * alpha + tl.sum(p[:, None] * qh, axis=0)
            m = m_new
        else:
            acc_g += tl.sum(qh, axis=0)
    out = row * P + pid
    tl.store(PART_G + out * D + cols, acc_g, mask=cmask)
    tl.store(PART_STAT + out * 2, acc_s)
    tl.store(PART_STAT + out * 2 + 1, m)


@triton.autotune(
    configs=_config.out_configs(),
    key=["BLOCK_D", "S", "TOKEN_NORM", "HAS_QKB", "HAS_BIAS", "FOLD", "FROM_X", "X_UNIT", "XVEC", "BLOCK_C", "DOT_PREC",
         "VEC"],
    prune_configs_by={"early_config_prune": _config.prune_out},
    cache_results=_config.AUTOTUNE_CACHE,
)
@triton.jit(do_not_specialize=["B", "N", "P", "SXB", "SXC"])
def _key_interaction_kernel(
    Q, K, QKB, W, BIAS, WF, NQ, PART_G, PART_STAT, Y, G_OUT, STAT_OUT, NK, X, WQK,
    B, N, D, LDQ, P, eps_arg, C, SXB, SXN, SXC,
    S: tl.constexpr, HAS_QKB: tl.constexpr, HAS_BIAS: tl.constexpr, FOLD: tl.constexpr, TOKEN_NORM: tl.constexpr,
    ACC: tl.constexpr, IN_DTYPE: tl.constexpr, DOT_IN_ACC: tl.constexpr, DOT_PREC: tl.constexpr, VEC: tl.constexpr,
    FROM_X: tl.constexpr, X_UNIT: tl.constexpr, XVEC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """Grid (P, ⌈D/BLOCK_O⌉, S·B): ``y_s[:, o] = Σ_t (k̂_t ⊙ G_s) @ W_{s,t}[o, :]ᵀ + Σ_t b_{s,t}[o] + q̂_s[:, o]``.

    ``FOLD`` (inference, the output linear folded in by the caller): ``W_{s,t} = W_f,s W_p,{s,t}``, ``BIAS``
    the summed ``(S, D)`` bias ``W_f,s Σ_t b_{s,t} + b_f,s``, and the residual goes through ``WF = W_f (S, D,
    D)``: ``out_s = Σ_t (k̂_t ⊙ G_s) W_{s,t}ᵀ + q̂_s W_f,sᵀ + BIAS_s``; the key norms (backward only) are not
    written. ``FROM_X`` (one stream, one output tile): q and k made from the tokens (``_project``), so
    neither is ever in memory."""
    eps = tl.full((), eps_arg, ACC)  # scalar args are fp32; keep eps exact for fp64 (interpreter)
    pid = tl.program_id(0)
    pid_o = tl.program_id(1)
    row = tl.program_id(2).to(tl.int64)
    s = row // B
    b = row - s * B
    cols = tl.arange(0, BLOCK_D)
    cmask = _col_mask(cols, D, VEC)
    ocols = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    omask = _col_mask(ocols, D, VEC)

    G, st0, st1 = _combine_partials(PART_G, PART_STAT, row, P, D, cols, eps, TOKEN_NORM, ACC, BLOCK_D)
    if (pid == 0) & (pid_o == 0):
        tl.store(G_OUT + row * D + cols, G, mask=cmask)
        tl.store(STAT_OUT + row * 2, st0)
        tl.store(STAT_OUT + row * 2 + 1, st1)

    bias = tl.zeros([BLOCK_O], dtype=ACC)
    if HAS_BIAS:
        if FOLD:
            bias += tl.load(BIAS + s * D + ocols, mask=omask, other=0.0).to(ACC)
        else:
            for t in tl.static_range(S):
                bias += tl.load(BIAS + (s * S + t) * D + ocols, mask=omask, other=0.0).to(ACC)

    wmask = cmask[:, None] & omask[None, :]
    start, end = _token_range(pid, P, N, BLOCK_N)
    for tile in range(start, end):
        rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        acc = tl.zeros([BLOCK_N, BLOCK_O], dtype=ACC)
        for t in tl.static_range(S):
            if FROM_X:  # one stream (s = t = 0), one output tile (ocols = cols): q and k from the tokens
                qt, kt = _project(X, b * SXB, rows, N, C, SXN, SXC, WQK, QKB, cols, D, HAS_QKB, True, True,
                                  IN_DTYPE, DOT_IN_ACC, DOT_PREC, ACC, X_UNIT, XVEC, BLOCK_N, BLOCK_D, BLOCK_C)
            else:
                kt = _load_qk(K, (t * B + b) * N, rows, cols, N, D, LDQ, QKB, t * 2 * D + D, HAS_QKB, VEC, ACC)
            nk = tl.sqrt(tl.sum(kt * kt, axis=1))
            if not FOLD:
                tl.store(NK + (t * B + b) * N + rows, nk, mask=rmask & (pid_o == 0) & (s == 0))
            z = kt * (1.0 / _floor(nk, eps))[:, None] * G[None, :]
            acc = _dot(z, _weight_tile(W, (s * S + t) * D * D, cols, ocols, D, wmask, VEC), acc, IN_DTYPE,
                       DOT_IN_ACC, DOT_PREC)
        if FROM_X:
            nq = tl.sqrt(tl.sum(qt * qt, axis=1))
        else:
            nq = tl.load(NQ + row * N + rows, mask=rmask, other=1.0).to(ACC)
            if FOLD:
                qt = _load_qk(Q, row * N, rows, cols, N, D, LDQ, QKB, s * 2 * D, HAS_QKB, VEC, ACC)
        if FOLD:  # the residual through the output linear: one more product, q̂_s W_f,sᵀ
            z = qt * (1.0 / _floor(nq, eps))[:, None]
            y = _dot(z, _weight_tile(WF, s * D * D, cols, ocols, D, wmask, VEC), acc, IN_DTYPE, DOT_IN_ACC, DOT_PREC)
            y += bias[None, :]
        elif FROM_X:
            y = acc + bias[None, :] + qt / _floor(nq, eps)[:, None]
        else:
            qo = _load_qk(Q, row * N, rows, ocols, N, D, LDQ, QKB, s * 2 * D, HAS_QKB, VEC, ACC)
            y = acc + bias[None, :] + qo / _floor(nq, eps)[:, None]
        tl.store(_row_ptrs(Y, row * N, rows, ocols, D, VEC), y, mask=rmask[:, None] & omask[None, :])


# --------------------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------------------


@triton.autotune(
    configs=_config.row_configs(),
    key=["BLOCK_D", "S", "BLOCK_O", "HAS_QKB", "DOT_PREC", "VEC", "FUSE_DW", "FROM_X", "X_UNIT", "XVEC", "BLOCK_C"],
    prune_configs_by={"early_config_prune": _config.prune_rows},
    cache_results=_config.AUTOTUNE_CACHE,
)
@triton.jit(do_not_specialize=["B", "N", "P", "SXB", "SXC"])
def _key_grad_kernel(
    K, QKB, DY, W, G, DK, PART_DG, PART_DKB, PART_DW, X, WQK,
    B, N, D, LDQ, P, eps_arg, C, SXB, SXN, SXC,
    S: tl.constexpr, S_PAD: tl.constexpr, HAS_QKB: tl.constexpr, ACC: tl.constexpr, IN_DTYPE: tl.constexpr,
    DOT_IN_ACC: tl.constexpr, DOT_PREC: tl.constexpr, VEC: tl.constexpr, FUSE_DW: tl.constexpr,
    FROM_X: tl.constexpr, X_UNIT: tl.constexpr, XVEC: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid (P, S·B) over key streams t. With ``e_{s,t} = dy_s @ W_{s,t}``:
    ``dk̂_t = Σ_s G_s ⊙ e_{s,t}``, ``dk_t`` through the row norm, and partials of ``dG_s = Σ_n k̂_t ⊙ e_{s,t}``.
    With FUSE_DW (narrow rows, D ≤ BLOCK_O: one output chunk) also this program's share of
    ``dW_{s,t} = Σ_n dy_s[n]ᵀ (G_s ⊙ k̂_t[n])`` from the dy and k tiles already loaded, instead of
    ``_proj_weight_grad_kernel`` reading both once more. ``FROM_X`` (one stream): k made from the tokens
    (``_project``) instead of read."""
    eps = tl.full((), eps_arg, ACC)  # scalar args are fp32; keep eps exact for fp64 (interpreter)
    pid = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)  # t·B + b
    t = row // B
    b = row - t * B
    cols = tl.arange(0, BLOCK_D)
    cmask = _col_mask(cols, D, VEC)
    srange = tl.arange(0, S_PAD)

    acc_dg = tl.zeros([S_PAD, BLOCK_D], dtype=ACC)
    acc_dkb = tl.zeros([BLOCK_D], dtype=ACC)
    if FUSE_DW:
        acc_dw = tl.zeros([S_PAD, BLOCK_O, BLOCK_D], dtype=ACC)
    start, end = _token_range(pid, P, N, BLOCK_N)
    for tile in range(start, end):
        rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        if FROM_X:  # one stream: t = 0, b = row
            _, kt = _project(X, row * SXB, rows, N, C, SXN, SXC, WQK, QKB, cols, D, HAS_QKB, False, True,
                             IN_DTYPE, DOT_IN_ACC, DOT_PREC, ACC, X_UNIT, XVEC, BLOCK_N, BLOCK_D, BLOCK_C)
        else:
            kt = _load_qk(K, row * N, rows, cols, N, D, LDQ, QKB, t * 2 * D + D, HAS_QKB, VEC, ACC)
        nk = tl.sqrt(tl.sum(kt * kt, axis=1))
        rk = 1.0 / _floor(nk, eps)
        kh = kt * rk[:, None]
        dkh = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
        for s in tl.static_range(S):
            g = tl.load(G + (s * B + b) * D + cols, mask=cmask, other=0.0).to(ACC)
            e = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
            for o0 in range(0, D, BLOCK_O):
                ocols = o0 + tl.arange(0, BLOCK_O)
                omask = _col_mask(ocols, D, VEC)
                dy = _load_rows(DY, (s * B + b) * N, rows, ocols, N, D, D, VEC, ACC)
                w = tl.load(_row_ptrs(W + (s * S + t) * D * D, 0, ocols, cols, D, VEC),
                            mask=omask[:, None] & cmask[None, :], other=0.0)
                e = _dot(dy, w, e, IN_DTYPE, DOT_IN_ACC, DOT_PREC)
                if FUSE_DW:  # rows past N are 0 in dy and k̂: they add nothing
                    share = _dot(tl.trans(dy), kh * g[None, :], tl.zeros([BLOCK_O, BLOCK_D], dtype=ACC), IN_DTYPE,
                                 DOT_IN_ACC, DOT_PREC)
                    acc_dw = tl.where(srange[:, None, None] == s, acc_dw + share[None, :, :], acc_dw)
            dkh += g[None, :] * e
            acc_dg = tl.where(srange[:, None] == s, acc_dg + tl.sum(kh * e, axis=0)[None, :], acc_dg)
        proj = tl.sum(kh * dkh, axis=1)
        # the eps branch is tested as n < eps, so a NaN norm takes the full formula and its NaN reaches dk
        dk = tl.where((nk < eps)[:, None], dkh * rk[:, None], (dkh - kh * proj[:, None]) * rk[:, None])
        tl.store(_row_ptrs(DK, row * N, rows, cols, LDQ, VEC), dk, mask=rmask[:, None] & cmask[None, :])
        if HAS_QKB:
            acc_dkb += tl.sum(tl.where(rmask[:, None], dk, 0.0), axis=0)
    if HAS_QKB:
        tl.store(PART_DKB + (row * P + pid) * D + cols, acc_dkb, mask=cmask)
    # PART_DG layout (S_s, B, S_t, P, D)
    out = ((srange.to(tl.int64) * B + b) * S + t) * P + pid
    tl.store(PART_DG + out[:, None] * D + cols[None, :], acc_dg, mask=(srange[:, None] < S) & cmask[None, :])
    if FUSE_DW:  # PART_DW layout (S_t, B, P, S_s, D, D)
        ocols = tl.arange(0, BLOCK_O)
        out = (row * P + pid) * S + srange.to(tl.int64)
        offs = (out[:, None, None] * D + ocols[None, :, None]) * D + cols[None, None, :]
        mask = (srange[:, None, None] < S) & (ocols[None, :, None] < D) & cmask[None, None, :]
        tl.store(PART_DW + offs, acc_dw, mask=mask)


@triton.autotune(
    configs=_config.row_configs(),
    key=["BLOCK_D", "S", "TOKEN_NORM", "HAS_QKB", "VEC", "FROM_X", "X_UNIT", "XVEC", "BLOCK_C", "DOT_PREC"],
    prune_configs_by={"early_config_prune": _config.prune_rows},
    cache_results=_config.AUTOTUNE_CACHE,
)
@triton.jit(do_not_specialize=["B", "N", "P", "SXB", "SXC"])
def _query_grad_kernel(
    Q, QKB, DY, WG, G, STAT, PART_DG, DQ, PART_DWG, PART_DB, PART_DQB, X, WQK,
    B, N, D, LDQ, P, scale, eps_arg, C, SXB, SXN, SXC,
    S: tl.constexpr, HAS_QKB: tl.constexpr, TOKEN_NORM: tl.constexpr, ACC: tl.constexpr, VEC: tl.constexpr,
    FROM_X: tl.constexpr, IN_DTYPE: tl.constexpr, DOT_IN_ACC: tl.constexpr, DOT_PREC: tl.constexpr,
    X_UNIT: tl.constexpr, XVEC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid (P, S·B) over query streams s: dq through pooling and the row norm; partials of dw_g and db.
    ``FROM_X`` (one stream): q made from the tokens (``_project``) instead of read."""
    eps = tl.full((), eps_arg, ACC)  # scalar args are fp32; keep eps exact for fp64 (interpreter)
    pid = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)  # s·B + b
    s = row // B
    cols = tl.arange(0, BLOCK_D)
    cmask = _col_mask(cols, D, VEC)

    g = tl.load(G + row * D + cols, mask=cmask, other=0.0).to(ACC)
    dg = tl.zeros([BLOCK_D], dtype=ACC)
    for j in range(0, S * P):  # PART_DG[s, b, :, :, :] is contiguous: S_t·P rows
        dg += tl.load(PART_DG + (row * S * P + j) * D + cols, mask=cmask, other=0.0).to(ACC)
    gdg = tl.sum(g * dg, axis=0)
    st0 = tl.load(STAT + row * 2).to(ACC)
    st1 = tl.load(STAT + row * 2 + 1).to(ACC)
    wg = tl.load(WG + s * D + cols, mask=cmask, other=0.0).to(ACC)

    # A row that fits one tile is reduced over its tokens right here, as autograd through the unfused form
    # does: ‖a‖ (or the softmax max and sum) and Σ_n â_n·dâ_n instead of the saved statistics and G·dG.
    # Equal in exact arithmetic; in floating point only this cancels exactly where the gradient through the
    # token weights vanishes (N = 1: â = ±1), instead of leaving rounding noise amplified by 1/‖a‖.
    one_tile = tl.cdiv(N, BLOCK_N) == 1

    acc_dwg = tl.zeros([BLOCK_D], dtype=ACC)
    acc_db = tl.zeros([BLOCK_D], dtype=ACC)
    acc_dqb = tl.zeros([BLOCK_D], dtype=ACC)
    start, end = _token_range(pid, P, N, BLOCK_N)
    for tile in range(start, end):
        rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        if FROM_X:
            x, _ = _project(X, row * SXB, rows, N, C, SXN, SXC, WQK, QKB, cols, D, HAS_QKB, True, False,
                            IN_DTYPE, DOT_IN_ACC, DOT_PREC, ACC, X_UNIT, XVEC, BLOCK_N, BLOCK_D, BLOCK_C)
        else:
            x = _load_qk(Q, row * N, rows, cols, N, D, LDQ, QKB, s * 2 * D, HAS_QKB, VEC, ACC)
        nq = tl.sqrt(tl.sum(x * x, axis=1))
        rq = 1.0 / _floor(nq, eps)
        qh = x * rq[:, None]
        dy = _load_rows(DY, row * N, rows, cols, N, D, D, VEC, ACC)
        if TOKEN_NORM == 2:
            dqh = dy + tl.where(rmask, 1.0, 0.0)[:, None] * dg[None, :]
        else:
            a = tl.sum(qh * wg[None, :], axis=1) * scale
            dah = tl.sum(qh * dg[None, :], axis=1)
            if TOKEN_NORM == 0:
                norm_a = tl.where(one_tile, tl.sqrt(tl.sum(a * a, axis=0)), st0)  # padded rows: a = 0
                denom = _floor(norm_a, eps)
                ah = a / denom
                ahdah = tl.where(one_tile, tl.sum(ah * dah, axis=0), gdg)
                da = tl.where(norm_a < eps, dah / eps, (dah - ah * ahdah) / denom)
            else:
                a = tl.where(rmask, a, float("-inf"))
                m_a = tl.where(one_tile, tl.max(a, axis=0), st1)
                e = tl.exp(a - m_a)
                ah = e / tl.where(one_tile, tl.sum(e, axis=0), st0)
                ahdah = tl.where(one_tile, tl.sum(ah * dah, axis=0), gdg)
                da = ah * (dah - ahdah)
            da = tl.where(rmask, da, 0.0)
            dqh = dy + ah[:, None] * dg[None, :] + (scale * da)[:, None] * wg[None, :]
            acc_dwg += tl.sum(da[:, None] * qh, axis=0)
        proj = tl.sum(qh * dqh, axis=1)
        dq = tl.where((nq < eps)[:, None], dqh * rq[:, None], (dqh - qh * proj[:, None]) * rq[:, None])
        tl.store(_row_ptrs(DQ, row * N, rows, cols, LDQ, VEC), dq, mask=rmask[:, None] & cmask[None, :])
        acc_db += tl.sum(dy, axis=0)
        if HAS_QKB:
            acc_dqb += tl.sum(tl.where(rmask[:, None], dq, 0.0), axis=0)
    out = row * P + pid
    tl.store(PART_DWG + out * D + cols, acc_dwg * scale, mask=cmask)
    tl.store(PART_DB + out * D + cols, acc_db, mask=cmask)
    if HAS_QKB:
        tl.store(PART_DQB + out * D + cols, acc_dqb, mask=cmask)


@triton.autotune(
    configs=_config.weight_grad_configs(),
    key=["BLOCK_D", "S", "HAS_QKB", "DOT_PREC", "VEC", "FROM_X", "X_UNIT", "XVEC", "BLOCK_C"],
    prune_configs_by={"early_config_prune": _config.prune_weight_grad},
    cache_results=_config.AUTOTUNE_CACHE,
)
@triton.jit(do_not_specialize=["B", "N", "SPLIT", "SXB", "SXC"])
def _proj_weight_grad_kernel(
    DY, K, QKB, NK, G, PART_DW, X, WQK,
    B, N, D, LDQ, SPLIT, eps_arg, C, SXB, SXN, SXC,
    S: tl.constexpr, HAS_QKB: tl.constexpr, ACC: tl.constexpr, IN_DTYPE: tl.constexpr, DOT_IN_ACC: tl.constexpr,
    DOT_PREC: tl.constexpr, VEC: tl.constexpr, FROM_X: tl.constexpr, X_UNIT: tl.constexpr, XVEC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """Grid (⌈D/BLOCK_O⌉, ⌈D/BLOCK_I⌉, S·S·SPLIT): split-K partials of
    ``dW_{s,t} = Σ_{b,n} dy_s[n]ᵀ (G_s ⊙ k̂_t[n])`` over the flattened (image, token tile) axis. ``FROM_X``
    (one stream): k's columns ``icols`` made from the tokens (``_project``) instead of read."""
    eps = tl.full((), eps_arg, ACC)  # scalar args are fp32; keep eps exact for fp64 (interpreter)
    pid_o = tl.program_id(0)
    pid_i = tl.program_id(1)
    pid_z = tl.program_id(2).to(tl.int64)
    pair = pid_z // SPLIT
    split = pid_z - pair * SPLIT
    s = pair // S
    t = pair - s * S
    ocols = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    icols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    omask = _col_mask(ocols, D, VEC)
    imask = _col_mask(icols, D, VEC)

    tiles = tl.cdiv(N, BLOCK_N)
    total = B * tiles
    per = tl.cdiv(total, SPLIT)
    start = split * per
    end = tl.minimum(start + per, total)
    acc = tl.zeros([BLOCK_O, BLOCK_I], dtype=ACC)
    for j in range(start, end):
        b = j // tiles
        rows = (j - b * tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        dy = _load_rows(DY, (s * B + b) * N, rows, ocols, N, D, D, VEC, ACC)
        if FROM_X:  # one stream: s = t = 0
            _, kt = _project(X, b * SXB, rows, N, C, SXN, SXC, WQK, QKB, icols, D, HAS_QKB, False, True,
                             IN_DTYPE, DOT_IN_ACC, DOT_PREC, ACC, X_UNIT, XVEC, BLOCK_N, BLOCK_I, BLOCK_C)
        else:
            kt = _load_qk(K, (t * B + b) * N, rows, icols, N, D, LDQ, QKB, t * 2 * D + D, HAS_QKB, VEC, ACC)
        nk = tl.load(NK + (t * B + b) * N + rows, mask=rmask, other=1.0).to(ACC)
        g = tl.load(G + (s * B + b) * D + icols, mask=imask, other=0.0).to(ACC)
        z = kt * (1.0 / _floor(nk, eps))[:, None] * g[None, :]
        acc = _dot(tl.trans(dy), z, acc, IN_DTYPE, DOT_IN_ACC, DOT_PREC)
    offs = (pid_z * D + ocols.to(tl.int64))[:, None] * D + icols[None, :]
    tl.store(PART_DW + offs, acc, mask=omask[:, None] & imask[None, :])


# --------------------------------------------------------------------------------------------------------
# launchers: tensors in, tensors out
# --------------------------------------------------------------------------------------------------------

#: The kernels by name, for the tools that swap them for recorders or no-ops (tools/compile_check.py,
#: tools/host_overhead.py).
KERNELS = ("_pool_partials_kernel", "_key_interaction_kernel", "_key_grad_kernel", "_query_grad_kernel",
           "_proj_weight_grad_kernel")


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64}


def _dtypes(x: torch.Tensor):
    """(accumulator torch dtype, accumulator tl dtype, input tl dtype, dot operands in ACC, dot precision)."""
    if x.dtype == torch.float64:
        return torch.float64, tl.float64, tl.float64, True, "ieee"
    # The interpreter's bf16/fp16 dot is inexact: keep its operands in fp32 there.
    dot_in_acc = _config.INTERPRETING or x.dtype == torch.float32
    return torch.float32, tl.float32, _TL_DTYPES[x.dtype], dot_in_acc, _config.dot_precision(x.dtype)


def _rows(q, k):
    """``(q, k, LD)``: contiguous ``(S, B, N, D)`` q and k (LD = D), or, for ``k is None``, the two halves of
    a packed ``qk (S, B, N, 2D)`` (``q = qk[..., :D]``, ``k = qk[..., D:]``, rows LD = 2D apart)."""
    if k is None:
        qk = q.contiguous()
        D = qk.shape[-1] // 2
        return qk[..., :D], qk[..., D:], 2 * D
    return q.contiguous(), k.contiguous(), q.shape[-1]


def _vector_width(D: int, ld: int, *tensors: torch.Tensor) -> int:
    """VEC for the kernels: the row alignment, in elements, that they promise Triton (1: none).

    Triton's launcher marks integer arguments divisible by 16 and 16-byte aligned pointers, and vectorises
    from that alone; where it does (D and ``ld`` multiples of 16, every address 16-byte aligned) no promise is
    made, so those widths compile exactly as without one. Elsewhere VEC is the most elements, at most
    16 bytes' worth, such that D, ``ld`` and every tensor's address are multiples of VEC elements. A promise
    broken on the GPU is a misaligned vector access, so it is checked here, never assumed."""
    if D % 16 == 0 and ld % 16 == 0 and all(t.data_ptr() % 16 == 0 for t in tensors):
        return 1
    return _common_alignment((D, ld), tensors)


def _common_alignment(counts, tensors) -> int:
    """The most elements, at most 16 bytes' worth of the first tensor's, that divide every count in
    ``counts`` and every tensor's address (in its own element size)."""
    vec = max(1, _config.MAX_VECTOR_BYTES // tensors[0].element_size())
    while vec > 1 and (any(n % vec for n in counts) or any(t.data_ptr() % (vec * t.element_size()) for t in tensors)):
        vec //= 2
    return vec


def _token_vector_width(x: torch.Tensor, SXB: int, SXN: int, SXC: int) -> int:
    """XVEC for ``_project``: how many elements of x's runs along its unit-stride axis (tokens for the 2D
    modules' token view, SXN = 1; channels for contiguous tokens, SXC = 1) start together on a boundary, at
    most 16 bytes' worth: the other strides, the run's length (N or C: the masks must be constant over each
    group) and the address must all be multiples of it (1: no promise)."""
    if SXN != 1 and SXC != 1:
        return 1
    B, N, C = x.shape
    return _common_alignment((SXB, SXC, N) if SXN == 1 else (SXB, SXN, C), (x,))


def e2a_forward(q, k, w_g, proj_weight, proj_bias, scale: float, token_norm: str, eps: float, qk_bias=None,
                final_weight=None):
    """``q, k (S, B, N, D)`` (or ``q = qk (S, B, N, 2D)`` packed and ``k = None``), ``w_g (S, D)``,
    ``proj_weight (S, S, D, D)``, ``proj_bias (S, S, D) | None``; ``qk_bias (S, 2D) | None`` is added to q
    (first D) and k (last D) as they are loaded: the input linears' bias, so their GEMM can run without it.

    Returns ``y (S, B, N, D)`` in q's dtype, and for the backward ``G (S, B, D)``, ``stats (S, B, 2)``
    and the key norms ``nk (S, B, N)`` in the accumulator dtype (fp32, or fp64 for fp64 inputs).

    With ``final_weight (S, D, D)`` (inference: the output linears folded in), ``proj_weight`` holds
    ``W_f,s W_p,{s,t}`` and ``proj_bias (S, D) | None`` the bias of the whole, and the result is the
    modules' output ``Σ_t (k̂_t ⊙ G_s) proj_weight[s, t]ᵀ + q̂_s final_weight[s]ᵀ + proj_bias[s]``; ``nk`` is
    None (not written: only the backward reads it).
    """
    q, k, ld = _rows(q, k)
    return _forward(q, k, ld, q.shape, None, w_g, proj_weight, proj_bias, scale, token_norm, eps, qk_bias,
                    final_weight)


def fuses_input_linear(streams: int, D: int, dtype: torch.dtype) -> bool:
    """Whether :func:`e2a_forward_from_tokens` takes this case: one stream, one output tile (D ≤ 128), and
    16-bit operands, whose projections run on tensor cores (fp32 ones would run on FMA units, about as long
    as the bytes they save, and spill at D ≥ 64 on sm_90; the interpreter takes every dtype, for the tests)."""
    # 128 at most whatever the setting: the key interaction makes q and k in one output tile a row, and its
    # configs have no wider one (their pruning would leave none)
    return (streams == 1 and 0 < D <= min(_config.FUSED_INPUT_MAX_D, 128)
            and (dtype in (torch.float16, torch.bfloat16) or _config.INTERPRETING))


def e2a_forward_from_tokens(x, w_qk, qk_bias, w_g, proj_weight, proj_bias, scale: float, token_norm: str,
                            eps: float, final_weight=None):
    """:func:`e2a_forward` for one stream from its tokens ``x (B, N, C)`` (any strides: the 2D modules' token
    view of a ``(B, C, H, W)`` map is read in place): ``q, k = x W_qkᵀ + b_qk`` are made inside both kernels,
    tile by tile, and never written. ``w_qk (2D, C)``, ``qk_bias (2D,) | None``, ``w_g (D,)``, ``proj_weight
    (D, D)``, ``proj_bias (D,) | None``, all in the compute dtype, which is the output's; x is cast to it as
    it is loaded. D ≤ 128 (:func:`fuses_input_linear`). In training, :func:`e2a_backward_from_tokens` makes
    them again the same way. With ``final_weight (D, D)`` (inference), ``proj_weight = W_f W_p`` and ``proj_bias``
    is the whole bias, as for :func:`e2a_forward`. Returns ``y (1, B, N, D)``, ``G``, ``stats``, ``nk`` as
    :func:`e2a_forward`."""
    B, N, C = x.shape
    D = w_qk.shape[0] // 2
    w_qk = w_qk.contiguous()
    fold = final_weight is not None
    if proj_bias is not None:
        proj_bias = proj_bias.reshape((1, D) if fold else (1, 1, D))
    return _forward(w_qk, w_qk, D, (1, B, N, D), (x, w_qk), w_g, proj_weight.reshape(1, 1, D, D), proj_bias, scale,
                    token_norm, eps, qk_bias, final_weight.reshape(1, D, D) if fold else None)


def _token_args(tokens, q, w_g) -> tuple:
    """The kernels' ``FROM_X`` arguments: ``(from_x, x, w_qk, C, SXB, SXN, SXC, X_UNIT, XVEC, BLOCK_C)`` for
    ``tokens = (x, w_qk)``, or stand-ins when there are none (``tokens`` None)."""
    if tokens is None:
        return False, q, w_g, 1, 0, 0, 0, 0, 1, 16
    x, w_qk = tokens
    C, (SXB, SXN, SXC) = x.shape[-1], x.stride()
    x_unit = 1 if SXN == 1 else 2 if SXC == 1 else 0
    return True, x, w_qk, C, SXB, SXN, SXC, x_unit, _token_vector_width(x, SXB, SXN, SXC), min(64, _config.block_d(C))


def _on_its_device(launcher):
    """Run ``launcher`` with the CUDA device of its first tensor current: Triton launches on the current
    device's stream, so tensors on another GPU (model parallelism, ``.to("cuda:1")`` without
    ``torch.cuda.set_device``) would otherwise be launched on the wrong one."""

    @functools.wraps(launcher)
    def run(t, *args):
        if t.is_cuda and t.device.index != torch.cuda.current_device():
            with torch.cuda.device(t.device):
                return launcher(t, *args)
        return launcher(t, *args)

    return run


@_on_its_device
def _forward(q, k, ld, shape, tokens, w_g, proj_weight, proj_bias, scale, token_norm, eps, qk_bias, final_weight):
    """The two forward launches. ``tokens``: None, or ``(x, w_qk)`` to make q and k from the tokens in the
    kernels (``FROM_X``; q and k are then only stand-ins of the compute dtype, for the argument lists)."""
    S, B, N, D = shape
    w_g = w_g.reshape(S, D).contiguous()
    proj_weight = proj_weight.contiguous()
    has_qkb = qk_bias is not None
    qkb = qk_bias.reshape(S, 2 * D).contiguous() if has_qkb else w_g
    has_bias = proj_bias is not None
    bias = proj_bias.contiguous() if has_bias else proj_weight
    acc_dtype, ACC, IN_DTYPE, dot_in_acc, prec = _dtypes(q)
    code = TOKEN_NORM_CODES[token_norm]
    BLOCK_D = _config.block_d(D)
    P = _config.programs_per_row(N, S * B, q.device)
    dev = q.device
    from_x, x, w_qk, C, SXB, SXN, SXC, x_unit, xvec, BLOCK_C = _token_args(tokens, q, w_g)

    part_g = empty((S, B, P, D), dtype=acc_dtype, device=dev)
    nq = part_g if from_x else empty((S, B, N), dtype=acc_dtype, device=dev)
    part_stat = empty((S, B, P, 2), dtype=acc_dtype, device=dev)
    y = empty((S, B, N, D), dtype=q.dtype, device=dev)
    rows_and_weights = (proj_weight, y) if from_x else (q, k, proj_weight, y)
    if final_weight is not None:
        final_weight = final_weight.contiguous()
        rows_and_weights += (final_weight,)
    vec = _vector_width(D, ld, *rows_and_weights)
    _pool_partials_kernel[(P, S * B)](
        q, qkb, w_g, nq, part_g, part_stat, x, w_qk, B, N, D, ld, P, float(scale), float(eps), C, SXB, SXN, SXC,
        HAS_QKB=has_qkb, TOKEN_NORM=code, ACC=ACC, VEC=vec, BLOCK_D=BLOCK_D, FROM_X=from_x, IN_DTYPE=IN_DTYPE,
        DOT_IN_ACC=dot_in_acc, DOT_PREC=prec, X_UNIT=x_unit, XVEC=xvec, BLOCK_C=BLOCK_C,
    )
    G = empty((S, B, D), dtype=acc_dtype, device=dev)
    stats = empty((S, B, 2), dtype=acc_dtype, device=dev)
    fold = final_weight is not None
    nk = None if fold else empty((S, B, N), dtype=acc_dtype, device=dev)
    grid = lambda meta: (P, _config.cdiv(D, meta["BLOCK_O"]), S * B)  # noqa: E731
    _key_interaction_kernel[grid](
        q, k, qkb, proj_weight, bias, final_weight if fold else proj_weight, nq, part_g, part_stat, y, G, stats,
        nq if fold else nk, x, w_qk, B, N, D, ld, P, float(eps), C, SXB, SXN, SXC,
        S=S, HAS_QKB=has_qkb, HAS_BIAS=has_bias, FOLD=fold, TOKEN_NORM=code, ACC=ACC, IN_DTYPE=IN_DTYPE,
        DOT_IN_ACC=dot_in_acc, DOT_PREC=prec, VEC=vec, FROM_X=from_x, X_UNIT=x_unit, XVEC=xvec, BLOCK_C=BLOCK_C,
        BLOCK_D=BLOCK_D,
    )
    return y, G, stats, nk


def e2a_backward(dy, q, k, w_g, proj_weight, G, stats, nk, scale: float, token_norm: str, eps: float, qk_bias=None):
    """Gradients ``(dq, dk, dw_g (S, D), d_proj_weight (S, S, D, D), d_proj_bias (S, S, D), d_qk_bias (S, 2D) |
    None)`` from ``dy``; for a packed ``q = qk`` (``k is None``), ``dq`` is the packed ``dqk (S, B, N, 2D)`` and
    ``dk`` is None."""
    packed = k is None
    q, k, ld = _rows(q, k)
    return _backward(dy, q, k, ld, q.shape, None, packed, w_g, proj_weight, G, stats, nk, scale, token_norm, eps,
                     qk_bias)


def e2a_backward_from_tokens(dy, x, w_qk, qk_bias, w_g, proj_weight, G, stats, nk, scale: float, token_norm: str,
                             eps: float):
    """:func:`e2a_backward` for :func:`e2a_forward_from_tokens`'s training forward: q and k made again from
    the tokens ``x (B, N, C)`` inside the kernels, tile by tile, where the GEMM route makes ``qk`` again in
    memory and reads it back. ``dy (1, B, N, D)``; ``w_qk (2D, C)``, ``qk_bias (2D,) | None`` as for the
    forward. Returns ``dqk (1, B, N, 2D)`` (whose products with ``x`` and ``w_qk`` give the input linear's
    gradients), None and the rest as :func:`e2a_backward`."""
    B, N, C = x.shape
    D = w_qk.shape[0] // 2
    w_qk = w_qk.contiguous()
    return _backward(dy, w_qk, w_qk, 2 * D, (1, B, N, D), (x, w_qk), True, w_g, proj_weight.reshape(1, 1, D, D),
                     G, stats, nk, scale, token_norm, eps, qk_bias)


@_on_its_device
def _backward(dy, q, k, ld, shape, tokens, packed, w_g, proj_weight, G, stats, nk, scale, token_norm, eps, qk_bias):
    """The backward launches. ``tokens``: None, or ``(x, w_qk)`` to make q and k from the tokens in the kernels
    (``FROM_X``, as :func:`_forward`); the gradients of q and k then go to a packed ``dqk`` (``ld = 2D``)."""
    S, B, N, D = shape
    dy = dy.contiguous()
    w_g = w_g.reshape(S, D).contiguous()
    proj_weight = proj_weight.contiguous()
    has_qkb = qk_bias is not None
    qkb = qk_bias.reshape(S, 2 * D).contiguous() if has_qkb else w_g
    acc_dtype, ACC, IN_DTYPE, dot_in_acc, prec = _dtypes(q)
    code = TOKEN_NORM_CODES[token_norm]
    BLOCK_D = _config.block_d(D)
    BLOCK_O = _config.key_grad_block_o(BLOCK_D, q.dtype)
    P = _config.programs_per_row(N, S * B, q.device)
    dev = q.device

    dqk = empty((S, B, N, 2 * D), dtype=q.dtype, device=dev) if packed else None
    dk = dqk[..., D:] if packed else empty((S, B, N, D), dtype=k.dtype, device=dev)
    dq = dqk[..., :D] if packed else empty((S, B, N, D), dtype=q.dtype, device=dev)
    from_x, x, w_qk, C, SXB, SXN, SXC, x_unit, xvec, BLOCK_C = _token_args(tokens, q, w_g)
    rows = (dy, proj_weight, dq, dk) if from_x else (q, k, dy, proj_weight, dq, dk)
    vec = _vector_width(D, ld, *rows)
    part_dg = empty((S, B, S, P, D), dtype=acc_dtype, device=dev)
    # The programs' partials of the (D,)-sized gradients side by side, so one sum reduces them all: dw_g
    # (scaled in the kernel), the proj bias's, and with qk_bias the q and k biases'.
    part_vec = empty((4 if has_qkb else 2, S, B * P, D), dtype=acc_dtype, device=dev)
    part_dwg, part_db = part_vec[0], part_vec[1]
    part_dqb, part_dkb = (part_vec[2], part_vec[3]) if has_qkb else (part_db, part_dg)
    fuse_dw = D <= BLOCK_O and BLOCK_D <= _config.FUSED_WEIGHT_GRAD_MAX_BLOCK_D
    part_dw = empty((S, B, P, S, D, D), dtype=acc_dtype, device=dev) if fuse_dw else part_dg
    _key_grad_kernel[(P, S * B)](
        k, qkb, dy, proj_weight, G, dk, part_dg, part_dkb, part_dw, x, w_qk, B, N, D, ld, P, float(eps), C, SXB, SXN,
        SXC, S=S, S_PAD=_config.next_power_of_2(S), HAS_QKB=has_qkb, ACC=ACC, IN_DTYPE=IN_DTYPE,
        DOT_IN_ACC=dot_in_acc, DOT_PREC=prec, VEC=vec, FUSE_DW=fuse_dw, FROM_X=from_x, X_UNIT=x_unit, XVEC=xvec,
        BLOCK_C=BLOCK_C, BLOCK_D=BLOCK_D, BLOCK_O=BLOCK_O,
    )
    _query_grad_kernel[(P, S * B)](
        q, qkb, dy, w_g, G, stats, part_dg, dq, part_dwg, part_db, part_dqb, x, w_qk, B, N, D, ld, P, float(scale),
        float(eps), C, SXB, SXN, SXC, S=S, HAS_QKB=has_qkb, TOKEN_NORM=code, ACC=ACC, VEC=vec, FROM_X=from_x,
        IN_DTYPE=IN_DTYPE, DOT_IN_ACC=dot_in_acc, DOT_PREC=prec, X_UNIT=x_unit, XVEC=xvec, BLOCK_C=BLOCK_C,
        BLOCK_D=BLOCK_D,
    )
    if fuse_dw:  # (S_t, B·P, S_s, D, D) summed over images and programs, to (S_s, S_t, D, D)
        d_proj_weight = part_dw.view(S, B * P, S, D, D).sum(1).transpose(0, 1).contiguous()
    else:
        tiles = B * _config.cdiv(N, _config.MIN_BLOCK_N)
        split = _config.programs_per_row(tiles * _config.MIN_BLOCK_N, S * S * _config.cdiv(D, 32) ** 2, dev)
        part_dw = empty((S, S, split, D, D), dtype=acc_dtype, device=dev)
        grid = lambda meta: (_config.cdiv(D, meta["BLOCK_O"]), _config.cdiv(D, meta["BLOCK_I"]), S * S * split)  # noqa: E731
        _proj_weight_grad_kernel[grid](
            dy, k, qkb, nk, G, part_dw, x, w_qk, B, N, D, ld, split, float(eps), C, SXB, SXN, SXC,
            S=S, HAS_QKB=has_qkb, ACC=ACC, IN_DTYPE=IN_DTYPE, DOT_IN_ACC=dot_in_acc, DOT_PREC=prec, VEC=vec,
            FROM_X=from_x, X_UNIT=x_unit, XVEC=xvec, BLOCK_C=BLOCK_C, BLOCK_D=BLOCK_D,
        )
        d_proj_weight = part_dw.sum(2)
    sums = part_vec.sum(2)  # views of it below: every extra PyTorch op costs host time (NOTES.md, item 11)
    d_w_g = sums[0]
    d_proj_bias = sums[1].view(1, 1, D) if S == 1 else sums[1][:, None, :].expand(S, S, D).contiguous()
    d_qk_bias = sums[2:].transpose(0, 1).reshape(S, 2 * D) if has_qkb else None
    if packed:
        return dqk, None, d_w_g, d_proj_weight, d_proj_bias, d_qk_bias
    return dq, dk, d_w_g, d_proj_weight, d_proj_bias, d_qk_bias
