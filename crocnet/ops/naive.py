"""Pure-PyTorch executable specification of E2A and cross-E2A.

This is the readable reference: the tests' oracle and the CPU path (``backend="torch"``). It follows
SwiftFormer / timm line by line, so autograd through ``F.normalize`` gives exactly their gradients,
including the ``eps`` branches for zero-norm vectors.

Shapes: ``q, k`` are ``(S, B, N, D)`` stacks of S streams (E2A is the case S = 1), ``w_g`` is ``(S, D)``,
``proj_weight`` ``(S, S, D, D)`` (``[s, t]`` maps the keys of stream t into stream s), ``proj_bias``
``(S, S, D)`` or ``None``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TOKEN_NORMS = ("l2", "softmax", "none")


def token_weights(a: torch.Tensor, token_norm: str, eps: float) -> torch.Tensor:
    """Normalise the token scores ``a (..., N, 1)`` over the token axis."""
    if token_norm == "l2":
        return F.normalize(a, dim=-2, eps=eps)
    if token_norm == "softmax":
        return torch.softmax(a, dim=-2)
    if token_norm == "none":
        return torch.ones_like(a)
    raise ValueError(f"token_norm must be one of {TOKEN_NORMS}, got {token_norm!r}")


def global_query(q_hat: torch.Tensor, w_g: torch.Tensor, scale: float, token_norm: str, eps: float) -> torch.Tensor:
    """``G = Σ_n â_n q̂_n`` with ``a_n = scale · q̂_n·w_g``: ``q_hat (..., N, D)``, ``w_g (D,)`` → ``(..., 1, D)``."""
    a = (q_hat @ w_g.reshape(-1, 1)) * scale
    a_hat = token_weights(a, token_norm, eps)
    return torch.sum(a_hat * q_hat, dim=-2, keepdim=True)


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
    # unbind, not indexing: its backward stacks the streams' gradients once, where each ``q_hat[s]`` would
    # allocate and zero-fill a gradient of the whole stack
    q_hat = F.normalize(q, dim=-1, eps=eps).unbind(0)
    k_hat = F.normalize(k, dim=-1, eps=eps).unbind(0)
    streams = q.shape[0]
    out = []
    for s in range(streams):
        g = global_query(q_hat[s], w_g[s], scale, token_norm, eps)
        y = q_hat[s]
        for t in range(streams):
            bias = None if proj_bias is None else proj_bias[s, t]
            y = y + F.linear(g * k_hat[t], proj_weight[s, t], bias)
        out.append(y)
    return torch.stack(out)


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
    q_hat = F.normalize(q, dim=-1, eps=eps)
    k_hat = F.normalize(k, dim=-1, eps=eps)
    g = global_query(q_hat, w_g, scale, token_norm, eps)
    return F.linear(g * k_hat, proj_weight, proj_bias) + q_hat
