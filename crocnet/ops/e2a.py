"""Functional E2A and cross-E2A with autograd, dispatching to the Triton kernels or the PyTorch path.

Both ops are one computation over S stacked streams (E2A is S = 1), so they share one pair of custom
ops, ``crocnet::e2a_forward`` and ``crocnet::e2a_backward``, registered with ``torch.library`` (fake
kernels and autograd included) so ``torch.compile(fullgraph=True)`` traces through them without breaks.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import _checks
from .naive import cross_e2a_naive, e2a_naive

Tensor = torch.Tensor


def _kernels():
    from crocnet._triton import e2a as kernels  # imported lazily: triton is only needed for this backend

    return kernels


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("crocnet::e2a_forward", mutates_args=())
def _e2a_forward(
    q: Tensor,
    k: Optional[Tensor],
    w_g: Tensor,
    proj_weight: Tensor,
    proj_bias: Optional[Tensor],
    qk_bias: Optional[Tensor],
    scale: float,
    token_norm: str,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _kernels().e2a_forward(q, k, w_g, proj_weight, proj_bias, scale, token_norm, eps, qk_bias)


def _width(q: Tensor, k: Optional[Tensor]) -> int:
    """D; a packed ``qk`` (``k is None``) holds q and k side by side, 2D wide."""
    return q.shape[-1] if k is not None else q.shape[-1] // 2


@_e2a_forward.register_fake
def _(q, k, w_g, proj_weight, proj_bias, qk_bias, scale, token_norm, eps):
    S, B, N, _ = q.shape
    D = _width(q, k)
    acc = _acc_dtype(q.dtype)
    return (
        q.new_empty((S, B, N, D)),
        q.new_empty((S, B, D), dtype=acc),
        q.new_empty((S, B, 2), dtype=acc),
        q.new_empty((S, B, N), dtype=acc),
    )


@torch.library.custom_op("crocnet::e2a_backward", mutates_args=())
def _e2a_backward(
    dy: Tensor,
    q: Tensor,
    k: Optional[Tensor],
    w_g: Tensor,
    proj_weight: Tensor,
    qk_bias: Optional[Tensor],
    G: Tensor,
    stats: Tensor,
    nk: Tensor,
    scale: float,
    token_norm: str,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dw_g, dw, db, dqkb = _kernels().e2a_backward(dy, q, k, w_g, proj_weight, G, stats, nk, scale, token_norm, eps, qk_bias)
    # a custom op returns fresh tensors, never None, no two sharing storage (the launcher's gradients of
    # the (D,)-sized parameters are views of one sum)
    dk = q.new_empty((0,)) if dk is None else dk
    return dq, dk, dw_g.clone(), dw, db.clone(), q.new_empty((0,)) if dqkb is None else dqkb.clone()


@_e2a_backward.register_fake
def _(dy, q, k, w_g, proj_weight, qk_bias, G, stats, nk, scale, token_norm, eps):
    S, B, N, _ = q.shape
    D = _width(q, k)
    acc = _acc_dtype(q.dtype)
    return (
        q.new_empty(q.shape),
        q.new_empty((S, B, N, D) if k is not None else (0,)),
        q.new_empty((S, D), dtype=acc),
        q.new_empty((S, S, D, D), dtype=acc),
        q.new_empty((S, S, D), dtype=acc),
        q.new_empty((S, 2 * D) if qk_bias is not None else (0,), dtype=acc),
    )


def _setup_context(ctx, inputs, output):
    q, k, w_g, proj_weight, proj_bias, qk_bias, scale, token_norm, eps = inputs
    _save(ctx, (q, k, w_g, proj_weight, qk_bias), proj_bias, scale, token_norm, eps, output)


def _save(ctx, tensors, proj_bias, scale, token_norm, eps, output):
    """What both custom ops' backwards need: ``tensors``, then the forward's G, stats and key norms."""
    _, G, stats, nk = output
    ctx.save_for_backward(*tensors, G, stats, nk)
    ctx.scale, ctx.token_norm, ctx.eps = scale, token_norm, eps
    ctx.bias_shape = None if proj_bias is None else proj_bias.shape
    ctx.mark_non_differentiable(G, stats, nk)


def _finish_grads(ctx, grads, q, k, w_g, proj_weight, qk_bias) -> tuple:
    """The kernels' gradients as autograd wants them: in the inputs' shapes and the parameters' dtypes, None
    where an input takes none."""
    dq, dk, *params = grads
    dq = dq.view(q.shape)
    dk = None if k is None else dk.view(k.shape)  # packed: dq is the whole dqk
    return dq, dk, *_parameter_grads(ctx, *params, w_g, proj_weight, qk_bias), None, None, None


def _parameter_grads(ctx, dw_g, dw, db, dqkb, w_g, proj_weight, qk_bias) -> tuple:
    """``(dw_g, dw, db, dqkb)`` in the parameters' shapes and dtypes, None where one takes none."""
    dqkb = None if qk_bias is None else dqkb.to(qk_bias.dtype).reshape(qk_bias.shape)
    # token_norm "none" gives every token weight 1: w_g takes no part, and gets no gradient (as on the torch path)
    dw_g = None if ctx.token_norm == "none" else dw_g.to(w_g.dtype).reshape(w_g.shape)
    dw = dw.to(proj_weight.dtype).view(proj_weight.shape)
    db = db.to(proj_weight.dtype).view(ctx.bias_shape) if ctx.bias_shape is not None else None
    return dw_g, dw, db, dqkb


def _backward(ctx, dy, _dG, _dstats, _dnk):
    q, k, w_g, proj_weight, qk_bias, G, stats, nk = ctx.saved_tensors
    if torch.is_grad_enabled():
        return _spec_grads(ctx, dy, q, k, w_g, proj_weight, qk_bias)
    grads = _e2a_backward(dy.contiguous(), q, k, w_g, proj_weight, qk_bias, G, stats, nk, ctx.scale, ctx.token_norm, ctx.eps)
    return _finish_grads(ctx, grads, q, k, w_g, proj_weight, qk_bias)


_e2a_forward.register_autograd(_backward, setup_context=_setup_context)


def _spec_y(q, k, w_g, proj_weight, proj_bias, qk_bias, scale, token_norm, eps) -> Tensor:
    """The PyTorch spec on the kernels' inputs as the eager Function and the custom op take them (a stack or
    one stream's tensors, q and k apart or packed in q), differentiable as many times as wanted."""
    sq, sk, sw_g, sproj_weight, sproj_bias, sqk_bias = _as_streams(q, k, w_g, proj_weight, proj_bias, qk_bias)
    D = sproj_weight.shape[-1]
    if sk is None:
        sq, sk = sq[..., :D], sq[..., D:]
    if sqk_bias is not None:
        sq, sk = sq + sqk_bias[:, None, None, :D], sk + sqk_bias[:, None, None, D:]
    y = cross_e2a_naive(sq, sk, sw_g.reshape(sq.shape[0], D).to(sq.dtype), sproj_weight, sproj_bias, scale, token_norm, eps)
    return y if q.dim() == 4 else y[0]


def _grads_with_graph(spec, inputs, needs, dy) -> list:
    """A backward under ``create_graph=True`` (a gradient penalty, MAML, a Hessian-vector product): the
    gradients of ``spec(*inputs)`` by autograd, as a graph a second derivative can go through; the kernels'
    gradients carry none. ``inputs`` are the saved ones, ``needs`` the forward's ``needs_input_grad``;
    None where no gradient is wanted."""
    wanted = [i for i, (t, need) in enumerate(zip(inputs, needs)) if need and t is not None]
    with torch.enable_grad():
        y = spec(*inputs)
    grads = torch.autograd.grad(y, [inputs[i] for i in wanted], dy, create_graph=True, allow_unused=True)
    out = [None] * len(inputs)
    for i, grad in zip(wanted, grads):
        out[i] = grad
    return out


def _stand_in_bias(ctx, needed: bool, like: Tensor) -> Optional[Tensor]:
    """``proj_bias`` for :func:`_grads_with_graph`: the output is affine in it, and it is not saved, so a zero
    one stands in where its gradient is wanted."""
    return torch.zeros(ctx.bias_shape, dtype=like.dtype, device=like.device, requires_grad=True) if needed else None


def _spec_grads(ctx, dy, q, k, w_g, proj_weight, qk_bias) -> tuple:
    """The gradients of the custom op and the eager Function under ``create_graph=True``, through
    :func:`_spec_y`."""
    needs = ctx.needs_input_grad
    bias = _stand_in_bias(ctx, needs[4], proj_weight)
    spec = lambda *tensors: _spec_y(*tensors, ctx.scale, ctx.token_norm, ctx.eps)  # noqa: E731
    return (*_grads_with_graph(spec, (q, k, w_g, proj_weight, bias, qk_bias), needs[:6], dy), None, None, None)


# One stream from its tokens (q and k made inside the kernels, never in memory): the traced form of the
# eager Function's ``fuses_input_linear`` route, so a compiled model saves the same bytes.
@torch.library.custom_op("crocnet::e2a_tokens_forward", mutates_args=())
def _e2a_tokens_forward(
    x: Tensor,
    w_qk: Tensor,
    qk_bias: Optional[Tensor],
    w_g: Tensor,
    proj_weight: Tensor,
    proj_bias: Optional[Tensor],
    scale: float,
    token_norm: str,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _kernels().e2a_forward_from_tokens(x, w_qk, qk_bias, w_g, proj_weight, proj_bias, scale, token_norm, eps)


@_e2a_tokens_forward.register_fake
def _(x, w_qk, qk_bias, w_g, proj_weight, proj_bias, scale, token_norm, eps):
    (B, N, _), D = x.shape, w_qk.shape[0] // 2
    acc = _acc_dtype(w_qk.dtype)
    return (w_qk.new_empty((1, B, N, D)), w_qk.new_empty((1, B, D), dtype=acc), w_qk.new_empty((1, B, 2), dtype=acc),
            w_qk.new_empty((1, B, N), dtype=acc))


@torch.library.custom_op("crocnet::e2a_tokens_backward", mutates_args=())
def _e2a_tokens_backward(
    dy: Tensor,
    x: Tensor,
    w_qk: Tensor,
    qk_bias: Optional[Tensor],
    w_g: Tensor,
    proj_weight: Tensor,
    G: Tensor,
    stats: Tensor,
    nk: Tensor,
    scale: float,
    token_norm: str,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dqk, dw_g, dw, db, dqkb = _tokens_backward_kernels(dy, x, w_qk, qk_bias, w_g, proj_weight, G, stats, nk, scale,
                                                       token_norm, eps)
    return dqk, dw_g.clone(), dw, db.clone(), dqk.new_empty((0,)) if dqkb is None else dqkb.clone()


@_e2a_tokens_backward.register_fake
def _(dy, x, w_qk, qk_bias, w_g, proj_weight, G, stats, nk, scale, token_norm, eps):
    (B, N, _), D = x.shape, w_qk.shape[0] // 2
    acc = _acc_dtype(w_qk.dtype)
    return (w_qk.new_empty((1, B, N, 2 * D)), w_qk.new_empty((1, D), dtype=acc), w_qk.new_empty((1, 1, D, D), dtype=acc),
            w_qk.new_empty((1, 1, D), dtype=acc), w_qk.new_empty((2 * D,) if qk_bias is not None else (0,), dtype=acc))


def _tokens_backward_kernels(dy, x, w_qk, qk_bias, w_g, proj_weight, G, stats, nk, scale, token_norm, eps) -> tuple:
    """``(dqk (1, B, N, 2D), dw_g, dw, db, dqkb | None)`` for the forward from the tokens ``x (B, N, C)``: q and
    k made again inside the kernels, or, with ``_config.FUSED_INPUT_BACKWARD`` off, qk made with a GEMM and
    read back (the A/B benchmark's other side). ``w_qk (2D, C)`` and ``qk_bias (2D,)`` in the compute dtype."""
    kernels = _kernels()
    if kernels._config.FUSED_INPUT_BACKWARD:
        grads = kernels.e2a_backward_from_tokens(dy, x, w_qk, qk_bias, w_g, proj_weight, G, stats, nk, scale,
                                                 token_norm, eps)
    else:
        qk = _streams_gemm([x.to(w_qk.dtype)], w_qk[None])
        grads = kernels.e2a_backward(dy, qk, None, w_g, proj_weight, G, stats, nk, scale, token_norm, eps,
                                     None if qk_bias is None else qk_bias[None])
    dqk, _, dw_g, dw, db, dqkb = grads
    return dqk, dw_g, dw, db, None if dqkb is None else dqkb.view(-1)


def _tokens_setup_context(ctx, inputs, output):
    x, w_qk, qk_bias, w_g, proj_weight, proj_bias, scale, token_norm, eps = inputs
    _save(ctx, (x, w_qk, qk_bias, w_g, proj_weight), proj_bias, scale, token_norm, eps, output)


def _tokens_backward(ctx, dy, _dG, _dstats, _dnk):
    x, w_qk, qk_bias, w_g, proj_weight, G, stats, nk = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: through the spec (see _grads_with_graph)
        needs = ctx.needs_input_grad
        bias = _stand_in_bias(ctx, needs[5], proj_weight)

        def spec(x, w_qk, qk_bias, w_g, proj_weight, proj_bias):
            qk = F.linear(x.to(w_qk.dtype), w_qk)  # one stream's tensors, whatever their stacked form
            D = proj_weight.shape[-1]
            return _spec_y(qk, None, w_g.reshape(D), proj_weight.reshape(D, D),
                           None if proj_bias is None else proj_bias.reshape(D), qk_bias, ctx.scale, ctx.token_norm,
                           ctx.eps)[None]

        return (*_grads_with_graph(spec, (x, w_qk, qk_bias, w_g, proj_weight, bias), needs[:6], dy), None, None, None)
    dqk, dw_g, dw, db, dqkb = _e2a_tokens_backward(dy.contiguous(), x, w_qk, qk_bias, w_g, proj_weight, G, stats, nk,
                                                   ctx.scale, ctx.token_norm, ctx.eps)
    dqk = dqk[0]
    dx = torch.matmul(dqk, w_qk).to(x.dtype)
    dw_qk = torch.bmm(dqk.transpose(1, 2), x.to(dqk.dtype)).sum(0)
    dw_g, dw, db, dqkb = _parameter_grads(ctx, dw_g, dw, db, dqkb, w_g, proj_weight, qk_bias)
    return dx, dw_qk, dqkb, dw_g, dw, db, None, None, None


_e2a_tokens_forward.register_autograd(_tokens_backward, setup_context=_tokens_setup_context)


def _as_streams(q, k, w_g, proj_weight, proj_bias, qk_bias):
    """One stream's ``(B, N, D)`` tensors as the kernels' stacked layout (views; stacks pass unchanged)."""
    if q.dim() == 4:
        return q, k, w_g, proj_weight, proj_bias, qk_bias
    D = proj_weight.shape[-1]
    return (q[None], None if k is None else k[None], w_g.reshape(1, D), proj_weight.reshape(1, 1, D, D),
            None if proj_bias is None else proj_bias.reshape(1, 1, D), None if qk_bias is None else qk_bias.reshape(1, 2 * D))


class _E2AFunction(torch.autograd.Function):
    """The custom ops' computation for eager calls: the same kernels, saved tensors and gradients, without
    the dispatcher's per-call work: about 80 µs of host time per forward and backward on a 2-core CPU
    (``tools/host_overhead.py``), several times what the kernels take at 64² × 64 on an H100-class GPU.
    ``torch.compile`` traces the custom ops.

    Takes the stacked ``(S, B, N, D)`` layout or one stream's ``(B, N, D)`` tensors as they are (``w_g (D,)``
    or ``(D, 1)``, ``proj_weight (D, D)``, ...), viewed as a stack inside: views taken outside would each add
    an autograd node to every forward and backward."""

    @staticmethod
    def forward(ctx, *inputs):  # a separate setup_context would cost an inspect.signature bind a call
        q, k, w_g, proj_weight, proj_bias, qk_bias, scale, token_norm, eps = inputs
        stacked = _as_streams(q, k, w_g, proj_weight, proj_bias, qk_bias)
        output = _kernels().e2a_forward(*stacked[:5], scale, token_norm, eps, stacked[5])
        _setup_context(ctx, inputs, output)
        y = output[0] if q.dim() == 4 else output[0][0]
        return (y,) + output[1:]

    @staticmethod
    def backward(ctx, dy, _dG, _dstats, _dnk):
        q, k, w_g, proj_weight, qk_bias, G, stats, nk = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: through the spec (see _grads_with_graph)
            return _spec_grads(ctx, dy, q, k, w_g, proj_weight, qk_bias)
        sq, sk, sw_g, sproj_weight, _, sqk_bias = _as_streams(q, k, w_g, proj_weight, None, qk_bias)
        dy = dy.contiguous().view(G.shape[0], *dy.shape[-3:])
        grads = _kernels().e2a_backward(dy, sq, sk, sw_g, sproj_weight, G, stats, nk, ctx.scale, ctx.token_norm,
                                        ctx.eps, sqk_bias)
        return _finish_grads(ctx, grads, q, k, w_g, proj_weight, qk_bias)


class _E2ATokensFunction(torch.autograd.Function):
    """E2A with its packed input linears, from each stream's tokens ``x_s (B, N, C)``, for the modules' eager
    path: ``qk_s = x_s W_qk,sᵀ`` (in the autocast dtype under autocast) is made here, each stream's GEMM
    writing its slice of the ``(S, B, N, 2D)`` stack. With ``keep_qk`` False it is made again in the backward
    instead of being saved, 2 BND a stream less activation memory for one more GEMM (x read, qk written: 3
    BND); for one stream at D ≤ 128 in 16-bit (``fuses_input_linear``) neither pass writes it: the kernels
    make q and k from the tokens, tile by tile. With ``keep_qk`` the stack is saved, with the GEMM's operands
    as ``nn.Linear`` saves them. The weight gradient ``Σ_b dqk_bᵀ x_b`` is a batched GEMM that takes the 2D
    modules' token view ``x.flatten(2).transpose(1, 2)`` without a copy.

    Takes the modules' parameters one tensor each (``tensors``: the S streams' tokens, then the groups of
    :func:`_stack_parameters`) and stacks them here, where autograd records nothing; their gradients go back
    as views of the stacked ones. Stacking outside cost every call a cat or stack with its autograd node per
    group and stream (about 50 µs, 5 %, of a 3-stream module's host time, ``tools/host_overhead.py``)."""

    @staticmethod
    def forward(ctx, layout, scale, token_norm, eps, *tensors):
        S, has_qkb, has_bias, keep_qk = layout
        xs, params = tensors[:S], tensors[S:]
        w_qk, qk_bias, w_g, proj_weight, proj_bias = _stack_parameters(S, has_qkb, has_bias, params)
        dtype = _linear_dtype(xs[0])  # under autocast every operand as nn.Linear's
        w_gemm, qk_bias, proj_weight, proj_bias = _cast(dtype, w_qk, qk_bias, proj_weight, proj_bias)
        kernels = _kernels()
        from_x = not keep_qk and kernels.fuses_input_linear(S, w_g.shape[-1], w_gemm.dtype)
        if from_x:  # q and k made from the tokens inside the kernels, forward and backward: never written
            y, G, stats, nk = kernels.e2a_forward_from_tokens(xs[0], w_gemm[0], None if qk_bias is None else qk_bias[0],
                                                              w_g, proj_weight, proj_bias, scale, token_norm, eps)
        else:
            gemm_xs = _cast(dtype, *xs)
            qk = _streams_gemm(gemm_xs, w_gemm)
            y, G, stats, nk = kernels.e2a_forward(qk, None, w_g, proj_weight, proj_bias, scale, token_norm, eps, qk_bias)
        kept = (qk, w_gemm, *gemm_xs) if keep_qk else (w_qk, *xs)
        ctx.save_for_backward(w_g, proj_weight, qk_bias, G, stats, nk, *kept)
        ctx.layout, ctx.scale, ctx.token_norm, ctx.eps, ctx.qk_dtype = layout, scale, token_norm, eps, y.dtype
        ctx.from_x, ctx.cast = from_x, dtype
        ctx.params, ctx.x_dtypes = [(p.shape, p.dtype) for p in params], [x.dtype for x in xs]
        # for a backward under create_graph=True, which needs the inputs as autograd knows them: the
        # parameters, and the tokens where they are saved anyway (not their copies in the autocast dtype)
        ctx.inputs = tensors if not keep_qk or dtype is None else (None,) * S + params
        return y[0] if S == 1 else y

    @staticmethod
    def backward(ctx, dy):
        if torch.is_grad_enabled():  # create_graph=True: through the spec (see _grads_with_graph)
            return (None,) * 4 + tuple(_tokens_grads_with_graph(ctx, dy))
        w_g, proj_weight, qk_bias, G, stats, nk, *kept = ctx.saved_tensors
        S, has_qkb, has_bias, keep_qk = ctx.layout
        if keep_qk:  # the GEMM's own operands, already in its dtype
            qk, w_, *xs_ = kept
        else:  # the GEMM's operands in its dtype (for the weight gradient, and to make qk again)
            w_qk, *xs = kept
            w_, xs_ = w_qk.to(ctx.qk_dtype), [x.to(ctx.qk_dtype) for x in xs]
        dy = dy.contiguous().view(*G.shape[:2], -1, G.shape[-1]).to(ctx.qk_dtype)  # (S, B, N, D)
        if ctx.from_x:  # q and k made again inside the kernels, from the tokens as they are
            dqk, dw_g, dw, db, dqkb = _tokens_backward_kernels(dy, xs[0], w_[0], None if qk_bias is None else qk_bias[0],
                                                               w_g, proj_weight, G, stats, nk, ctx.scale, ctx.token_norm,
                                                               ctx.eps)
        else:
            if not keep_qk:
                qk = _streams_gemm(xs_, w_)
            dqk, _, dw_g, dw, db, dqkb = _kernels().e2a_backward(dy, qk, None, w_g, proj_weight, G, stats, nk,
                                                                 ctx.scale, ctx.token_norm, ctx.eps, qk_bias)
        if ctx.token_norm == "none":  # unit token weights: w_g takes no part (as on the torch path)
            dw_g = None
        needs = ctx.needs_input_grad[4:]
        dxs = [torch.matmul(dqk[s], w_[s]).to(dtype) if needs[s] else None for s, dtype in enumerate(ctx.x_dtypes)]
        dw_qk = None
        if any(needs[S:3 * S]):
            dw_qk = torch.stack([torch.bmm(dqk[s].transpose(1, 2), x).sum(0) for s, x in enumerate(xs_)])
        stacked = (dw_qk, dqkb, dw_g, dw, db)
        return (None,) * 4 + tuple(dxs) + _unstack_gradients(stacked, _group_sizes(S, has_qkb, has_bias), ctx.params)


def _tokens_grads_with_graph(ctx, dy) -> list:
    """:class:`_E2ATokensFunction`'s gradients under ``create_graph=True``, through the linears and the spec."""
    S, has_qkb, has_bias, keep_qk = ctx.layout
    inputs, needs = ctx.inputs, ctx.needs_input_grad[4:]
    if any(need and x is None for x, need in zip(inputs[:S], needs)):
        raise RuntimeError("a second derivative through the E2A modules with recompute_qk=False under autocast "
                           "needs the tokens before their cast, which this path does not keep: use "
                           "recompute_qk=True (the default) or backend='torch'")

    def spec(*tensors):
        w_qk, qk_bias, w_g, proj_weight, proj_bias = _cast(ctx.cast, *_stack_parameters(S, has_qkb, has_bias,
                                                                                          tensors[S:]))
        qk = torch.stack([F.linear(x.to(w.dtype), w) for x, w in zip(tensors[:S], w_qk)])
        y = _spec_y(qk, None, w_g, proj_weight, proj_bias, qk_bias, ctx.scale, ctx.token_norm, ctx.eps)
        return y[0] if S == 1 else y

    return _grads_with_graph(spec, inputs, needs, dy)


def _group_sizes(S: int, has_qkb: bool, has_bias: bool) -> tuple:
    """How many tensors each parameter group of :func:`_stack_parameters` holds (0: absent)."""
    return 2 * S, 2 * S if has_qkb else 0, S, S * S, S * S if has_bias else 0


def _stack_parameters(S: int, has_qkb: bool, has_bias: bool, params) -> tuple:
    """The kernels' stacked parameters from one tensor each, in the order ``W_q,0, W_k,0, W_q,1, ...`` (2S
    of ``(D, C)``), ``b_q,0, b_k,0, ...`` (2S of ``(D,)``, if ``has_qkb``), ``w_g,s`` (S of ``(D, 1)`` or
    ``(D,)``), ``proj[s][t].weight`` (S² of ``(D, D)``, row-major) and ``proj[s][t].bias`` (S², if
    ``has_bias``). Returns ``w_qk (S, 2D, C)``, ``qk_bias (S, 2D)``, ``w_g (S, D)``, ``proj_weight (S, S, D,
    D)``, ``proj_bias (S, S, D)`` (None where absent)."""
    D, C = params[0].shape
    shapes = ((S, 2 * D, C), (S, 2 * D), (S, D), (S, S, D, D), (S, S, D))
    out, i = [], 0
    for n, shape in zip(_group_sizes(S, has_qkb, has_bias), shapes):
        if n == 0:
            out.append(None)
        elif n == 1:  # no copy of a lone parameter
            out.append(params[i].reshape(shape).contiguous())
        else:
            out.append(torch.cat(params[i:i + n]).view(shape))
        i += n
    return tuple(out)


def _unstack_gradients(stacked, sizes, params) -> tuple:
    """Each group's stacked gradient (the kernels' fp32 sums, or fp64) as one view per parameter, in the
    parameters' shapes and dtypes (``params``: every parameter's (shape, dtype), in order; a group's
    members share them). Under autocast that is one rounding, to the parameters' fp32, where the ops,
    taking the parameters in the autocast dtype, round to it first."""
    out, i = [], 0
    for grad, n in zip(stacked, sizes):
        if n:
            shape, dtype = params[i]
            if grad is None:
                out += [None] * n
            else:
                grad = grad.to(dtype)
                out += (grad.reshape(shape),) if n == 1 else grad.reshape((n, *shape)).unbind(0)
            i += n
    return tuple(out)


def _linear_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype ``nn.Linear`` computes in on ``x`` under autocast; None outside autocast, or for a dtype
    autocast leaves as it is (float64)."""
    dtype = _checks.autocast_dtype(x)
    return dtype if dtype is not None and x.dtype in _checks.AUTOCAST_CASTS else None


def _cast(dtype: Optional[torch.dtype], *tensors) -> tuple:
    """``tensors`` in ``dtype`` (None stays None); as they are where ``dtype`` is None."""
    return tensors if dtype is None else tuple(None if t is None else t.to(dtype) for t in tensors)


def _streams_gemm(xs, w_qk):
    """``qk (S, B, N, 2D)``: each stream's tokens ``xs[s] (B, N, C) @ w_qk[s]ᵀ``, ``w_qk (S, 2D, C)``, both in the
    GEMM's dtype (``out=`` takes no autocast). Each stream's GEMM writes its slice of the stack: stacking
    separate results would copy them all once more, 4 BND a stream in the forward and again in the backward."""
    if len(xs) == 1:
        return torch.matmul(xs[0], w_qk[0].t())[None]
    qk = xs[0].new_empty((len(xs), *xs[0].shape[:-1], w_qk.shape[1]))
    for s, x in enumerate(xs):
        torch.matmul(x, w_qk[s].t(), out=qk[s])
    return qk


def _autocast(q, k, proj_weight, proj_bias, qk_bias):
    """Under autocast, run the kernels in the autocast dtype as ``nn.Linear`` would (float64 as it is)."""
    dtype = _linear_dtype(q)
    if dtype is not None:
        q, proj_weight = q.to(dtype), proj_weight.to(dtype)
        k, proj_bias, qk_bias = (None if t is None else t.to(dtype) for t in (k, proj_bias, qk_bias))
    return q, k, proj_weight, proj_bias, qk_bias


def _recorded() -> bool:
    """Whether a tracer records the call (``torch.compile`` / ``torch.export``, ``torch.jit.trace``): it must
    see the custom ops, since it cannot see into a kernel launch."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _triton_e2a(q, k, w_g, proj_weight, proj_bias, scale, token_norm, eps, qk_bias=None) -> Tensor:
    """The kernels on validated ``(S, B, N, D)`` stacks (or, for the eager Function, one stream's tensors)."""
    q, k, proj_weight, proj_bias, qk_bias = _autocast(q, k, proj_weight, proj_bias, qk_bias)
    op = _e2a_forward if _recorded() else _E2AFunction.apply
    return op(q, k, w_g, proj_weight, proj_bias, qk_bias, scale, token_norm, eps)[0]


def cross_e2a(
    q: Tensor,
    k: Tensor,
    w_g: Tensor,
    proj_weight: Tensor,
    proj_bias: Optional[Tensor] = None,
    *,
    scale: Optional[float] = None,
    token_norm: str = "l2",
    eps: float = 1e-12,
    backend: str = "auto",
) -> Tensor:
    """Cross efficient additive attention over S coupled streams (CroCNet stage 2).

    ``y_s = Σ_t proj_{s,t}(G_s ⊙ k̂_t) + q̂_s`` with ``G_s = Σ_n â_{s,n} q̂_{s,n}``, ``a_{s,n} = scale · q̂_{s,n}·w_g[s]``.

    Args:
        q, k: ``(S, B, N, D)`` query and key projections of the S streams (not yet normalised).
        w_g: ``(S, D)`` (or ``(S, D, 1)``) token-scoring vectors.
        proj_weight: ``(S, S, D, D)``; ``proj_weight[s, t]`` maps the keys of stream t into stream s.
        proj_bias: ``(S, S, D)`` or ``None``.
        scale: score scale ``c``; default ``D ** -0.5``.
        token_norm: ``"l2"`` (SwiftFormer), ``"softmax"`` (Fastformer) or ``"none"`` (unit weights, the
            original SwiftFormer release and its HuggingFace port).
        eps: the ``F.normalize`` epsilon of every norm.
        backend: ``"auto"`` (Triton on CUDA, PyTorch elsewhere), ``"triton"`` or ``"torch"``.

    Returns:
        ``(S, B, N, D)`` in q's dtype (the autocast dtype under autocast with the Triton backend).
    """
    return _streams(q, k, None, w_g, proj_weight, proj_bias, scale, token_norm, eps, backend)


def cross_e2a_packed(
    qk: Tensor,
    w_g: Tensor,
    proj_weight: Tensor,
    proj_bias: Optional[Tensor] = None,
    *,
    qk_bias: Optional[Tensor] = None,
    scale: Optional[float] = None,
    token_norm: str = "l2",
    eps: float = 1e-12,
    backend: str = "auto",
) -> Tensor:
    """:func:`cross_e2a` on each stream's q and k side by side: ``qk (S, B, N, 2D)``, ``q = qk[..., :D]``,
    ``k = qk[..., D:]`` (one GEMM per stream makes both; the kernels read them in place and return one
    ``dqk``, see :func:`e2a_packed`); ``qk_bias (S, 2D)`` is added to each stream's qk first. Other arguments
    and the result as in :func:`cross_e2a`."""
    dim = _packed_width(qk, "(S, B, N, 2D)", 4)
    return _streams(qk[..., :dim], qk[..., dim:], qk, w_g, proj_weight, proj_bias, scale, token_norm, eps, backend,
                    qk_bias)


def _packed_width(qk: Tensor, layout: str, dims: int) -> int:
    _checks.check_float("qk", qk)
    if qk.dim() != dims or qk.shape[-1] % 2:
        raise ValueError(f"qk must have shape {layout} (q and k side by side, an even last dim), got {tuple(qk.shape)}")
    return qk.shape[-1] // 2


def _streams(q, k, qk, w_g, proj_weight, proj_bias, scale, token_norm, eps, backend, qk_bias=None) -> Tensor:
    """:func:`cross_e2a` on ``(S, B, N, D)`` q and k; ``qk``: the packed tensor they are the halves of, or None;
    ``qk_bias``: ``(S, 2D)`` added to q and k (packed ops only)."""
    _checks.check_options(token_norm, backend, eps, scale)
    _checks.check_streams(q, k, w_g, proj_weight, proj_bias, qk_bias)
    dim = q.shape[-1]
    scale = dim**-0.5 if scale is None else float(scale)
    if _checks.resolve_backend(backend, q) == "torch":
        if qk_bias is not None:
            q, k = q + qk_bias[:, None, None, :dim], k + qk_bias[:, None, None, dim:]
        return cross_e2a_naive(q, k, w_g.reshape(q.shape[0], -1), proj_weight, proj_bias, scale, token_norm, eps)
    q, k = (q, k) if qk is None else (qk, None)
    return _triton_e2a(q, k, w_g, proj_weight, proj_bias, scale, token_norm, eps, qk_bias)


def _single_stream(q, k, qk, w_g, proj_weight, proj_bias, scale, token_norm, eps, backend, qk_bias=None) -> Tensor:
    """:func:`e2a` on ``(B, N, D)`` q and k; ``qk``: the packed ``(B, N, 2D)`` tensor they are the halves of
    (handed to the kernels whole), or None; ``qk_bias``: ``(2D,)`` added to q and k (packed op only)."""
    for name, t, dims in (("q", q, 3), ("k", k, 3), ("proj_weight", proj_weight, 2)):
        _checks.check_float(name, t)
        if t.dim() != dims:
            raise ValueError(f"{name} must have {dims} dims, got shape {tuple(t.shape)}")
    _checks.check_float("w_g", w_g)
    if proj_bias is not None:
        _checks.check_float("proj_bias", proj_bias)
    dim = q.shape[-1]
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q (B, N, D) = {tuple(q.shape)}, got {tuple(k.shape)}")
    if 0 in q.shape:
        raise ValueError(f"q and k must be non-empty in every axis (batch, tokens, dim), got {tuple(q.shape)}")
    if tuple(w_g.shape) not in ((dim,), (dim, 1)):
        raise ValueError(f"w_g must have shape ({dim}, 1) or ({dim},) to match q's width {dim}, got {tuple(w_g.shape)}")
    if proj_weight.shape != (dim, dim):
        raise ValueError(f"proj_weight must have shape ({dim}, {dim}) to match q's width {dim}, got {tuple(proj_weight.shape)}")
    if proj_bias is not None and proj_bias.shape != (dim,):
        raise ValueError(f"proj_bias must have shape ({dim},) to match q's width {dim}, got {tuple(proj_bias.shape)}")
    if qk_bias is not None and qk_bias.shape != (2 * dim,):
        raise ValueError(f"qk_bias must have shape ({2 * dim},) (the biases of q and k side by side), got {tuple(qk_bias.shape)}")
    bias = None if proj_bias is None else proj_bias[None, None]
    stream_qkb = None if qk_bias is None else qk_bias[None]
    _checks.check_options(token_norm, backend, eps, scale)
    _checks.check_streams(q[None], k[None], w_g.reshape(1, -1), proj_weight[None, None], bias, stream_qkb)
    scale = dim**-0.5 if scale is None else float(scale)
    if _checks.resolve_backend(backend, q) == "torch":
        if qk_bias is not None:
            q, k = q + qk_bias[:dim], k + qk_bias[dim:]
        # straight to the spec on (B, N, D): a stream axis would cost autograd a copy of every gradient
        return e2a_naive(q, k, w_g.reshape(-1), proj_weight, proj_bias, scale, token_norm, eps)
    q, k = (q, k) if qk is None else (qk, None)
    return single_stream_kernels(q, k, w_g, proj_weight, proj_bias, scale, token_norm, eps, qk_bias)


def tokens_kernels(xs, qk_weights, qk_biases, w_gs, proj_weights, proj_biases, scale: float, token_norm: str,
                   eps: float, keep_qk: bool = False):
    """The Triton kernels on ``qk_s = x_s W_qk,sᵀ`` for each stream's tokens ``xs[s] (B, N, C)``, with those GEMMs
    inside the op, each writing its slice of the streams' stack, without the public ops' argument checks. The
    backward makes qk again (the modules' ``recompute_qk``; for one stream at D ≤ 128 in 16-bit, neither pass
    writes it: the kernels make q and k from the tokens) or, with ``keep_qk``, uses the one saved. The
    parameters come one tensor each, as a module holds them: ``qk_weights`` ``[W_q,0, W_k,0, W_q,1, ...]`` (2S
    of ``(D, C)``), ``qk_biases`` likewise (2S of ``(D,)``) or None, ``w_gs`` (S of ``(D, 1)`` or ``(D,)``),
    ``proj_weights`` (S² of ``(D, D)``, row-major: ``[s][t]`` maps the keys of stream t into stream s) and
    ``proj_biases`` (S² of ``(D,)``) or None. Result: ``(B, N, D)`` for one stream, as :func:`e2a`; ``(S, B, N,
    D)`` for S, as :func:`cross_e2a`. Traced calls (``torch.compile``, ``torch.jit.trace``) record custom ops:
    for one stream at D ≤ 128 in 16-bit the ones that make q and k from the tokens (without ``keep_qk``),
    else a linear and the ops on the qk it makes, which autograd keeps."""
    S, has_qkb, has_bias, params = _one_tensor_each(qk_weights, qk_biases, w_gs, proj_weights, proj_biases)
    if not _recorded():
        return _E2ATokensFunction.apply((S, has_qkb, has_bias, keep_qk), scale, token_norm, eps, *xs, *params)
    w_qk, qk_bias, w_g, proj_weight, proj_bias = _stack_parameters(S, has_qkb, has_bias, params)
    dtype = _linear_dtype(xs[0])
    if not keep_qk and _kernels().fuses_input_linear(S, w_g.shape[-1], dtype or w_qk.dtype):
        # the operands as nn.Linear's under autocast; x is cast as the kernels load it
        w_qk, qk_bias, proj_weight, proj_bias = _cast(dtype, w_qk, qk_bias, proj_weight, proj_bias)
        y = _e2a_tokens_forward(xs[0], w_qk[0], None if qk_bias is None else qk_bias[0], w_g, proj_weight, proj_bias,
                                scale, token_norm, eps)[0]
        return y[0]
    # one stream: a view, not a stack (a copy of qk)
    qk = F.linear(xs[0], w_qk[0])[None] if S == 1 else torch.stack([F.linear(x, w) for x, w in zip(xs, w_qk)])
    y = _triton_e2a(qk, None, w_g, proj_weight, proj_bias, scale, token_norm, eps, qk_bias)
    return y[0] if S == 1 else y


def folded_tokens_kernels(xs, qk_weights, qk_biases, w_gs, proj_weights, proj_biases, final_weights, final_biases,
                          scale: float, token_norm: str, eps: float):
    """Inference (no autograd): the modules' whole output ``out_s = final_s(y_s)`` from the tokens, with each
    stream's output linear ``(W_f,s (D, D), b_f,s)`` folded into the key interaction's GEMM (DESIGN.md §1):
    ``out_s = Σ_t (k̂_t ⊙ G_s)(W_f,s W_p,{s,t})ᵀ + q̂_s W_f,sᵀ + W_f,s Σ_t b_p,{s,t} + b_f,s``, so y is never
    written and read back: 2 BND of a forward's 9 (the module with its linears), and one launch. The folded
    weights are made in the accumulator dtype (fp32, fp64 for fp64) and rounded once to the kernels' dtype.
    For one stream at D ≤ 128 in 16-bit (``fuses_input_linear``) the kernels also make q and k from the tokens,
    so qk is never in memory either: 3 BND. Arguments as :func:`tokens_kernels`, plus ``final_weights`` (S of
    ``(D, D)``) and ``final_biases`` (S of ``(D,)``) or None. Traced calls record the folding (a few small
    matmuls) and the custom op ``crocnet::e2a_folded`` for the kernels. Grad mode must be off: nothing here
    is differentiable."""
    if torch.is_grad_enabled():
        raise RuntimeError("folded_tokens_kernels is for inference: call it under torch.no_grad() or "
                           "torch.inference_mode() (its result carries no gradient)")
    S, has_qkb, has_bias, params = _one_tensor_each(qk_weights, qk_biases, w_gs, proj_weights, proj_biases)
    w_qk, qk_bias, w_g, proj_weight, proj_bias = _stack_parameters(S, has_qkb, has_bias, params)
    dtype = _linear_dtype(xs[0]) or xs[0].dtype
    acc = _acc_dtype(dtype)

    def to(t, dtype):  # skips the call where there is nothing to convert (host time)
        return t if t is None or t.dtype == dtype else t.to(dtype)

    def stacked(ts):  # (S, ...) in the accumulator dtype
        return None if ts is None else to(ts[0][None] if S == 1 else torch.stack(ts), acc)

    w_f, bias = stacked(final_weights), stacked(final_biases)
    weight = torch.matmul(w_f[:, None], to(proj_weight, acc))
    if has_bias:  # W_f,s Σ_t b_p,{s,t} (+ b_f,s)
        through = to(proj_bias, acc)
        through = (through[:, 0] if S == 1 else through.sum(1))[..., None]
        bias = (torch.bmm(w_f, through) if bias is None else torch.baddbmm(bias[..., None], w_f, through))[..., 0]
    weight, bias, qk_bias, w_f, w_qk = (to(t, dtype) for t in (weight, bias, qk_bias, w_f, w_qk))
    y = (_e2a_folded if _recorded() else _folded_kernels)(xs, w_qk, qk_bias, w_g, weight, bias, w_f, scale,
                                                           token_norm, eps)
    return y[0] if S == 1 else y


def _folded_kernels(xs: list[Tensor], w_qk: Tensor, qk_bias: Optional[Tensor], w_g: Tensor, weight: Tensor,
                    bias: Optional[Tensor], w_f: Tensor, scale: float, token_norm: str, eps: float) -> Tensor:
    """The launches of :func:`folded_tokens_kernels` on its folded parameters, all in the compute dtype:
    ``w_qk (S, 2D, C)``, ``qk_bias (S, 2D) | None``, ``weight = W_f W_p (S, S, D, D)``, ``bias (S, D) | None``,
    ``w_f (S, D, D)``; ``xs`` in any float dtype. Returns ``(S, B, N, D)``."""
    kernels = _kernels()
    S, dtype = w_qk.shape[0], w_qk.dtype
    if kernels.fuses_input_linear(S, w_g.shape[-1], dtype):  # q and k made in the kernels: qk never in memory
        return kernels.e2a_forward_from_tokens(xs[0], w_qk[0], None if qk_bias is None else qk_bias[0], w_g, weight,
                                               bias, scale, token_norm, eps, final_weight=w_f)[0]
    qk = _streams_gemm([x if x.dtype == dtype else x.to(dtype) for x in xs], w_qk)
    return kernels.e2a_forward(qk, None, w_g, weight, bias, scale, token_norm, eps, qk_bias, final_weight=w_f)[0]


# The same for traced calls (inference only: no autograd is registered, grad mode is off where it is called).
_e2a_folded = torch.library.custom_op("crocnet::e2a_folded", _folded_kernels, mutates_args=())


@_e2a_folded.register_fake
def _(xs, w_qk, qk_bias, w_g, weight, bias, w_f, scale, token_norm, eps):
    B, N, _ = xs[0].shape
    return w_qk.new_empty((w_qk.shape[0], B, N, w_qk.shape[1] // 2))


def _one_tensor_each(qk_weights, qk_biases, w_gs, proj_weights, proj_biases) -> tuple:
    """``(S, has_qkb, has_bias, params)``: the parameter groups as the flat tuple :func:`_stack_parameters` takes."""
    params = (*qk_weights, *(qk_biases or ()), *w_gs, *proj_weights, *(proj_biases or ()))
    return len(w_gs), qk_biases is not None, proj_biases is not None, params


def single_stream_kernels(q, k, w_g, proj_weight, proj_bias, scale: float, token_norm: str, eps: float, qk_bias=None):
    """The Triton kernels on one stream's ``(B, N, D)`` q and k (``k = None``: q is a packed ``qk``), without
    the public ops' argument checks: for callers whose arguments hold by construction (the modules, which
    check their input once). Same result and gradients as :func:`e2a` / :func:`e2a_packed`."""
    if not _recorded():  # the eager Function takes one stream's tensors as they are
        return _triton_e2a(q, k, w_g, proj_weight, proj_bias, scale, token_norm, eps, qk_bias)
    stacked = _as_streams(q, k, w_g, proj_weight, proj_bias, qk_bias)  # the custom ops' (S, B, N, D) layout
    return _triton_e2a(*stacked[:5], scale, token_norm, eps, stacked[5]).squeeze(0)


def e2a(
    q: Tensor,
    k: Tensor,
    w_g: Tensor,
    proj_weight: Tensor,
    proj_bias: Optional[Tensor] = None,
    *,
    scale: Optional[float] = None,
    token_norm: str = "l2",
    eps: float = 1e-12,
    backend: str = "auto",
) -> Tensor:
    """Efficient additive attention core (SwiftFormer), without the input and output linears.

    ``q̂ = q/‖q‖``, ``k̂ = k/‖k‖`` per token; ``a_n = scale · q̂_n·w_g``; ``â = a/‖a‖`` over tokens;
    ``G = Σ_n â_n q̂_n``; returns ``y_n = proj(G ⊙ k̂_n) + q̂_n``.

    Args:
        q, k: ``(B, N, D)`` query and key projections (``to_query(x)``, ``to_key(x)``).
        w_g: ``(D, 1)`` or ``(D,)``.
        proj_weight, proj_bias: ``(D, D)`` and ``(D,)`` (or ``None``), the ``proj`` linear.
        scale, token_norm, eps, backend: as in :func:`cross_e2a`.

    Returns:
        ``(B, N, D)`` in q's dtype (the autocast dtype under autocast with the Triton backend).
    """
    return _single_stream(q, k, None, w_g, proj_weight, proj_bias, scale, token_norm, eps, backend)


def e2a_packed(
    qk: Tensor,
    w_g: Tensor,
    proj_weight: Tensor,
    proj_bias: Optional[Tensor] = None,
    *,
    qk_bias: Optional[Tensor] = None,
    scale: Optional[float] = None,
    token_norm: str = "l2",
    eps: float = 1e-12,
    backend: str = "auto",
) -> Tensor:
    """:func:`e2a` on q and k packed side by side: ``qk (B, N, 2D)`` with ``q = qk[..., :D]``, ``k = qk[..., D:]``.

    The form one GEMM gives for both input linears (``F.linear(x, cat(W_q, W_k))``): the kernels read q and k
    in place and the backward returns one ``dqk (B, N, 2D)``, so the linear's backward is one GEMM too.
    ``qk_bias (2D,)``, the linears' ``cat(b_q, b_k)``, is added as the kernels load q and k, and its gradient
    summed there: a GEMM on a token view that is not one matrix (``x.flatten(2).transpose(1, 2)``) cannot add
    the bias itself and would take a separate pass over its output. Same math and result as
    ``e2a(q + b_q, k + b_k, ...)`` with ``q, k = qk[..., :D], qk[..., D:]``.
    """
    dim = _packed_width(qk, "(B, N, 2D)", 3)
    return _single_stream(qk[..., :dim], qk[..., dim:], qk, w_g, proj_weight, proj_bias, scale, token_norm, eps, backend,
                          qk_bias)
