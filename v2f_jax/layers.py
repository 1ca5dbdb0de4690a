"""Convolution layers with the reference's (PyTorch's) semantics, in channels-last layout.

Parameters are stored so that a PyTorch state dict converts by a plain transpose (see
`export.py`): a transposed convolution keeps PyTorch's un-flipped kernel as `[kh, kw, in, out]`.
Each layer computes either the plain form or an exactly equivalent faster form selected by `impl`;
the parameter layout is the same for every impl, and so are the numbers (to float rounding):

- `"reference"`: `lax.conv_general_dilated`; a transposed conv is a conv over the stride-dilated
  input with the flipped kernel (what autodiff of a strided conv gives).
- `"subpixel"`: a strided transposed conv as one stride-1 conv producing `stride**2` phases of the
  output as channels, then depth-to-space (no multiplications by the dilation's zeros, and no
  gradient through a dilated input, which XLA:CPU runs 20-30x slower). Plain convs as reference.
- `"matmul"`: every conv and transposed conv as 2-D matmuls `[rows, k] @ [k, n]`, with a custom
  VJP per layer: a conv is im2col (space-to-depth first when strided) + matmul; a transposed conv
  is either the sub-pixel conv above in this form or, on small inputs where that wastes work,
  PyTorch's col2im (`x @ kernel`, then overlap-add). Each one's input gradient is the other one's
  forward (a conv's is a transposed conv of the output gradient, and back), and the kernel's
  gradient is one more matmul over the same patches. Matmul inputs are in the compute dtype,
  accumulation, bias and kernel gradients in float32. On XLA:CPU this is what reaches the
  matmul library (YNNPACK) and, for bfloat16, its bf16 dot-product instructions: XLA:CPU runs
  convolution gradients 3-30x slower and bf16 convolutions in float32.
- `"winograd"`: "matmul", except that float32 4x4 stride-2 convs and transposed convs (where
  `winograd_applies`: enough channels, transposed inputs up to 16x16) use Winograd's
  F(2x2, 2x2): 9 products per 2x2 output tile instead of 16. A transposed conv outside it
  still takes it for its input gradient where that conv qualifies (G's last 4x4 layer).
  Its transforms add and subtract only, so it rounds like the plain form (tested to 1e-5); it
  replaces one wide matmul by nine narrower ones, which pays in float32 but not in bfloat16 on
  CPU (bfloat16 matmuls with few channels are bound by memory; BENCHMARKS.md).
- `"auto"`: `resolve_impl` picks per backend: "winograd" on CPU (measured, BENCHMARKS.md);
  "reference" elsewhere (GPU/TPU conv libraries handle these layers; not measured here).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
_DIMS = ("NHWC", "HWIO", "NHWC")
IMPLS = ("reference", "subpixel", "matmul", "winograd")
# Measured on CPU (BENCHMARKS.md). Other backends keep the plain forms until measured there.
_AUTO = {"cpu": "winograd"}
# The largest transposed-conv input side for which the Winograd form pays (float32, CPU): G's
# 4x4, 8x8 and 16x16 layers run 1.1-1.25x faster, its 32x32 one no faster.
_WINOGRAD_TRANSPOSE_MAX_SIDE = 16
# Fewer channels than these keep the matmul form (see `winograd_applies`).
_WINOGRAD_CONV_MIN_IN = 16
_WINOGRAD_MIN_OUT = 64
# transpose_form: the sub-pixel form's extra work above which the col2im form is used.
_COL2IM_ABOVE = 1.15


def resolve_impl(impl: str, backend: str | None = None) -> str:
    """`"auto"` -> the fastest exact form on `backend` (default: JAX's default backend)."""
    if impl == "auto":
        return _AUTO.get(backend or jax.default_backend(), "reference")
    if impl not in IMPLS:
        raise ValueError(f"config.model.impl must be 'auto' or one of {IMPLS}, not {impl!r}")
    return impl


class ConvTranspose2d(nn.Module):
    """PyTorch's `ConvTranspose2d(in, features, kernel, stride, padding)`.

    Input `[B, H, W, in]`, output `[B, (H-1)*stride - 2*padding + kernel, ..., features]`.
    """

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dtype: Dtype = jnp.float32
    impl: str = "reference"

    @nn.compact
    def __call__(self, x):
        # PyTorch's default init: kaiming-uniform(a=sqrt(5)) over fan_in = out*k*k for ConvT.
        kernel, bias = _kernel_and_bias(self, x.shape[-1], self.features)
        return conv_transpose(
            x.astype(self.dtype),
            kernel,
            self.stride,
            self.padding,
            resolve_impl(self.impl),
            bias=bias,
        )


class Conv2d(nn.Module):
    """PyTorch's `Conv2d(in, features, kernel, stride, padding)` on `[B, H, W, C]`."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dtype: Dtype = jnp.float32
    impl: str = "reference"

    @nn.compact
    def __call__(self, x):
        kernel, bias = _kernel_and_bias(self, x.shape[-1], x.shape[-1])
        return conv2d(
            x.astype(self.dtype),
            kernel,
            self.stride,
            self.padding,
            resolve_impl(self.impl),
            bias=bias,
        )


def _kernel_and_bias(layer: nn.Module, in_features: int, fan_channels: int):
    """float32 `kernel [k, k, in, out]` and `bias [out]`, U(+-1/sqrt(fan_channels * k * k))."""
    k = layer.kernel
    init = _uniform(1.0 / jnp.sqrt(fan_channels * k * k))
    kernel = layer.param("kernel", init, (k, k, in_features, layer.features), jnp.float32)
    bias = layer.param("bias", init, (layer.features,), jnp.float32)
    return kernel, bias


def conv2d(x, kernel, stride: int, padding: int, impl: str, bias=None):
    """Cross-correlation as PyTorch's Conv2d, computed in `x.dtype`.

    Args:
      x: `[B, H, W, I]`.
      kernel: `[k, k, I, O]`, any float dtype (the matmul form returns its gradient in that dtype).
      stride, padding: as PyTorch's.
      impl: "reference", "subpixel" (the same as reference for a plain conv), "matmul" or
        "winograd".
      bias: `[O]` or None. The matmul form adds it in float32 before rounding to `x.dtype`.

    Returns:
      `[B, (H + 2p - k) // s + 1, ..., O]` in `x.dtype`.
    """
    if impl in ("reference", "subpixel"):
        y = jax.lax.conv_general_dilated(
            x,
            kernel.astype(x.dtype),
            window_strides=(stride, stride),
            padding=((padding, padding), (padding, padding)),
            dimension_numbers=_DIMS,
        )
        return y if bias is None else y + bias.astype(x.dtype)
    if impl == "winograd" and winograd_applies(x.shape, x.dtype, kernel.shape, stride, padding):
        return _conv_winograd(x, kernel, _bias_or_zeros(bias, kernel))
    if impl in ("matmul", "winograd"):
        return _conv_mm(x, kernel, _bias_or_zeros(bias, kernel), stride, padding)
    raise ValueError(f"unknown conv impl {impl!r}")


def conv_transpose(x, kernel, stride: int, padding: int, impl: str, bias=None):
    """PyTorch's ConvTranspose2d, computed in `x.dtype`.

    Args:
      x: `[B, H, W, I]`.
      kernel: `[k, k, I, O]`, PyTorch's un-flipped kernel (`weight.permute(2, 3, 0, 1)`).
      stride, padding: as PyTorch's (no output_padding).
      impl: "reference", "subpixel", "matmul" or "winograd".
      bias: `[O]` or None. The matmul form adds it in float32 before rounding to `x.dtype`.

    Returns:
      `[B, (H-1)*s - 2p + k, ..., O]` in `x.dtype`.
    """
    k = kernel.shape[0]
    if impl == "winograd" and winograd_applies(
        x.shape, x.dtype, kernel.shape, stride, padding, transposed=True
    ):
        return _conv_transpose_winograd(x, kernel, _bias_or_zeros(bias, kernel))
    if impl in ("matmul", "winograd"):
        # The input gradient is a conv of the output gradient, which may take the Winograd form
        # where the layer itself does not (G's last 4x4 layer: 64 -> 128 channels).
        out_shape = (x.shape[0], *_transposed_out_hw(x.shape, k, stride, padding), kernel.shape[3])
        dx_winograd = impl == "winograd" and winograd_applies(
            out_shape, x.dtype, (k, k, kernel.shape[3], kernel.shape[2]), stride, padding
        )
        bias = _bias_or_zeros(bias, kernel)
        return _conv_transpose_mm(x, kernel, bias, stride, padding, dx_winograd)
    if bias is not None:
        return conv_transpose(x, kernel, stride, padding, impl) + bias.astype(x.dtype)
    if impl == "reference":
        # A transposed conv is a conv over the stride-dilated input with the flipped kernel.
        edge = k - 1 - padding
        return jax.lax.conv_general_dilated(
            x,
            kernel[::-1, ::-1].astype(x.dtype),
            window_strides=(1, 1),
            padding=((edge, edge), (edge, edge)),
            lhs_dilation=(stride, stride),
            dimension_numbers=_DIMS,
        )
    if impl == "subpixel":
        sub, n = subpixel_kernel(kernel, stride)
        xp = jnp.pad(x, ((0, 0), (n - 1, n - 1), (n - 1, n - 1), (0, 0)))
        z = jax.lax.conv_general_dilated(
            xp, sub.astype(x.dtype), (1, 1), ((0, 0), (0, 0)), dimension_numbers=_DIMS
        )
        return _crop(_depth_to_space(z, stride), x.shape, k, stride, padding)
    raise ValueError(f"unknown conv-transpose impl {impl!r}")


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


def transpose_form(h: int, w: int, k: int, stride: int) -> str:
    """Which matmul form a transposed conv over an `h x w` input takes.

    The sub-pixel form computes `(h+n-1)(w+n-1)` positions for `h*w` inputs (`n = ceil(k/s)`):
    56% extra work for G's 4x4 -> 8x8 layer, 6% for its 32x32 -> 64x64 one. The col2im form
    (PyTorch's) does exactly the work but writes `k*k/s**2` times the layer's output and
    overlap-adds it; it wins on small inputs.
    """
    n = -(-k // stride)
    extra = (h + n - 1) * (w + n - 1) / (h * w)
    return "col2im" if extra > _COL2IM_ABOVE else "subpixel"


# ------------------------------------------------------------------------------ matmul forms
#
# Each conv's backward is the other's forward: a conv's input gradient is the transposed conv of
# the output gradient (same kernel, in/out swapped), and a transposed conv's input gradient is
# the conv of its output gradient. The kernel gradient is one more 2-D matmul over the patches
# already at hand. So every pass is im2col (or col2im) plus 2-D matmuls, and no gradient ever
# goes through XLA's convolution or its dilated-input path.


def _patches(x, k: int, stride: int, padding: int):
    """im2col: `x [B, H, W, C]` -> `(patches [B*Ho*Wo, k*k*C], (Ho, Wo))`.

    Column order is `_arrange(kernel, stride)`'s row order.
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
        return _patches(_to_depth(x[:, : s * (out_h + n - 1), : s * (out_w + n - 1)], s), n, 1, 0)
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


def conv1d_matmul(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, **unused
):
    """`lax.conv_general_dilated` for flax's 1-D `nn.Conv` (input `[B, T, C]`, kernel
    `[k, C, O]`) as im2col and one 2-D `matmul`: bfloat16 inputs reach the CPU's bf16 dot with
    float32 accumulation, where XLA:CPU runs bf16 convolutions in float32. Plugged into
    `nn.Conv(conv_general_dilated=...)`, so E's parameters keep their layout.
    """
    del unused  # dimension_numbers (flax's NWC/WIO), feature_group_count (1), precision
    if any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
        raise ValueError("conv1d_matmul: no dilation")
    (stride,), ((lo, hi),) = window_strides, padding
    k, c, out = rhs.shape
    x = jnp.pad(lhs, ((0, 0), (lo, hi), (0, 0)))
    b, t = x.shape[:2]
    out_t = (t - k) // stride + 1
    cols = jnp.stack([x[:, d : d + stride * (out_t - 1) + 1 : stride] for d in range(k)], axis=-2)
    y = matmul(cols.reshape(b * out_t, k * c), rhs.reshape(k * c, out))
    return y.reshape(b, out_t, out)


def _space_to_depth(k: int, s: int) -> bool:
    return s > 1 and k % s == 0


def _to_depth(x, s: int):
    """Space-to-depth: `[B, s*H, s*W, C]` -> `[B, H, W, s*s*C]`, channels `(sh, sw, c)`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // s, w // s, s * s * c)


def _arrange(kernel, stride: int):
    """A kernel `[k, k, C, O]` -> `[k*k*C, O]`, rows in `_patches`' column order."""
    k, _, c, o = kernel.shape
    s = stride
    if _space_to_depth(k, s):
        n = k // s  # rows (dh, dw, sh, sw, c) where kh = s*dh + sh
        return kernel.reshape(n, s, n, s, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(-1, o)
    return kernel.reshape(k * k * c, o)


def _unarrange(rows, kernel_shape, stride: int):
    """The inverse of `_arrange` (a permutation, so its transpose)."""
    like = jax.ShapeDtypeStruct(kernel_shape, rows.dtype)
    return jax.linear_transpose(lambda kern: _arrange(kern, stride), like)(rows)[0]


def _conv_fwd(x, kernel, stride: int, padding: int):
    """conv2d in the matmul form, float32 `[B, Ho, Wo, O]`; also returns the patches."""
    k, o = kernel.shape[0], kernel.shape[-1]
    cols, (out_h, out_w) = _patches(x, k, stride, padding)
    y = _mm(cols, _arrange(kernel, stride).astype(x.dtype))
    return y.reshape(x.shape[0], out_h, out_w, o), cols


def _conv_transpose_fwd(x, kernel, stride: int, padding: int, out_hw=None):
    """The transposed conv in the cheaper matmul form for this input (`transpose_form`), in
    float32; also returns the sub-pixel form's patches of `x` (None in the col2im form).

    `out_hw` (default PyTorch's output size) extends the output on the bottom/right, with zeros
    past the uncropped output: a strided conv's input gradient when its windows skip the last
    rows.
    """
    b, h, w, i = x.shape
    k, o, s = kernel.shape[0], kernel.shape[-1], stride
    n = -(-k // s)
    x_cols = None
    if transpose_form(h, w, k, s) == "subpixel":
        sub, n = subpixel_kernel(kernel, s)
        xp = jnp.pad(x, ((0, 0), (n - 1, n - 1), (n - 1, n - 1), (0, 0)))
        z, x_cols = _conv_fwd(xp, sub, 1, 0)
    else:
        # col2im: every input pixel times the whole kernel, then the uncropped output pixel
        # s*(m+t) + r gets cols[m, t, r]: n*n shifted adds.
        padded = jnp.pad(kernel, ((0, s * n - k), (0, s * n - k), (0, 0), (0, 0)))
        w2 = padded.transpose(2, 0, 1, 3).reshape(i, -1).astype(x.dtype)
        cols = _mm(x.reshape(b * h * w, i), w2).reshape(b, h, w, n, s, n, s, o)
        z = sum(
            jnp.pad(
                cols[:, :, :, th, :, tw],
                ((0, 0), (th, n - 1 - th), (tw, n - 1 - tw), (0, 0), (0, 0), (0, 0)),
            )
            for th in range(n)
            for tw in range(n)
        )
        z = z.reshape(b, h + n - 1, w + n - 1, s * s * o)
    return _crop(_depth_to_space(z, s), x.shape, k, s, padding, out_hw), x_cols


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_mm(x, kernel, bias, stride, padding):
    return _conv_mm_fwd(x, kernel, bias, stride, padding)[0]


def _conv_mm_fwd(x, kernel, bias, stride, padding):
    y, cols = _conv_fwd(x, kernel, stride, padding)
    return (y + bias).astype(x.dtype), (cols, kernel, bias, x.shape)


def _conv_mm_bwd(stride, padding, res, g):
    cols, kernel, bias, x_shape = res
    o = kernel.shape[-1]
    g = g.astype(cols.dtype)
    # dx: the transposed conv of g with the same kernel (in and out swapped); input rows the
    # strided windows never reached get zero.
    dx, _ = _conv_transpose_fwd(g, kernel.transpose(0, 1, 3, 2), stride, padding, x_shape[1:3])
    dw_rows = _mm_tn(cols, g.reshape(-1, o))  # cols.T @ g, [k*k*I, O] in patch order
    dw = _unarrange(dw_rows, kernel.shape, stride)
    return dx.astype(cols.dtype), dw.astype(kernel.dtype), _bias_grad(g, bias)


_conv_mm.defvjp(_conv_mm_fwd, _conv_mm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _conv_transpose_mm(x, kernel, bias, stride, padding, dx_winograd=False):
    return _conv_transpose_mm_fwd(x, kernel, bias, stride, padding, dx_winograd)[0]


def _conv_transpose_mm_fwd(x, kernel, bias, stride, padding, dx_winograd=False):
    y, x_cols = _conv_transpose_fwd(x, kernel, stride, padding)
    return (y + bias).astype(x.dtype), (x, x_cols, kernel, bias)


def _conv_transpose_mm_bwd(stride, padding, dx_winograd, res, g):
    x, x_cols, kernel, bias = res
    b, h, w, i = x.shape
    k, o = kernel.shape[0], kernel.shape[-1]
    g = g.astype(x.dtype)
    kernel_t = kernel.transpose(0, 1, 3, 2)  # [k, k, O, I]
    g_cols = None
    if x_cols is None or not dx_winograd:
        g_cols, _ = _patches(g, k, stride, padding)
    # dx: the strided conv of g with the same kernel (in and out swapped).
    if dx_winograd:
        dx = _conv_winograd(g, kernel_t, jnp.zeros(i, jnp.float32))
    else:
        dx = _mm(g_cols, _arrange(kernel_t, stride).astype(x.dtype))
        dx = dx.astype(x.dtype).reshape(b, h, w, i)
    if x_cols is None:
        # col2im form: the output gradient's patches (as for dx) against x.
        dw_rows = _mm_tn(g_cols, x.reshape(-1, i))  # [k*k*O, I] in patch order
        dw = _unarrange(dw_rows, kernel_t.shape, stride).transpose(0, 1, 3, 2)
    else:
        # Sub-pixel form: the sub-pixel kernel's gradient over the forward's patches of x, with
        # g laid out as the uncropped sub-pixel output. Its `[n*n*I, s*s*O]` matmul suits the
        # matmul library better than the `[k*k*O, I]` one above (BENCHMARKS.md).
        n = -(-k // stride)
        z_shape = (b, h + n - 1, w + n - 1, stride * stride * o)

        def crop(z):
            return _crop(_depth_to_space(z, stride), x.shape, k, stride, padding)

        g_z = _transpose_of(crop, g, z_shape).reshape(-1, z_shape[-1])
        dw_rows = _mm_tn(x_cols, g_z)
        dw = _transpose_of(lambda kern: _subpixel_rows(kern, stride), dw_rows, kernel.shape)
    return dx, dw.astype(kernel.dtype), _bias_grad(g, bias)


def _subpixel_rows(kernel, stride: int):
    """A transposed conv's kernel `[k, k, I, O]` -> its sub-pixel matmul's `[n*n*I, s*s*O]`."""
    return _arrange(subpixel_kernel(kernel, stride)[0], 1)


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


_conv_transpose_mm.defvjp(_conv_transpose_mm_fwd, _conv_transpose_mm_bwd)


def _depth_to_space(z, s: int):
    """`[B, H, W, s*s*O]` (channels `(rh, rw, o)`) -> `[B, s*H, s*W, O]`."""
    b, h, w, _ = z.shape
    z = z.reshape(b, h, w, s, s, -1).transpose(0, 1, 3, 2, 4, 5)
    return z.reshape(b, h * s, w * s, -1)


def _transposed_out_hw(x_shape, k: int, s: int, p: int):
    """PyTorch's ConvTranspose2d output `(height, width)` for an input `[B, H, W, C]`."""
    return tuple((n - 1) * s - 2 * p + k for n in x_shape[1:3])


def _crop(full, x_shape, k: int, s: int, p: int, out_hw=None):
    """Rows and columns `[p, p + out)` of the uncropped output, zero past its end."""
    out_h, out_w = out_hw or _transposed_out_hw(x_shape, k, s, p)
    extra_h, extra_w = max(0, p + out_h - full.shape[1]), max(0, p + out_w - full.shape[2])
    if extra_h or extra_w:
        full = jnp.pad(full, ((0, 0), (0, extra_h), (0, extra_w), (0, 0)))
    return full[:, p : p + out_h, p : p + out_w]


# ---------------------------------------------------------------------------- Winograd forms
#
# After space-to-depth a 4x4 stride-2 conv is a 2x2-tap stride-1 correlation, and each of the
# four output phases of a 4x4 stride-2 transposed conv is one too. Winograd's F(2, 2) gives two
# outputs of a 2-tap correlation, y0 = x0 w0 + x1 w1 and y1 = x1 w0 + x2 w1, from three products:
#     m = (x0 - x1) w0,  x1 (w0 + w1),  (x2 - x1) w1;   y0 = m0 + m1,  y1 = m1 + m2.
# Applied along rows and columns, a 2x2 output tile takes 9 products instead of 16, each a
# `[tiles, C] @ [C, O]` matmul. The gradients are JAX's autodiff of these linear maps around
# `matmul`, so they are Winograd-shaped as well (9/16 of the products).


def winograd_applies(x_shape, dtype, kernel_shape, stride, padding, transposed=False) -> bool:
    """Whether the "winograd" impl computes this layer in the Winograd form.

    4x4 stride-2 padding-1 layers in float32 only; every output phase must tile by 2x2 (a conv's
    input sides a multiple of 4, a transposed conv's even). Where it was measured slower (CPU,
    float32, forward and backward): a transposed conv on inputs over
    `_WINOGRAD_TRANSPOSE_MAX_SIDE` (G's last layer: few channels make the nine matmuls
    memory-bound) and a conv over fewer than `_WINOGRAD_CONV_MIN_IN` channels keep the matmul
    form. So do layers with fewer than `_WINOGRAD_MIN_OUT` output channels: the form compiles to
    nine matmuls per phase (the full wen2019 step compiles in ~20 s instead of ~5 s), which the
    small configs' layers do not earn back.
    """
    if (kernel_shape[0], kernel_shape[1], stride, padding) != (4, 4, 2, 1):
        return False
    if dtype != jnp.float32 or kernel_shape[3] < _WINOGRAD_MIN_OUT:
        return False
    sides = x_shape[1:3]
    if transposed:
        return all(n % 2 == 0 and n <= _WINOGRAD_TRANSPOSE_MAX_SIDE for n in sides)
    return all(n % 4 == 0 for n in sides) and kernel_shape[2] >= _WINOGRAD_CONV_MIN_IN


def _winograd_data(x, axis: int):
    """`(x0 - x1, x1, x2 - x1)` for the overlapping triples `(2t, 2t+1, 2t+2)` along `axis`."""
    n = (x.shape[axis] - 1) // 2

    def every_other(start):
        return jax.lax.slice_in_dim(x, start, start + 2 * n - 1, 2, axis)

    x0, x1, x2 = every_other(0), every_other(1), every_other(2)
    return x0 - x1, x1, x2 - x1


def _winograd_taps(w0, w1):
    return w0, w0 + w1, w1


def _winograd_sums(m0, m1, m2):
    return m0 + m1, m1 + m2


def _corr2x2_winograd(x, taps):
    """Valid correlation of `x [B, 2T+1, 2U+1, C]` with `taps [2, 2, C, O]` -> `[B, 2T, 2U, O]`
    in `x.dtype`."""
    b, h, w, c = x.shape
    t, u = (h - 1) // 2, (w - 1) // 2
    data = [d.reshape(b * t * u, c) for r in _winograd_data(x, 1) for d in _winograd_data(r, 2)]
    kernels = [q for r in _winograd_taps(taps[0], taps[1]) for q in _winograd_taps(r[0], r[1])]
    m = [matmul(d, q).reshape(b, t, u, -1) for d, q in zip(data, kernels)]  # index 3*row + col
    by_row = [_winograd_sums(*m[3 * i : 3 * i + 3]) for i in range(3)]  # [i][output col j]
    tile = [_winograd_sums(*(by_row[i][j] for i in range(3))) for j in range(2)]  # [j][row i]
    out = jnp.stack([jnp.stack([tile[0][i], tile[1][i]], axis=3) for i in range(2)], axis=2)
    return out.reshape(b, 2 * t, 2 * u, -1)  # from [B, T, 2 (row i), U, 2 (col j), O]


def _conv_winograd(x, kernel, bias):
    """conv2d, 4x4 stride 2 padding 1: space-to-depth turns it into a 2x2 correlation."""
    c, o = kernel.shape[2:]
    xs = _to_depth(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), 2)
    taps = _arrange(kernel, 2).reshape(2, 2, 4 * c, o)
    return (_corr2x2_winograd(xs, taps) + bias).astype(x.dtype)


def _conv_transpose_winograd(x, kernel, bias):
    """conv_transpose, 4x4 stride 2 padding 1, one 2x2 correlation per output phase.

    Along one axis, output `2q + r` is `xp[q + r] k[3 - r] + xp[q + r + 1] k[1 - r]` over `x`
    padded by one (`xp`): phase `r` correlates `xp[r : r + H + 1]` with taps `k[3 - r], k[1 - r]`.
    """
    b, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    phases = [
        jnp.stack(
            [
                _corr2x2_winograd(
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


@jax.custom_vjp
def matmul(a, w):
    """`a @ w` for `a [M, K]` (compute dtype) and `w [K, N]` (parameter dtype).

    Computed as `lax.dot` of `a` and `w` cast to `a.dtype` with float32 accumulation, returned in
    `a.dtype`. The backward is two 2-D dots of the same kind; `w`'s gradient stays in `w.dtype`.
    """
    return _mm(a, w.astype(a.dtype)).astype(a.dtype)


def _matmul_fwd(a, w):
    return matmul(a, w), (a, w)


def _matmul_bwd(res, g):
    a, w = res
    g = g.astype(a.dtype)
    da = _mm_nt(g, w.astype(a.dtype)).astype(a.dtype)
    return da, _mm_tn(a, g).astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _mm(a, b):
    """`a [M, K] @ b [K, N]` -> float32, with float32 accumulation."""
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _mm_nt(a, b):
    """`a [M, K] @ b[N, K].T` -> float32."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _mm_tn(a, b):
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
        return _small_t(_mm(_transpose_rows(b), a))  # (b.T @ a).T
    return _mm(_transpose_rows(a), b)


def _transpose_rows(x):
    """`x [M, N].T` for a large `M`, as a matmul with the identity (`I @ x.T`, exact).

    XLA fuses a transpose with its operand's producer and then computes that producer in
    transposed, cache-hostile order (several times slower than the matmul it feeds); the
    library matmul takes `x` as it is in memory. Costs `2*M*N*N` FLOPs (1/8 of the weight
    gradient it serves, for this model's layers).
    """
    eye = jnp.eye(x.shape[1], dtype=x.dtype)
    return _mm_nt(eye, x).astype(x.dtype)


def _small_t(x):
    """`x.T` for a small `x` (a weight gradient), written so that XLA cannot fold it into the
    dot that produced `x` (which would undo the layout `_mm_tn` chose)."""
    return jnp.pad(x, ((0, 0), (0, 1))).T[: x.shape[1]]


def torch_linear_init(fan_in: int):
    """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return _uniform(1.0 / jnp.sqrt(fan_in))


def _uniform(bound):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
