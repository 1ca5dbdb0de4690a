"""Convolution layers with the reference's (PyTorch's) semantics, in channels-last layout.

Parameters are stored so that a PyTorch state dict converts by a plain transpose (see
`export.py`): a transposed convolution keeps PyTorch's un-flipped kernel as `[kh, kw, in, out]`.
Each layer computes either the plain form (`impl="reference"`) or an exactly equivalent faster
form selected by `impl`; the parameter layout is the same for every impl.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
_DIMS = ("NHWC", "HWIO", "NHWC")


def resolve_impl(impl: str) -> str:
    """`auto` -> the fastest exact form on this backend."""
    if impl != "auto":
        return impl
    return "reference"


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
        in_features = x.shape[-1]
        # PyTorch's default init: kaiming-uniform(a=sqrt(5)) over fan_in = out*k*k for ConvT.
        fan_in = self.features * self.kernel * self.kernel
        bound = 1.0 / jnp.sqrt(fan_in)
        kernel = self.param(
            "kernel",
            _uniform(bound),
            (self.kernel, self.kernel, in_features, self.features),
            jnp.float32,
        )
        bias = self.param("bias", _uniform(bound), (self.features,), jnp.float32)
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        y = conv_transpose(x, kernel, self.stride, self.padding, resolve_impl(self.impl))
        return y + bias


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
        in_features = x.shape[-1]
        bound = 1.0 / jnp.sqrt(in_features * self.kernel * self.kernel)
        kernel = self.param(
            "kernel",
            _uniform(bound),
            (self.kernel, self.kernel, in_features, self.features),
            jnp.float32,
        )
        bias = self.param("bias", _uniform(bound), (self.features,), jnp.float32)
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        y = conv2d(x, kernel, self.stride, self.padding, resolve_impl(self.impl))
        return y + bias


def conv2d(x, kernel, stride: int, padding: int, impl: str):
    """Cross-correlation as PyTorch's Conv2d. x `[B,H,W,I]`, kernel `[k,k,I,O]`."""
    if impl == "reference":
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(stride, stride),
            padding=((padding, padding), (padding, padding)),
            dimension_numbers=_DIMS,
        )
    raise ValueError(f"unknown conv impl {impl!r}")


def conv_transpose(x, kernel, stride: int, padding: int, impl: str):
    """PyTorch's ConvTranspose2d. x `[B,H,W,I]`, kernel `[k,k,I,O]` (PyTorch's, un-flipped)."""
    k = kernel.shape[0]
    if impl == "reference":
        # A transposed conv is a conv over the stride-dilated input with the flipped kernel.
        edge = k - 1 - padding
        return jax.lax.conv_general_dilated(
            x,
            kernel[::-1, ::-1],
            window_strides=(1, 1),
            padding=((edge, edge), (edge, edge)),
            lhs_dilation=(stride, stride),
            dimension_numbers=_DIMS,
        )
    raise ValueError(f"unknown conv-transpose impl {impl!r}")


def torch_linear_init(fan_in: int):
    """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return _uniform(1.0 / jnp.sqrt(fan_in))


def _uniform(bound):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
