"""Winograd's F(2x2, 2x2) for 4x4 stride-2 padding-1 convs and transposed convs.

After space-to-depth a 4x4 stride-2 conv is a 2x2-tap stride-1 correlation, and each of the
four output phases of a 4x4 stride-2 transposed conv is one too. Winograd's F(2, 2) gives two
outputs of a 2-tap correlation, y0 = x0 w0 + x1 w1 and y1 = x1 w0 + x2 w1, from three products:
    m = (x0 - x1) w0,  x1 (w0 + w1),  (x2 - x1) w1;   y0 = m0 + m1,  y1 = m1 + m2.
Applied along rows and columns, a 2x2 output tile takes 9 products instead of 16, each a
`[tiles, C] @ [C, O]` matmul. The gradients are JAX's autodiff of these linear maps around
`dot.matmul`, so they are Winograd-shaped as well (9/16 of the products).

The transforms add and subtract only, so the form rounds like the plain conv (tested to 1e-5).
It replaces one wide matmul by nine narrower ones, which pays in float32 but not in bfloat16 on
CPU (bfloat16 matmuls with few channels are bound by memory); `applies` says where it is taken.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from v2f_jax.ops.cpu import dot, im2col

# The largest transposed-conv input side for which the form pays (float32, CPU): G's 4x4, 8x8
# and 16x16 layers run faster, its 32x32 one no faster (BENCHMARKS.md).
_TRANSPOSE_MAX_SIDE = 16
# Fewer channels than these keep the matmul form (see `applies`).
_CONV_MIN_IN = 16
_MIN_OUT = 64


def applies(x_shape, dtype, kernel_shape, stride, padding, transposed=False) -> bool:
    """Whether the "winograd" forms compute this layer in the Winograd form.

    4x4 stride-2 padding-1 layers in float32 only; every output phase must tile by 2x2 (a conv's
    input sides a multiple of 4, a transposed conv's even). Where it was measured slower (CPU,
    float32, forward and backward): a transposed conv on inputs over `_TRANSPOSE_MAX_SIDE`
    (G's last layer: few channels make the nine matmuls memory-bound) and a conv over fewer than
    `_CONV_MIN_IN` channels keep the matmul form. So do layers with fewer than `_MIN_OUT`
    output channels: the form compiles to nine matmuls per phase (the full wen2019 step compiles
    several times slower), which the small configs' layers do not earn back.

    Args:
      x_shape: the input's `[B, H, W, I]`.
      dtype: the compute dtype.
      kernel_shape: `[k, k, I, O]` (a transposed conv's un-flipped kernel).
      stride, padding: as PyTorch's.
      transposed: whether the layer is a transposed conv.
    """
    if (kernel_shape[0], kernel_shape[1], stride, padding) != (4, 4, 2, 1):
        return False
    if dtype != jnp.float32 or kernel_shape[3] < _MIN_OUT:
        return False
    sides = x_shape[1:3]
    if transposed:
        return all(n % 2 == 0 and n <= _TRANSPOSE_MAX_SIDE for n in sides)
    return all(n % 4 == 0 for n in sides) and kernel_shape[2] >= _CONV_MIN_IN


def conv2d(x, kernel, bias):
    """conv2d, 4x4 stride 2 padding 1: space-to-depth turns it into a 2x2 correlation.

    Args:
      x: `[B, H, W, I]`, `H` and `W` multiples of 4.
      kernel: `[4, 4, I, O]`.
      bias: float32 `[O]`, added before rounding to `x.dtype`.

    Returns:
      `[B, H/2, W/2, O]` in `x.dtype`.
    """
    c, o = kernel.shape[2:]
    xs = im2col.to_depth(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), 2)
    taps = im2col.arrange(kernel, 2).reshape(2, 2, 4 * c, o)
    return (_corr2x2(xs, taps) + bias).astype(x.dtype)


def conv_transpose(x, kernel, bias):
    """conv_transpose, 4x4 stride 2 padding 1, one 2x2 correlation per output phase.

    Along one axis, output `2q + r` is `xp[q + r] k[3 - r] + xp[q + r + 1] k[1 - r]` over `x`
    padded by one (`xp`): phase `r` correlates `xp[r : r + H + 1]` with taps `k[3 - r], k[1 - r]`.

    Args:
      x: `[B, H, W, I]`, `H` and `W` even.
      kernel: `[4, 4, I, O]`, PyTorch's un-flipped kernel.
      bias: float32 `[O]`, added before rounding to `x.dtype`.

    Returns:
      `[B, 2H, 2W, O]` in `x.dtype`.
    """
    b, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    phases = [
        jnp.stack(
            [
                _corr2x2(
                    xp[:, rh : rh + h + 1, rw : rw + w + 1],
                    kernel[3 - rh :: -2, 3 - rw :: -2],  # taps k[3 - r], k[1 - r]
                )
                for rw in range(2)
            ],
            axis=3,
        )
        for rh in range(2)
    ]
    y = jnp.stack(phases, axis=2)  # [B, H, 2 (rh), W, 2 (rw), O]
    return (y.reshape(b, 2 * h, 2 * w, -1) + bias).astype(x.dtype)


def _corr2x2(x, taps):
    """Valid correlation of `x [B, 2T+1, 2U+1, C]` with `taps [2, 2, C, O]` -> `[B, 2T, 2U, O]`
    in `x.dtype`."""
    b, h, w, c = x.shape
    t, u = (h - 1) // 2, (w - 1) // 2
    data = [d.reshape(b * t * u, c) for r in _data(x, 1) for d in _data(r, 2)]
    kernels = [q for r in _taps(taps[0], taps[1]) for q in _taps(r[0], r[1])]
    m = [dot.matmul(d, q).reshape(b, t, u, -1) for d, q in zip(data, kernels)]  # 3*row + col
    by_row = [_sums(*m[3 * i : 3 * i + 3]) for i in range(3)]  # [i][output col j]
    tile = [_sums(*(by_row[i][j] for i in range(3))) for j in range(2)]  # [j][row i]
    out = jnp.stack([jnp.stack([tile[0][i], tile[1][i]], axis=3) for i in range(2)], axis=2)
    return out.reshape(b, 2 * t, 2 * u, -1)  # from [B, T, 2 (row i), U, 2 (col j), O]


def _data(x, axis: int):
    """`(x0 - x1, x1, x2 - x1)` for the overlapping triples `(2t, 2t+1, 2t+2)` along `axis`."""
    n = (x.shape[axis] - 1) // 2

    def every_other(start):
        return jax.lax.slice_in_dim(x, start, start + 2 * n - 1, 2, axis)

    x0, x1, x2 = every_other(0), every_other(1), every_other(2)
    return x0 - x1, x1, x2 - x1


def _taps(w0, w1):
    return w0, w0 + w1, w1


def _sums(m0, m1, m2):
    return m0 + m1, m1 + m2
