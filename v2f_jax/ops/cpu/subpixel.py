"""The sub-pixel form of a strided transposed conv, and the output layout it shares with the
matmul forms (depth-to-space, PyTorch's crop).

A transposed conv with stride `s` is one stride-1 conv producing the `s*s` phases of its output
as channels, then depth-to-space: no multiplications by the zeros of a stride-dilated input, and
no gradient through a dilated input, which XLA:CPU runs 20-30x slower (BENCHMARKS.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_DIMS = ("NHWC", "HWIO", "NHWC")


def conv_transpose(x, kernel, stride: int, padding: int, bias=None):
    """PyTorch's ConvTranspose2d as an XLA stride-1 conv and depth-to-space, in `x.dtype`.

    Args:
      x: `[B, H, W, I]`.
      kernel: `[k, k, I, O]`, PyTorch's un-flipped kernel.
      stride, padding: as PyTorch's (no output_padding).
      bias: `[O]` or None, added in `x.dtype`.

    Returns:
      `[B, (H-1)*s - 2p + k, ..., O]` in `x.dtype`.
    """
    k = kernel.shape[0]
    sub, n = subpixel_kernel(kernel, stride)
    xp = jnp.pad(x, ((0, 0), (n - 1, n - 1), (n - 1, n - 1), (0, 0)))
    z = jax.lax.conv_general_dilated(
        xp, sub.astype(x.dtype), (1, 1), ((0, 0), (0, 0)), dimension_numbers=_DIMS
    )
    y = crop(depth_to_space(z, stride), x.shape, k, stride, padding)
    return y if bias is None else y + bias.astype(x.dtype)


def subpixel_kernel(kernel, stride: int):
    """A transposed conv's kernel `[k, k, I, O]` -> the sub-pixel conv's `[n, n, I, s*s*O]`.

    The uncropped output pixel `s*m + r` sums `x[m - t] * kernel[s*t + r]` over taps `t < n`,
    `n = ceil(k / s)`: per phase `r`, a stride-1 correlation with `n` taps over `x` padded by
    `n - 1`. Output channel `(rh, rw, o)` is phase `(rh, rw)` of channel `o`; tap `(dh, dw)` is
    `kernel[s*(n-1-dh) + rh, s*(n-1-dw) + rw]` (zero past `k`). Returns `(sub_kernel, n)`.
    """
    k, _, i, o = kernel.shape
    s = stride
    n = -(-k // s)
    padded = jnp.pad(kernel, ((0, s * n - k), (0, s * n - k), (0, 0), (0, 0)))
    sub = padded.reshape(n, s, n, s, i, o)[::-1, :, ::-1]  # [dh, rh, dw, rw, I, O]
    sub = sub.transpose(0, 2, 4, 1, 3, 5)  # [dh, dw, I, rh, rw, O]
    return sub.reshape(n, n, i, s * s * o), n


def depth_to_space(z, s: int):
    """`[B, H, W, s*s*O]` (channels `(rh, rw, o)`) -> `[B, s*H, s*W, O]`."""
    b, h, w, _ = z.shape
    z = z.reshape(b, h, w, s, s, -1).transpose(0, 1, 3, 2, 4, 5)
    return z.reshape(b, h * s, w * s, -1)


def transposed_out_hw(x_shape, k: int, s: int, p: int):
    """PyTorch's ConvTranspose2d output `(height, width)` for an input `[B, H, W, C]`."""
    return tuple((n - 1) * s - 2 * p + k for n in x_shape[1:3])


def crop(full, x_shape, k: int, s: int, p: int, out_hw=None):
    """Rows and columns `[p, p + out)` of the uncropped output `full [B, H', W', O]`, zero past
    its end; `out` is `out_hw`, default PyTorch's output size for an input of `x_shape`."""
    out_h, out_w = out_hw or transposed_out_hw(x_shape, k, s, p)
    extra_h, extra_w = max(0, p + out_h - full.shape[1]), max(0, p + out_w - full.shape[2])
    if extra_h or extra_w:
        full = jnp.pad(full, ((0, 0), (0, extra_h), (0, extra_w), (0, 0)))
    return full[:, p : p + out_h, p : p + out_w]
