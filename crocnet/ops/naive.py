"""Pure-PyTorch executable specification of E2A and cross-E2A.

This is the readable reference: the tests' oracle and the CPU path (``backend="torch"``). It follows
SwiftFormer / timm line by line, so autograd through ``F.normalize`` gives exactly their gradients,
including the ``eps`` branches for zero-norm vectors. One departure, as in the kernels: norms of float16 and
bfloat16 tensors are computed in float32 (:func:`normalize`).

Shapes: ``q, k`` are ``(S, B, N, D)`` stacks of S streams (E2A is the case S = 1), ``w_g`` is ``(S, D)``,
``proj_weight`` ``(S, S, D, D)`` (``[s, t]`` maps the keys of stream t into stream s), ``proj_bias``
``(S, S, D)`` or ``None``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

TOKEN_NORMS = ("l2", "softmax", "none")
_HALF = (torch.float16, torch.bfloat16)


def normalize(x: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """``F.normalize``, computed in float32 for float16/bfloat16 inputs and returned in their dtype: in
    float16 the default eps 1e-12 is 0, so a zero vector would give 0/0 = NaN (timm's module does that), and
    a sum of squares over many tokens can overflow."""
    if x.dtype in _HALF:
        return F.normalize(x.float(), dim=dim, eps=eps).to(x.dtype)
    return F.normalize(x, dim=dim, eps=eps)


def token_weights(a: torch.Tensor, token_norm: str, eps: float) -> torch.Tensor:
    """Normalise the token scores ``a (..., N, 1)`` over the token axis."""
    if token_norm == "l2":
        return normalize(a, dim=-2, eps=eps)
    if token_norm == "softmax":
        return torch.softmax(a, dim=-2)
    if token_norm == "none":
        return torch.ones_like(a)
    raise ValueError(f"token_norm must be one of {TOKEN_NORMS}, got {token_norm!r}")


def global_query(q_hat: torch.Tensor, w_g: torch.Tensor, scale: float, token_norm: str, eps: float) -> torch.Tensor:
    """``G = Σ_n â_n q̂_n`` with ``a_n = scale · q̂_n·w_g``: ``q_hat (..., N, D)``, ``w_g (D,)`` → ``(..., 1, D)``.

    The scores are made and normalised in float32 for float16/bfloat16 inputs (as the kernels do): scores
    that are all 0 (``w_g = 0`` or ``scale = 0``) have the gradient ``dâ / eps``, which is inf in float16 and
    made every ``dq`` NaN (``inf · 0``) where the true one is finite."""
    if q_hat.dtype in _HALF:
        with torch.autocast(q_hat.device.type, enabled=False):  # autocast would cast the float32 matmul back
            a = (q_hat.float() @ w_g.float().reshape(-1, 1)) * scale
            a_hat = token_weights(a, token_norm, eps).to(q_hat.dtype)
    else:
        a = (q_hat @ w_g.reshape(-1, 1)) * scale
        a_hat = token_weights(a, token_norm, eps)
    return torch.sum(a_hat * q_hat, dim=-2, keepdim=True)


def cross_e2a_streams(
    qs: Sequence[torch.Tensor],
    ks: Sequence[torch.Tensor],
    w_gs: Sequence[torch.Tensor],
    proj_weights: Sequence[Sequence[torch.Tensor]],
    proj_biases: Sequence[Sequence[torch.Tensor | None]] | None,
    scale: float,
    token_norm: str = "l2",
    eps: float = 1e-12,
) -> list[torch.Tensor]:
    """The S-stream spec on per-stream tensors, as the authors write it: ``qs[s], ks[s]`` ``(B, N, D)``,
    ``w_gs[s]`` ``(D,)``, ``proj_weights[s][t]`` ``(D, D)``, ``proj_biases[s][t]`` ``(D,)`` (or ``None``);
    returns the S outputs ``y_s = Σ_t proj_{s,t}(G_s ⊙ k̂_t) + q̂_s``, each ``(B, N, D)``.

    Nothing is stacked: modules that hold one tensor per stream call this on the PyTorch path, where
    stacking the streams' activations for :func:`cross_e2a_naive` would copy each of them once more.
    """
    q_hat = [normalize(q, dim=-1, eps=eps) for q in qs]
    k_hat = [normalize(k, dim=-1, eps=eps) for k in ks]
    out = []
    for s in range(len(qs)):
        g = global_query(q_hat[s], w_gs[s], scale, token_norm, eps)
        y = q_hat[s]
        for t in range(len(ks)):
            bias = None if proj_biases is None else proj_biases[s][t]
            y = y + F.linear(g * k_hat[t], proj_weights[s][t], bias)
        out.append(y)
    return out


def cross_e2a_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    w_g: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor | None,
    scale: float,
    token_norm: str = "l2",
    eps: float = 1e-12,
) -> torch.Tensor:
    """``y_s = Σ_t proj_{s,t}(G_s ⊙ k̂_t) + q̂_s`` for every stream s; returns ``(S, B, N, D)``."""
    # unbind, not indexing: its backward stacks the streams' gradients once, where each ``q[s]`` would
    # allocate and zero-fill a gradient of the whole stack
    biases = None if proj_bias is None else [row.unbind(0) for row in proj_bias.unbind(0)]
    ys = cross_e2a_streams(q.unbind(0), k.unbind(0), w_g.unbind(0), [row.unbind(0) for row in proj_weight.unbind(0)],
                           biases, scale, token_norm, eps)
    return torch.stack(ys)


def e2a_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    w_g: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor | None,
    scale: float,
    token_norm: str = "l2",
    eps: float = 1e-12,
) -> torch.Tensor:
    """``y = proj(G ⊙ k̂) + q̂`` for ``q, k (B, N, D)``, exactly as timm's ``EfficientAdditiveAttention``."""
    q_hat = normalize(q, dim=-1, eps=eps)
    k_hat = normalize(k, dim=-1, eps=eps)
    g = global_query(q_hat, w_g, scale, token_norm, eps)
    return F.linear(g * k_hat, proj_weight, proj_bias) + q_hat
