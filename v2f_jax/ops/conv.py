"""Convolutions with the reference's (PyTorch's) semantics, in channels-last layout.

`conv2d` and `conv_transpose` are the plain XLA forms. `Conv2d` and `ConvTranspose2d` are the
Flax layers; they compute in the implementation their `convs` (`ConvForms`) names, chosen once
per backend by `forms_for`. Every implementation has the same parameters and gives the same
numbers (to float rounding):

- `"xla"`: `lax.conv_general_dilated`; a transposed conv is a conv over the stride-dilated input
  with the flipped kernel (what autodiff of a strided conv gives).
- `"subpixel"`: "xla", except strided transposed convs as a stride-1 conv and depth-to-space
  (`ops.cpu.subpixel`).
- `"matmul"`: every conv, transposed conv and E's 1-D conv as 2-D matmuls with a custom VJP per
  layer (`ops.cpu.matmul_conv`, `ops.cpu.im2col`), except a stride-1 conv that keeps its input's
  size, to fewer channels than it reads (G's k x k layer to RGB), which XLA's conv runs faster
  (`xla_conv_is_faster`).
- `"winograd"`: "matmul", with float32 4x4 stride-2 layers in Winograd's F(2x2, 2x2) where
  measured faster (`ops.cpu.winograd`).
- `"auto"`: "winograd" on CPU (measured, BENCHMARKS.md); "xla" elsewhere (GPU/TPU conv libraries
  handle these layers; not measured here).

Parameters are stored so that a PyTorch state dict converts by a plain transpose
(`inference/torch_state_dicts.py`): a transposed conv keeps PyTorch's un-flipped kernel as
`[kh, kw, in, out]`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from v2f_jax.ops import cpu

Dtype = Any
_DIMS = ("NHWC", "HWIO", "NHWC")
IMPLS = ("xla", "subpixel", "matmul", "winograd")
# Measured on CPU (BENCHMARKS.md). Other backends keep the plain forms until measured there.
_AUTO = {"cpu": "winograd"}
# "reference" was the plain forms' name before "xla"; exported models and checkpoints'
# config.json still carry `model.impl="reference"`.
_LEGACY = {"reference": "xla"}


@dataclasses.dataclass(frozen=True)
class ConvForms:
    """Which implementation computes the convolutions: one of `IMPLS` (see the module docstring).

    Immutable and hashable, so a Flax module can hold it as an attribute. Build it with
    `forms_for`, which resolves "auto" and checks the name.

    Attributes:
      impl: the implementation's name, one of `IMPLS`.
    """

    impl: str = "xla"

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise ValueError(f"ConvForms: impl must be one of {IMPLS}, not {self.impl!r}")

    def conv2d(self, x, kernel, stride: int, padding: int, bias=None):
        """`conv2d` (same arguments) in this implementation.

        The matmul forms add the bias in float32 before rounding to `x.dtype`, and return the
        kernel's gradient in `kernel.dtype`.
        """
        matmul_form = self.impl in ("matmul", "winograd")
        if matmul_form and not xla_conv_is_faster(kernel.shape, stride, padding):
            use_winograd = self.impl == "winograd"
            return cpu.matmul_conv.conv2d(x, kernel, stride, padding, bias, use_winograd)
        return conv2d(x, kernel, stride, padding, bias)  # "subpixel" too: no strided transpose

    def conv_transpose(self, x, kernel, stride: int, padding: int, bias=None):
        """`conv_transpose` (same arguments) in this implementation."""
        if self.impl in ("matmul", "winograd"):
            use_winograd = self.impl == "winograd"
            return cpu.matmul_conv.conv_transpose(x, kernel, stride, padding, bias, use_winograd)
        if self.impl == "subpixel":
            return cpu.subpixel.conv_transpose(x, kernel, stride, padding, bias)
        return conv_transpose(x, kernel, stride, padding, bias)

    def bilinear_up_conv2d(self, x, kernel, bias=None):
        """`bilinear_up_conv2d` (same arguments) with this implementation's `conv_transpose`:
        the matmul forms' on CPU, measured the fastest (`benchmarks/bilinear_layer.py`)."""
        return bilinear_up_conv2d(x, kernel, bias, transposed_conv=self.conv_transpose)

    def conv1d_general_dilated(self):
        """The function for flax's `nn.Conv(conv_general_dilated=...)` in a 1-D conv (E's):
        im2col + one matmul in the matmul forms, else None (flax's default, XLA's conv)."""
        return cpu.im2col.conv1d_matmul if self.impl in ("matmul", "winograd") else None


XLA = ConvForms("xla")


def xla_conv_is_faster(kernel_shape, stride: int, padding: int) -> bool:
    """Whether the matmul forms leave a conv to XLA's: a stride-1 k x k conv (k > 1) that keeps
    its input's size, to fewer channels than it reads (G's k x k layer to RGB,
    `model.gen_out_kernel`). Its im2col copies the input k*k times to feed a matmul with a
    handful of columns; XLA:CPU's conv, forward and both gradients, ran 2.3x faster at 3x3 and 5x
    faster at 5x5 (`benchmarks/last_layer.py`). A conv that shrinks its input to a few outputs
    (D's 4x4 to 1x1) stays a matmul: its im2col is a reshape."""
    k, _, i, o = kernel_shape
    return stride == 1 and k > 1 and 2 * padding == k - 1 and o < i


def forms_for(impl: str, backend: str | None = None) -> ConvForms:
    """`config.model.impl` -> its `ConvForms`; `"auto"` -> the fastest exact forms on `backend`.

    Args:
      impl: "auto" or one of `IMPLS` (or the legacy "reference", which is "xla").
      backend: "cpu", "gpu", "tpu"...; default JAX's default backend.

    Raises:
      ValueError: an unknown name.
    """
    name = _LEGACY.get(impl, impl)
    if name == "auto":
        name = _AUTO.get(backend or jax.default_backend(), "xla")
    if name not in IMPLS:
        raise ValueError(f"config.model.impl must be 'auto' or one of {IMPLS}, not {impl!r}")
    return ConvForms(name)


def conv2d(x, kernel, stride: int, padding: int, bias=None):
    """Cross-correlation as PyTorch's Conv2d, in plain XLA, computed in `x.dtype`.

    Args:
      x: `[B, H, W, I]`.
      kernel: `[k, k, I, O]`, any float dtype (cast to `x.dtype`).
      stride, padding: as PyTorch's.
      bias: `[O]` or None, added in `x.dtype`.

    Returns:
      `[B, (H + 2p - k) // s + 1, ..., O]` in `x.dtype`.
    """
    y = jax.lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=_DIMS,
    )
    return y if bias is None else y + bias.astype(x.dtype)


def conv_transpose(x, kernel, stride: int, padding: int, bias=None):
    """PyTorch's ConvTranspose2d, in plain XLA, computed in `x.dtype`.

    A transposed conv is a conv over the stride-dilated input with the flipped kernel.

    Args:
      x: `[B, H, W, I]`.
      kernel: `[k, k, I, O]`, PyTorch's un-flipped kernel (`weight.permute(2, 3, 0, 1)`).
      stride, padding: as PyTorch's (no output_padding).
      bias: `[O]` or None, added in `x.dtype`.

    Returns:
      `[B, (H-1)*s - 2p + k, ..., O]` in `x.dtype`.
    """
    edge = kernel.shape[0] - 1 - padding
    # Cast, then flip: the filter is then a plain `reverse` of a compute-dtype value, the form
    # XLA:GPU's conv rewriter turns into cuDNN's backward-input conv. Flipped first, the filter is
    # `convert(reverse(kernel))` in bfloat16 and XLA:GPU runs a forward conv over the zero-dilated
    # input instead (4x the FLOPs of the stride-2 layers; tests/test_gpu_hlo.py).
    y = jax.lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype)[::-1, ::-1],
        window_strides=(1, 1),
        padding=((edge, edge), (edge, edge)),
        lhs_dilation=(stride, stride),
        dimension_numbers=_DIMS,
    )
    return y if bias is None else y + bias.astype(x.dtype)


# Bilinear x2 with half-pixel centres is a stride-2 transposed conv with these taps per axis.
_BILINEAR_TAPS = (0.25, 0.75, 0.75, 0.25)


def bilinear_up_conv2d(x, kernel, bias=None, transposed_conv=None):
    """Bilinear x2 upsampling (half-pixel centres) of `x` taken as zero beyond its edges, then a
    3x3 conv with padding 1, computed in `x.dtype`: a stride-2 transposed conv whose 6x6 kernel
    is `kernel` smoothed by bilinear's [1, 3, 3, 1] / 4 (zero at period 2, so no checkerboard).

    That kernel factors, so it runs as the 3x3 stride-2 transposed conv of `x` with `kernel`
    flipped, then the [1, 3, 3, 1] / 4 smoothing at the output's resolution
    (`_bilinear_smoothing`). The matmul takes 9/36 of the multiply-adds of the 3x3 conv over the
    resized map (16/36 in the sub-pixel form), and the smoothing costs eight per output value.

    Args:
      x: `[B, H, W, I]`.
      kernel: `[3, 3, I, O]`, any float dtype (cast to `x.dtype`).
      bias: `[O]` or None, added in float32 after the smoothing.
      transposed_conv: the transposed conv it runs, `transposed_conv(x, kernel, stride,
        padding, bias)` with PyTorch's un-flipped kernel; default `conv_transpose` (XLA's).

    Returns:
      `[B, 2H, 2W, O]` in `x.dtype`.
    """
    # Uncropped: output pixel u of the transposed conv sums x[i] * kernel[2i + 2 - u], which is
    # the 3x3 correlation over the zero-inserted input that the smoothing then resizes.
    full = (transposed_conv or conv_transpose)(x, kernel[::-1, ::-1], 2, 0)  # [B, 2H+1, 2W+1, O]
    y = _bilinear_smoothing(full.astype(jnp.float32))
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


@jax.custom_vjp
def _bilinear_smoothing(full):
    """`[B, 2H+1, 2W+1, C]` -> `[B, 2H, 2W, C]`: [1, 3, 3, 1] / 4 along rows and columns over
    `full` padded by one zero on each side.

    The gradient is the same smoothing over the output's gradient padded by two: XLA's autodiff
    of the shifted slices (pads and adds) ran 14x slower on CPU (54 ms against 3.8 ms for G's
    64x64 layer at batch 64).
    """
    return _smooth_valid(_pad_sides(full, 1))


def _bilinear_smoothing_fwd(full):
    return _bilinear_smoothing(full), None


def _bilinear_smoothing_bwd(_, g):
    # The taps are symmetric, so the transpose of the valid smoothing is the full one.
    return (_smooth_valid(_pad_sides(g, 2)),)


_bilinear_smoothing.defvjp(_bilinear_smoothing_fwd, _bilinear_smoothing_bwd)


def _smooth_valid(v):
    """`[B, H, W, C]` -> `[B, H-3, W-3, C]`: `_BILINEAR_TAPS` along rows, then columns."""
    h, w = v.shape[1] - 3, v.shape[2] - 3
    v = sum(tap * v[:, j : j + h] for j, tap in enumerate(_BILINEAR_TAPS))
    return sum(tap * v[:, :, j : j + w] for j, tap in enumerate(_BILINEAR_TAPS))


def _pad_sides(v, p: int):
    return jnp.pad(v, ((0, 0), (p, p), (p, p), (0, 0)))


class ConvTranspose2d(nn.Module):
    """PyTorch's `ConvTranspose2d(in, features, kernel, stride, padding)`.

    Input `[B, H, W, in]`, output `[B, (H-1)*stride - 2*padding + kernel, ..., features]` in
    `dtype`. Parameters: float32 `kernel [kernel, kernel, in, features]`, `bias [features]`.
    """

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dtype: Dtype = jnp.float32
    convs: ConvForms = XLA

    @nn.compact
    def __call__(self, x):
        # PyTorch's default init: kaiming-uniform(a=sqrt(5)) over fan_in = out*k*k for ConvT.
        kernel, bias = _kernel_and_bias(self, x.shape[-1], self.features)
        x = x.astype(self.dtype)
        return self.convs.conv_transpose(x, kernel, self.stride, self.padding, bias=bias)


class Conv2d(nn.Module):
    """PyTorch's `Conv2d(in, features, kernel, stride, padding)` on `[B, H, W, in]`.

    Output `[B, (H + 2*padding - kernel) // stride + 1, ..., features]` in `dtype`. Parameters:
    float32 `kernel [kernel, kernel, in, features]`, `bias [features]`.
    """

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dtype: Dtype = jnp.float32
    convs: ConvForms = XLA

    @nn.compact
    def __call__(self, x):
        kernel, bias = _kernel_and_bias(self, x.shape[-1], x.shape[-1])
        x = x.astype(self.dtype)
        return self.convs.conv2d(x, kernel, self.stride, self.padding, bias=bias)


def _kernel_and_bias(layer: nn.Module, in_features: int, fan_channels: int):
    """float32 `kernel [k, k, in, out]` and `bias [out]`, U(+-1/sqrt(fan_channels * k * k))."""
    k = layer.kernel
    init = _uniform(1.0 / jnp.sqrt(fan_channels * k * k))
    kernel = layer.param("kernel", init, (k, k, in_features, layer.features), jnp.float32)
    bias = layer.param("bias", init, (layer.features,), jnp.float32)
    return kernel, bias


def torch_linear_init(fan_in: int):
    """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return _uniform(1.0 / jnp.sqrt(fan_in))


def _uniform(bound):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
