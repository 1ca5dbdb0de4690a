"""2-D matmuls with float32 accumulation, in the layouts XLA:CPU's matmul library takes.

`matmul` is the differentiable one the conv forms build on; `mm`, `mm_nt` and `mm_tn` are the
plain dots their custom VJPs call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def matmul(a, w):
    """`a @ w` for `a [M, K]` (compute dtype) and `w [K, N]` (parameter dtype).

    Computed as `lax.dot` of `a` and `w` cast to `a.dtype` with float32 accumulation, returned in
    `a.dtype`. The backward is two 2-D dots of the same kind; `w`'s gradient stays in `w.dtype`.
    """
    return mm(a, w.astype(a.dtype)).astype(a.dtype)


def _matmul_fwd(a, w):
    return matmul(a, w), (a, w)


def _matmul_bwd(res, g):
    a, w = res
    g = g.astype(a.dtype)
    da = mm_nt(g, w.astype(a.dtype)).astype(a.dtype)
    return da, mm_tn(a, g).astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def mm(a, b):
    """`a [M, K] @ b [K, N]` -> float32 `[M, N]`, with float32 accumulation."""
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def mm_nt(a, b):
    """`a [M, K] @ b[N, K].T` -> float32 `[M, N]`."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def mm_tn(a, b):
    """`a[M, K].T @ b [M, N]` -> float32 `[K, N]`.

    Contracting the rows of both is the one form XLA:CPU's matmul library does not take: it
    falls back to XLA's own dot, which is as fast for float32 (faster for these tall operands)
    but computes bfloat16 in float32. So bfloat16 first transposes the operand with fewer
    columns (`_transpose_rows`).
    """
    if a.dtype == jnp.float32 or min(a.shape[1], b.shape[1]) <= 16:
        # (Also for a handful of columns, e.g. RGB: the library matmul is slow with so few.)
        return jax.lax.dot_general(
            a.astype(jnp.float32),
            b.astype(jnp.float32),
            (((0,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
    if b.shape[1] <= a.shape[1]:
        return _small_t(mm(_transpose_rows(b), a))  # (b.T @ a).T
    return mm(_transpose_rows(a), b)


def _transpose_rows(x):
    """`x [M, N].T` for a large `M`, as a matmul with the identity (`I @ x.T`, exact).

    XLA fuses a transpose with its operand's producer and then computes that producer in
    transposed, cache-hostile order (several times slower than the matmul it feeds); the
    library matmul takes `x` as it is in memory. Costs `2*M*N*N` FLOPs (1/8 of the weight
    gradient it serves, for this model's layers).
    """
    eye = jnp.eye(x.shape[1], dtype=x.dtype)
    return mm_nt(eye, x).astype(x.dtype)


def _small_t(x):
    """`x.T` for a small `x` (a weight gradient), written so that XLA cannot fold it into the
    dot that produced `x` (which would undo the layout `mm_tn` chose)."""
    return jnp.pad(x, ((0, 0), (0, 1))).T[: x.shape[1]]
