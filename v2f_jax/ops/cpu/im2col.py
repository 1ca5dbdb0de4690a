"""Convolutions as 2-D matmuls: im2col for a conv, col2im (PyTorch's) or the sub-pixel conv for
a transposed conv, and E's 1-D conv (`conv1d_matmul`).

The forward passes here return float32; `matmul_conv` wraps them with the custom VJPs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from v2f_jax.ops.cpu import dot, subpixel

# transpose_form: the sub-pixel form's extra work above which the col2im form is used.
_COL2IM_ABOVE = 1.15


def conv_fwd(x, kernel, stride: int, padding: int):
    """conv2d in the matmul form.

    Args:
      x: `[B, H, W, I]` in the compute dtype.
      kernel: `[k, k, I, O]`, cast to `x.dtype` for the matmul.
      stride, padding: as PyTorch's.

    Returns:
      `(y, cols)`: float32 `y [B, Ho, Wo, O]` (no bias) and the patches `[B*Ho*Wo, k*k*I]`.
    """
    k, o = kernel.shape[0], kernel.shape[-1]
    cols, (out_h, out_w) = patches(x, k, stride, padding)
    y = dot.mm(cols, arrange(kernel, stride).astype(x.dtype))
    return y.reshape(x.shape[0], out_h, out_w, o), cols


def conv_transpose_fwd(x, kernel, stride: int, padding: int, out_hw=None):
    """The transposed conv in the cheaper matmul form for this input (`transpose_form`).

    Args:
      x: `[B, H, W, I]` in the compute dtype.
      kernel: `[k, k, I, O]`, PyTorch's un-flipped kernel.
      stride, padding: as PyTorch's.
      out_hw: `(height, width)` of the output, default PyTorch's. A larger one extends the
        output on the bottom/right, with zeros past the uncropped output: a strided conv's input
        gradient when its windows skip the last rows.

    Returns:
      `(y, x_cols)`: float32 `y [B, out_h, out_w, O]` (no bias) and the sub-pixel form's patches
      of `x` (None in the col2im form).
    """
    b, h, w, i = x.shape
    k, o, s = kernel.shape[0], kernel.shape[-1], stride
    n = -(-k // s)
    x_cols = None
    if transpose_form(h, w, k, s) == "subpixel":
        sub, n = subpixel.subpixel_kernel(kernel, s)
        xp = jnp.pad(x, ((0, 0), (n - 1, n - 1), (n - 1, n - 1), (0, 0)))
        z, x_cols = conv_fwd(xp, sub, 1, 0)
    else:
        # col2im: every input pixel times the whole kernel, then the uncropped output pixel
        # s*(m+t) + r gets cols[m, t, r]: n*n shifted adds.
        padded = jnp.pad(kernel, ((0, s * n - k), (0, s * n - k), (0, 0), (0, 0)))
        w2 = padded.transpose(2, 0, 1, 3).reshape(i, -1).astype(x.dtype)
        cols = dot.mm(x.reshape(b * h * w, i), w2).reshape(b, h, w, n, s, n, s, o)
        z = sum(
            jnp.pad(
                cols[:, :, :, th, :, tw],
                ((0, 0), (th, n - 1 - th), (tw, n - 1 - tw), (0, 0), (0, 0), (0, 0)),
            )
            for th in range(n)
            for tw in range(n)
        )
        z = z.reshape(b, h + n - 1, w + n - 1, s * s * o)
    y = subpixel.crop(subpixel.depth_to_space(z, s), x.shape, k, s, padding, out_hw)
    return y, x_cols


def transpose_form(h: int, w: int, k: int, stride: int) -> str:
    """Which matmul form a transposed conv over an `h x w` input takes: "col2im" or "subpixel".

    The sub-pixel form computes `(h+n-1)(w+n-1)` positions for `h*w` inputs (`n = ceil(k/s)`):
    56% extra work for G's 4x4 -> 8x8 layer, 6% for its 32x32 -> 64x64 one. The col2im form
    (PyTorch's) does exactly the work but writes `k*k/s**2` times the layer's output and
    overlap-adds it; it wins on small inputs.
    """
    n = -(-k // stride)
    extra = (h + n - 1) * (w + n - 1) / (h * w)
    return "col2im" if extra > _COL2IM_ABOVE else "subpixel"


def patches(x, k: int, stride: int, padding: int):
    """im2col: `x [B, H, W, C]` -> `(patches [B*Ho*Wo, k*k*C], (Ho, Wo))`.

    Column order is `arrange(kernel, stride)`'s row order.
    """
    s = stride
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    b, h, w, c = x.shape
    out_h, out_w = (h - k) // s + 1, (w - k) // s + 1
    if _space_to_depth(k, s):
        # A k x k stride-s conv is an n x n stride-1 conv over s*s*C channels (n = k/s): n*n
        # slices instead of k*k, and the same kernel with its rows permuted.
        n = k // s
        return patches(to_depth(x[:, : s * (out_h + n - 1), : s * (out_w + n - 1)], s), n, 1, 0)
    if k == 1:
        cols = x[:, : s * (out_h - 1) + 1 : s, : s * (out_w - 1) + 1 : s]
    elif (out_h, out_w) == (1, 1) and (h, w) == (k, k):
        cols = x  # the window is the whole input
    else:
        # Stacked on a new axis, not concatenated: the same bytes, but XLA:CPU emits a
        # concatenate along the minor dimension several times slower.
        cols = jnp.stack(
            [
                x[:, dh : dh + s * (out_h - 1) + 1 : s, dw : dw + s * (out_w - 1) + 1 : s]
                for dh in range(k)
                for dw in range(k)
            ],
            axis=-2,
        )
    return cols.reshape(b * out_h * out_w, k * k * c), (out_h, out_w)


def arrange(kernel, stride: int):
    """A kernel `[k, k, C, O]` -> `[k*k*C, O]`, rows in `patches`' column order."""
    k, _, c, o = kernel.shape
    s = stride
    if _space_to_depth(k, s):
        n = k // s  # rows (dh, dw, sh, sw, c) where kh = s*dh + sh
        return kernel.reshape(n, s, n, s, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(-1, o)
    return kernel.reshape(k * k * c, o)


def unarrange(rows, kernel_shape, stride: int):
    """The inverse of `arrange`: `[k*k*C, O]` -> `kernel_shape` (a permutation, so its
    transpose)."""
    like = jax.ShapeDtypeStruct(kernel_shape, rows.dtype)
    return jax.linear_transpose(lambda kern: arrange(kern, stride), like)(rows)[0]


def to_depth(x, s: int):
    """Space-to-depth: `[B, s*H, s*W, C]` -> `[B, H, W, s*s*C]`, channels `(sh, sw, c)`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // s, w // s, s * s * c)


def _space_to_depth(k: int, s: int) -> bool:
    """Whether a `k x k` stride-`s` conv's patches are taken after space-to-depth."""
    return s > 1 and k % s == 0


def conv1d_matmul(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, **unused
):
    """`lax.conv_general_dilated` for flax's 1-D `nn.Conv` as im2col and one 2-D `matmul`.

    bfloat16 inputs reach the CPU's bf16 dot with float32 accumulation, where XLA:CPU runs
    bf16 convolutions in float32. Plugged into `nn.Conv(conv_general_dilated=...)`, so E's
    parameters keep their layout.

    Args:
      lhs: `[B, T, C]`.
      rhs: `[k, C, O]`.
      window_strides: `(stride,)`.
      padding: `((lo, hi),)`.
      lhs_dilation, rhs_dilation: None or all ones.
      **unused: flax's `dimension_numbers` (NWC/WIO), `feature_group_count` (1), `precision`.

    Returns:
      `[B, (T + lo + hi - k) // stride + 1, O]` in `lhs.dtype`.
    """
    del unused
    if any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
        raise ValueError("conv1d_matmul: no dilation")
    (stride,), ((lo, hi),) = window_strides, padding
    k, c, out = rhs.shape
    x = jnp.pad(lhs, ((0, 0), (lo, hi), (0, 0)))
    b, t = x.shape[:2]
    out_t = (t - k) // stride + 1
    cols = jnp.stack([x[:, d : d + stride * (out_t - 1) + 1 : stride] for d in range(k)], axis=-2)
    y = dot.matmul(cols.reshape(b * out_t, k * c), rhs.reshape(k * c, out))
    return y.reshape(b, out_t, out)
