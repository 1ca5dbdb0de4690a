"""A stride-1 conv to fewer channels than it reads, as one matmul to every tap's output followed
by shifted sums (G's k x k last layer: 16 channels -> RGB at 64x64).

im2col would build a `[B*H*W, k*k*I]` patch matrix and multiply it by a `[k*k*I, O]` kernel: for
O = 3 that is a copy k*k times the input's size feeding a matmul with three columns, which the
matmul library runs badly. Here each input pixel is multiplied once by all k*k taps'
`[I, O]` kernels (`[B*H*W, I] @ [I, k*k*O]`), and output pixel (h, w) sums tap (dh, dw)'s
product at padded-input pixel (h + dh, w + dw). The data copied is `k*k*O` per pixel rather
than `k*k*I`, so this form applies where O < I. Its custom VJP is the same two steps
transposed: the shifted sums' transpose spreads g back to every tap (`[B*H*W, k*k*O]`), then
one matmul gives dx and one more gives the kernel's gradient.

fwd+bwd of G's 3x3 16 -> 3 layer at 64x64, batch 64, on 2 cores: 62 ms here, 81 ms in XLA's
conv, 195 ms in the im2col form (BENCHMARKS.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from v2f_jax.ops.cpu import dot


def applies(x_shape, kernel_shape, stride: int) -> bool:
    """Whether this form serves the conv: stride 1, a kernel wider than 1x1, fewer output
    channels than input channels (where it copies less than im2col)."""
    k, _, i, o = kernel_shape
    return stride == 1 and k > 1 and o < i


def conv2d(x, kernel, bias, padding: int):
    """PyTorch's stride-1 Conv2d, computed in `x.dtype` with float32 accumulation.

    Args:
      x: `[B, H, W, I]`.
      kernel: `[k, k, I, O]` (its gradient comes back in its dtype).
      bias: `[O]`, added in float32 before rounding to `x.dtype`.
      padding: zero rows/columns added on each side, as PyTorch's.

    Returns:
      `[B, H + 2p - k + 1, W + 2p - k + 1, O]` in `x.dtype`.
    """
    return _conv(x, kernel, bias, padding)


def _tap_matrix(kernel, dtype):
    """`[k, k, I, O]` -> `[I, k*k*O]`, columns ordered (dh, dw, o)."""
    k, _, i, o = kernel.shape
    return kernel.transpose(2, 0, 1, 3).reshape(i, k * k * o).astype(dtype)


def _shifted_sum(z, out_hw):
    """Per-tap products over the padded input `z [B, H+2p, W+2p, k, k, O]` -> the conv's output
    `[B, H', W', O]`: `y[h, w] = sum over (dh, dw) of z[h + dh, w + dw, dh, dw]`."""
    k = z.shape[3]
    out_h, out_w = out_hw
    return sum(z[:, dh : dh + out_h, dw : dw + out_w, dh, dw] for dh in range(k) for dw in range(k))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv(x, kernel, bias, padding):
    return _conv_fwd(x, kernel, bias, padding)[0]


def _conv_fwd(x, kernel, bias, padding):
    # The input is padded rather than the products: k*k times fewer values to pad, and XLA:CPU
    # runs the padded products' shifted sums 4x slower (36 vs 9 ms for G's 3x3 layer).
    xp = _pad(x, padding)
    b, hp, wp, i = xp.shape
    k, o = kernel.shape[0], kernel.shape[3]
    z = dot.mm(xp.reshape(-1, i), _tap_matrix(kernel, x.dtype)).reshape(b, hp, wp, k, k, o)
    y = _shifted_sum(z, (hp - k + 1, wp - k + 1))
    return (y + bias).astype(x.dtype), (xp, kernel, bias)


def _conv_bwd(padding, res, g):
    xp, kernel, bias = res
    b, hp, wp, i = xp.shape
    k, o = kernel.shape[0], kernel.shape[3]
    g = g.astype(xp.dtype)
    z_like = jax.ShapeDtypeStruct((b, hp, wp, k, k, o), g.dtype)
    (g_taps,) = jax.linear_transpose(lambda z: _shifted_sum(z, g.shape[1:3]), z_like)(g)
    g_taps = g_taps.reshape(-1, k * k * o)
    dxp = dot.mm_nt(g_taps, _tap_matrix(kernel, xp.dtype)).astype(xp.dtype)
    dx = dxp.reshape(xp.shape)[:, padding : hp - padding, padding : wp - padding]
    dw = dot.mm_tn(xp.reshape(-1, i), g_taps).reshape(i, k, k, o).transpose(1, 2, 0, 3)
    db = jnp.sum(g.reshape(-1, o).astype(jnp.float32), axis=0)
    return dx, dw.astype(kernel.dtype), db.astype(bias.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _pad(x, padding: int):
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
