"""A conv and a transposed conv in the matmul form (optionally Winograd's), each with its own
custom VJP.

Each conv's backward is the other's forward: a conv's input gradient is the transposed conv of
the output gradient (same kernel, in/out swapped), and a transposed conv's input gradient is
the conv of its output gradient. The kernel gradient is one more 2-D matmul over the patches
already at hand. So every pass is im2col (or col2im) plus 2-D matmuls, and no gradient ever
goes through XLA's convolution or its dilated-input path, which XLA:CPU runs 3-30x slower than
these matmuls (BENCHMARKS.md). Matmul inputs are in the compute dtype; accumulation, bias and
kernel gradients in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from v2f_jax.ops.cpu import dot, im2col, subpixel, winograd


def conv2d(x, kernel, stride: int, padding: int, bias=None, use_winograd: bool = False):
    """PyTorch's Conv2d as matmuls, computed in `x.dtype`.

    Args:
      x: `[B, H, W, I]`.
      kernel: `[k, k, I, O]`, any float dtype (its gradient is returned in that dtype).
      stride, padding: as PyTorch's.
      bias: `[O]` or None; added in float32 before rounding to `x.dtype`.
      use_winograd: take the Winograd form where `winograd.applies`.

    Returns:
      `[B, (H + 2p - k) // s + 1, ..., O]` in `x.dtype`.
    """
    bias = _bias_or_zeros(bias, kernel)
    if use_winograd and winograd.applies(x.shape, x.dtype, kernel.shape, stride, padding):
        return winograd.conv2d(x, kernel, bias)
    return _conv_mm(x, kernel, bias, stride, padding)


def conv_transpose(x, kernel, stride: int, padding: int, bias=None, use_winograd: bool = False):
    """PyTorch's ConvTranspose2d as matmuls, computed in `x.dtype`.

    Args:
      x: `[B, H, W, I]`.
      kernel: `[k, k, I, O]`, PyTorch's un-flipped kernel (`weight.permute(2, 3, 0, 1)`).
      stride, padding: as PyTorch's (no output_padding).
      bias: `[O]` or None; added in float32 before rounding to `x.dtype`.
      use_winograd: take the Winograd form where `winograd.applies`, for the layer or else for
        its input gradient.

    Returns:
      `[B, (H-1)*s - 2p + k, ..., O]` in `x.dtype`.
    """
    k = kernel.shape[0]
    bias = _bias_or_zeros(bias, kernel)
    if use_winograd and winograd.applies(
        x.shape, x.dtype, kernel.shape, stride, padding, transposed=True
    ):
        return winograd.conv_transpose(x, kernel, bias)
    # The input gradient is a conv of the output gradient, which may take the Winograd form
    # where the layer itself does not (G's last 4x4 layer: 64 -> 128 channels).
    out_hw = subpixel.transposed_out_hw(x.shape, k, stride, padding)
    out_shape = (x.shape[0], *out_hw, kernel.shape[3])
    dx_winograd = use_winograd and winograd.applies(
        out_shape, x.dtype, (k, k, kernel.shape[3], kernel.shape[2]), stride, padding
    )
    return _conv_transpose_mm(x, kernel, bias, stride, padding, dx_winograd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_mm(x, kernel, bias, stride, padding):
    return _conv_mm_fwd(x, kernel, bias, stride, padding)[0]


def _conv_mm_fwd(x, kernel, bias, stride, padding):
    y, cols = im2col.conv_fwd(x, kernel, stride, padding)
    return (y + bias).astype(x.dtype), (cols, kernel, bias, x.shape)


def _conv_mm_bwd(stride, padding, res, g):
    cols, kernel, bias, x_shape = res
    o = kernel.shape[-1]
    g = g.astype(cols.dtype)
    # dx: the transposed conv of g with the same kernel (in and out swapped); input rows the
    # strided windows never reached get zero.
    kernel_t = kernel.transpose(0, 1, 3, 2)
    dx, _ = im2col.conv_transpose_fwd(g, kernel_t, stride, padding, x_shape[1:3])
    dw_rows = dot.mm_tn(cols, g.reshape(-1, o))  # cols.T @ g, [k*k*I, O] in patch order
    dw = im2col.unarrange(dw_rows, kernel.shape, stride)
    return dx.astype(cols.dtype), dw.astype(kernel.dtype), _bias_grad(g, bias)


_conv_mm.defvjp(_conv_mm_fwd, _conv_mm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _conv_transpose_mm(x, kernel, bias, stride, padding, dx_winograd=False):
    return _conv_transpose_mm_fwd(x, kernel, bias, stride, padding, dx_winograd)[0]


def _conv_transpose_mm_fwd(x, kernel, bias, stride, padding, dx_winograd=False):
    y, x_cols = im2col.conv_transpose_fwd(x, kernel, stride, padding)
    return (y + bias).astype(x.dtype), (x, x_cols, kernel, bias)


def _conv_transpose_mm_bwd(stride, padding, dx_winograd, res, g):
    x, x_cols, kernel, bias = res
    b, h, w, i = x.shape
    k, o = kernel.shape[0], kernel.shape[-1]
    g = g.astype(x.dtype)
    kernel_t = kernel.transpose(0, 1, 3, 2)  # [k, k, O, I]
    g_cols = None
    if x_cols is None or not dx_winograd:
        g_cols, _ = im2col.patches(g, k, stride, padding)
    # dx: the strided conv of g with the same kernel (in and out swapped).
    if dx_winograd:
        dx = winograd.conv2d(g, kernel_t, jnp.zeros(i, jnp.float32))
    else:
        dx = dot.mm(g_cols, im2col.arrange(kernel_t, stride).astype(x.dtype))
        dx = dx.astype(x.dtype).reshape(b, h, w, i)
    if x_cols is None:
        # col2im form: the output gradient's patches (as for dx) against x.
        dw_rows = dot.mm_tn(g_cols, x.reshape(-1, i))  # [k*k*O, I] in patch order
        dw = im2col.unarrange(dw_rows, kernel_t.shape, stride).transpose(0, 1, 3, 2)
    else:
        # Sub-pixel form: the sub-pixel kernel's gradient over the forward's patches of x, with
        # g laid out as the uncropped sub-pixel output. Its `[n*n*I, s*s*O]` matmul suits the
        # matmul library better than the `[k*k*O, I]` one above (BENCHMARKS.md).
        n = -(-k // stride)
        z_shape = (b, h + n - 1, w + n - 1, stride * stride * o)

        def crop(z):
            return subpixel.crop(subpixel.depth_to_space(z, stride), x.shape, k, stride, padding)

        g_z = _transpose_of(crop, g, z_shape).reshape(-1, z_shape[-1])
        dw_rows = dot.mm_tn(x_cols, g_z)
        dw = _transpose_of(lambda kern: _subpixel_rows(kern, stride), dw_rows, kernel.shape)
    return dx, dw.astype(kernel.dtype), _bias_grad(g, bias)


_conv_transpose_mm.defvjp(_conv_transpose_mm_fwd, _conv_transpose_mm_bwd)


def _subpixel_rows(kernel, stride: int):
    """A transposed conv's kernel `[k, k, I, O]` -> its sub-pixel matmul's `[n*n*I, s*s*O]`."""
    return im2col.arrange(subpixel.subpixel_kernel(kernel, stride)[0], 1)


def _transpose_of(linear_fn, out, in_shape):
    """The transpose of `linear_fn` (layout only: pads, crops, permutations) applied to `out`;
    `in_shape` is `linear_fn`'s input shape."""
    like = jax.ShapeDtypeStruct(in_shape, out.dtype)
    return jax.linear_transpose(linear_fn, like)(out)[0]


def _bias_or_zeros(bias, kernel):
    return jnp.zeros(kernel.shape[-1], jnp.float32) if bias is None else bias


def _bias_grad(g, bias):
    """Sum of `g` over all but its last axis, accumulated in float32, in `bias.dtype`."""
    rows = g.reshape(-1, g.shape[-1]).astype(jnp.float32)
    return jnp.sum(rows, axis=0).astype(bias.dtype)
