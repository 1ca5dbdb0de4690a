"""The four networks: voice embedder E, generator G, face trunk F with heads D and C.

All channels-last. Two architectures, chosen by `config.model.arch`:
- `wen2019`: the public PyTorch code of Wen et al. (parameter counts equal its state dicts);
- `paper`: Maniyar et al. 2022, Fig. 4: nearest-upsample + 3x3 conv generator, and D and C each
  with their own 3x3 conv trunk.

`config.model.upsample` (and `upsample_blur`) choose how G upsamples, whatever the architecture:
"" keeps the architecture's own form; "deconv", "nearest", "bilinear", "conv_bilinear" and
"subpixel" are described at `Generator`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from v2f_jax import ops

Dtype = Any


def unit(x, eps: float = 1e-12):
    """L2-normalises the rows of `x` `[..., D]`, as torch.nn.functional.normalize: the voice
    embedding G draws from, and the face embeddings evaluation compares. numpy in, numpy out (host
    metrics); anything else through jax.numpy (jit-able)."""
    xp = np if isinstance(x, np.ndarray) else jnp
    return x / xp.maximum(xp.linalg.norm(x, axis=-1, keepdims=True), eps)


def compute_dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _halve(lengths):
    """Output length of a kernel-3, stride-2, padding-1 conv: ceil(L / 2)."""
    return (lengths + 1) // 2


def _time_mask(lengths, steps: int):
    """`[B, steps, 1]` bool: True at positions `t < lengths[b]`."""
    return (jnp.arange(steps)[None, :] < lengths[:, None])[:, :, None]


class VoiceEmbedder(nn.Module):
    """E: log-mel `[B, T, n_mels]` -> voice embedding `[B, embed_dim]` (not normalised).

    Five 1-D convs over time (kernel 3, stride 2, pad 1); BatchNorm + ReLU after the first four;
    then the mean over time. `train=False` uses the running BatchNorm statistics, as the frozen
    E of the reference does.

    `lengths` (int `[B]`, optional): only the first `lengths[b]` frames of `mel[b]` are voice;
    the rest is padding. The result then equals E of the cropped `mel[b, :lengths[b]]` (to float
    rounding): every layer's input is zeroed past its valid length, which is exactly the zero
    padding the cropped conv would read, BatchNorm statistics (when training) count valid
    positions only, and the mean runs over valid positions. So batches of any crop length share
    one padded shape: one compiled step.
    """

    channels: Sequence[int] = (256, 384, 576, 864)
    embed_dim: int = 64
    dtype: Dtype = jnp.float32
    axis_name: str | None = None  # set under pmap so BatchNorm sees the global batch
    convs: ops.conv.ConvForms = ops.conv.XLA  # the conv implementation (`Networks` picks it)

    @nn.compact
    def __call__(self, mel, train: bool = False, lengths=None):
        x = mel.astype(self.dtype)
        mask = None
        if lengths is not None:
            mask = _time_mask(lengths, x.shape[1])
            x = jnp.where(mask, x, 0)
        # The forms' 1-D conv (im2col + matmul in the matmul forms) only for a frozen E in
        # bfloat16 (every GAN step runs one): there XLA:CPU's conv is slower, in float32 faster
        # (BENCHMARKS.md). A learning E keeps XLA's convs, whose bfloat16 gradients carry extra
        # precision (half the error of the im2col form's).
        frozen_bf16 = not train and self.dtype != jnp.float32
        conv_fn = self.convs.conv1d_general_dilated() if frozen_bf16 else None
        for i, features in enumerate(self.channels):
            x = nn.Conv(
                features,
                (3,),
                strides=(2,),
                padding=((1, 1),),
                use_bias=False,
                dtype=self.dtype,
                kernel_init=ops.conv.torch_linear_init(x.shape[-1] * 3),
                name=f"conv{i}",
                conv_general_dilated=conv_fn,
            )(x)
            if lengths is not None:
                lengths = _halve(lengths)
                mask = _time_mask(lengths, x.shape[1])
            # PyTorch BatchNorm1d defaults: momentum 0.1 (flax 0.9), eps 1e-5.
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                dtype=self.dtype,
                axis_name=self.axis_name,
                name=f"bn{i}",
            )(x, mask=mask)
            x = nn.relu(x)
            if mask is not None:
                x = jnp.where(mask, x, 0)
        x = nn.Conv(
            self.embed_dim,
            (3,),
            strides=(2,),
            padding=((1, 1),),
            use_bias=True,
            dtype=self.dtype,
            kernel_init=ops.conv.torch_linear_init(x.shape[-1] * 3),
            bias_init=ops.conv.torch_linear_init(x.shape[-1] * 3),
            name=f"conv{len(self.channels)}",
            conv_general_dilated=conv_fn,
        )(x)
        x = x.astype(jnp.float32)
        if lengths is None:
            return jnp.mean(x, axis=1)
        lengths = _halve(lengths)
        mask = _time_mask(lengths, x.shape[1])
        return jnp.sum(jnp.where(mask, x, 0), axis=1) / lengths[:, None].astype(jnp.float32)


class SpeakerHead(nn.Module):
    """E's pretraining heads: a linear speaker classifier on E's output and, with `face_dim` > 0,
    a linear map from the unit embedding (what G draws from) to the speaker's face target
    (`face_targets.py`).

    Returns `(logits [B, num_speakers], face prediction [B, face_dim] or None)`.
    """

    num_speakers: int
    face_dim: int = 0

    @nn.compact
    def __call__(self, embedding):
        embedding = embedding.astype(jnp.float32)
        logits = nn.Dense(self.num_speakers, name="fc")(embedding)
        if not self.face_dim:
            return logits, None
        return logits, nn.Dense(self.face_dim, name="face_fc")(unit(embedding))


UPSAMPLES = ("deconv", "nearest", "bilinear", "conv_bilinear", "subpixel")


def generator_form(model_config: ml_collections.ConfigDict) -> tuple[str, bool]:
    """`(upsample, blur)` of the G that `model_config` builds: `model.upsample`, where "" is the
    architecture's own ("deconv" for wen2019, "nearest" for the paper's), and
    `model.upsample_blur`."""
    upsample = model_config.upsample or ("deconv" if model_config.arch == "wen2019" else "nearest")
    return upsample, bool(model_config.upsample_blur)


def _shift_pad(x, axis: int):
    """`x` with its first and last entries along `axis` repeated once (edge padding)."""
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(x, x.shape[axis] - 1, x.shape[axis], axis=axis)
    return jnp.concatenate([first, x, last], axis=axis)


def blur(x):
    """The binomial [1, 2, 1] / 4 filter along H and W of `[B, H, W, C]`, edges repeated.

    Its response at the period-2 frequency is 0: `a, b, a, b` becomes `(a + b) / 2` everywhere,
    so a stride-2 layer's checkerboard does not pass it (a constant image stays as it is).
    """
    for axis in (1, 2):
        p = _shift_pad(x, axis)
        n = x.shape[axis]
        lo = jax.lax.slice_in_dim(p, 0, n, axis=axis)
        mid = jax.lax.slice_in_dim(p, 1, n + 1, axis=axis)
        hi = jax.lax.slice_in_dim(p, 2, n + 2, axis=axis)
        x = 0.25 * lo + 0.5 * mid + 0.25 * hi
    return x


def resize2x(x, method: str):
    """`[B, H, W, C]` -> `[B, 2H, 2W, C]`: "nearest" (each pixel a 2x2 block) or "bilinear"
    (half-pixel centres, as `jax.image.resize` and PyTorch's `align_corners=False`: weights 3/4
    and 1/4 of the two nearest input pixels along each axis, edges repeated)."""
    if method == "nearest":
        b, h, w, c = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
        return x.reshape(b, 2 * h, 2 * w, c)
    if method != "bilinear":
        raise ValueError(f"resize2x: method must be 'nearest' or 'bilinear', not {method!r}")
    for axis in (1, 2):
        p = _shift_pad(x, axis)
        n = x.shape[axis]
        prev = jax.lax.slice_in_dim(p, 0, n, axis=axis)
        nxt = jax.lax.slice_in_dim(p, 2, n + 2, axis=axis)
        even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
        both = jnp.stack([even, odd], axis=axis + 1)  # [.., n, 2, ..]
        shape = list(x.shape)
        shape[axis] = 2 * n
        x = both.reshape(shape)
    return x


def depth_to_space(x, r: int = 2):
    """PyTorch's `PixelShuffle(r)`, channels-last: `[B, H, W, C*r*r]` -> `[B, rH, rW, C]`, input
    channel `c*r*r + i*r + j` going to sub-pixel `(i, j)` of output channel `c`."""
    b, h, w, crr = x.shape
    c = crr // (r * r)
    x = x.reshape(b, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * r, w * r, c)


class BilinearConv2d(nn.Module):
    """Bilinear x2 upsampling (half-pixel centres) of the input taken as zero beyond its edges,
    then a 3x3 conv: a stride-2 transposed conv whose 6x6 kernel is the 3x3 kernel smoothed by
    bilinear's [1, 3, 3, 1] / 4, which is zero at period 2 (`ops.conv.bilinear_up_conv2d`). The
    zeros beyond the edges tell G where the border is (edges repeated instead cost 6 points of
    1:2 matching on the demo, RESULTS.md).

    `[B, H, W, in]` -> `[B, 2H, 2W, features]` in `dtype`. Parameters: the 3x3 conv's float32
    `kernel [3, 3, in, features]` and `bias [features]` (as `Conv2d(features, 3)`).
    """

    features: int
    dtype: Dtype = jnp.float32
    convs: ops.conv.ConvForms = ops.conv.XLA

    @nn.compact
    def __call__(self, x):
        in_features = x.shape[-1]
        init = ops.conv.torch_linear_init(in_features * 9)
        kernel = self.param("kernel", init, (3, 3, in_features, self.features), jnp.float32)
        bias = self.param("bias", init, (self.features,), jnp.float32)
        return self.convs.bilinear_up_conv2d(x.astype(self.dtype), kernel, bias)


class SubpixelConv2d(nn.Module):
    """x2 upsampling by a 3x3 conv to `features * 4` channels and `depth_to_space` (Shi et al.
    2016), ICNR-initialised (Aitken et al. 2017): the four sub-pixels of each output channel
    start with the same kernel and bias, so at step 0 the layer is a conv followed by nearest
    x2 upsampling, free of checkerboard. Parameters: float32 `kernel [3, 3, in, 4 * features]`
    (PyTorch's default Conv2d bounds over fan-in `in * 9`), `bias [4 * features]`.
    """

    features: int
    dtype: Dtype = jnp.float32
    convs: ops.conv.ConvForms = ops.conv.XLA

    @nn.compact
    def __call__(self, x):
        in_features = x.shape[-1]
        bound = 1.0 / np.sqrt(in_features * 9)

        def icnr(shape):
            def init(key, _shape, dtype=jnp.float32):
                base = jax.random.uniform(key, shape, dtype, -bound, bound)
                return jnp.repeat(base, 4, axis=-1)

            return init

        kernel = self.param(
            "kernel",
            icnr((3, 3, in_features, self.features)),
            (3, 3, in_features, 4 * self.features),
        )
        bias = self.param("bias", icnr((self.features,)), (4 * self.features,))
        y = self.convs.conv2d(x.astype(self.dtype), kernel, 1, 1, bias=bias)
        return depth_to_space(y, 2)


class Generator(nn.Module):
    """G: unit embedding `[B, embed_dim]` -> face `[B, 64, 64, 3]`, nominally in [-1, 1].

    A 4x4 transposed conv from 1x1 to 4x4 (`deconv0`), then one x2 upsampling layer per further
    channel count, then a conv to RGB (`out_kernel` x `out_kernel`, stride 1, the reference's
    1x1 by default); ReLU between layers. The output is not squashed, as published. `upsample`
    is how each x2 layer upsamples:
    - "deconv": wen2019's 4x4 stride-2 transposed convs (`deconv{i}`; the last `deconv5`, 1x1).
      Its taps sum differently over the four output phases, which draws a checkerboard.
    - "nearest" (the paper's): resize x2, then a 3x3 conv (`conv{i}`; `conv5`).
    - "bilinear": bilinear x2, then a 3x3 conv (`BilinearConv2d`: `conv{i}`; `conv5`).
    - "conv_bilinear": a 3x3 conv at the input's resolution, then bilinear x2 (`conv{i}`; `conv5`):
      a quarter of the resize forms' multiply-adds (9/16 of "deconv"'s), and no period-2 pattern
      (bilinear x2's [1, 3, 3, 1] / 4 kernel has a zero at period 2); each layer's detail is
      that of its input's resolution.
    - "subpixel": a 3x3 conv to 4x the channels and `depth_to_space`, ICNR-initialised.
    `blur`: the binomial [1, 2, 1] filter (`blur`) after each x2 layer, before its ReLU.
    `out_kernel`: the last layer's odd kernel size; a 3x3 conv at 64x64 can sharpen what
    "bilinear"'s smoothing drew (the zero at period 2 stays: a stride-1 conv has no phases).
    `coarse_cell` > 0: the face's coarse part, its means over `coarse_cell`-pixel cells, comes
    from a linear map of the embedding (`CoarseMap` `coarse`: P = (64 / coarse_cell)^2 * 3
    values in face units), and the network draws only the detail within the cells
    (`with_coarse_face`). The map is fitted to the training speakers' mean faces before
    training (`training/coarse_face.py`) and never trained. 0 (the reference): the network
    draws the whole face.
    """

    channels: Sequence[int] = (1024, 512, 256, 128, 64)
    upsample: str = "deconv"
    blur: bool = False
    out_kernel: int = 1
    coarse_cell: int = 0
    dtype: Dtype = jnp.float32
    convs: ops.conv.ConvForms = ops.conv.XLA

    @nn.compact
    def __call__(self, embedding, with_network_face: bool = False):
        """The face `[B, 64, 64, 3]`; with `with_network_face` (and a coarse map), also the
        network's own face before its coarse part is swapped (what the training step holds
        near the map's, so that the swap stays small)."""
        if self.upsample not in UPSAMPLES:
            raise ValueError(
                f"Generator: upsample must be one of {UPSAMPLES}, not {self.upsample!r}"
            )
        x = embedding.astype(self.dtype)[:, None, None, :]
        kw = dict(dtype=self.dtype, convs=self.convs)
        conv_t, conv = ops.conv.ConvTranspose2d, ops.conv.Conv2d
        x = nn.relu(conv_t(self.channels[0], 4, 1, 0, name="deconv0", **kw)(x))
        for i, features in enumerate(self.channels[1:], start=1):
            if self.upsample == "deconv":
                x = conv_t(features, 4, 2, 1, name=f"deconv{i}", **kw)(x)
            elif self.upsample == "subpixel":
                x = SubpixelConv2d(features, name=f"conv{i}", **kw)(x)
            elif self.upsample == "bilinear":
                x = BilinearConv2d(features, name=f"conv{i}", **kw)(x)
            elif self.upsample == "conv_bilinear":
                x = resize2x(conv(features, 3, 1, 1, name=f"conv{i}", **kw)(x), "bilinear")
            else:
                x = conv(features, 3, 1, 1, name=f"conv{i}", **kw)(resize2x(x, self.upsample))
            if self.blur:
                x = blur(x)
            x = nn.relu(x)
        k, pad = self.out_kernel, (self.out_kernel - 1) // 2
        if self.upsample == "deconv":
            out = conv_t(3, k, 1, pad, name=f"deconv{len(self.channels)}", **kw)
        else:
            out = conv(3, k, 1, pad, name=f"conv{len(self.channels)}", **kw)
        face = out(x).astype(jnp.float32)
        if not self.coarse_cell:
            return (face, face) if with_network_face else face
        coarse = CoarseMap(coarse_size(self.coarse_cell), name="coarse")(embedding)
        drawn = with_coarse_face(face, coarse, self.coarse_cell)
        return (drawn, face) if with_network_face else drawn


class CoarseMap(nn.Module):
    """A fixed linear map, embedding `[B, D]` -> `[B, size]` float32: float32 `kernel [D, size]`
    and `bias [size]`, zero at initialisation, set from outside (`training/coarse_face.py`)
    and never trained (`stop_gradient`: their gradients are 0, so Adam leaves them)."""

    size: int

    @nn.compact
    def __call__(self, embedding):
        init = nn.initializers.zeros
        kernel = self.param("kernel", init, (embedding.shape[-1], self.size), jnp.float32)
        bias = self.param("bias", init, (self.size,), jnp.float32)
        kernel, bias = jax.lax.stop_gradient(kernel), jax.lax.stop_gradient(bias)
        return embedding.astype(jnp.float32) @ kernel + bias


def coarse_size(cell: int, image_size: int = 64) -> int:
    """Values of a face's coarse part at `cell`-pixel cells: `(image_size / cell)^2 * 3`."""
    return (image_size // cell) ** 2 * 3


def cell_means(faces, cell: int):
    """`[B, H, W, C]` -> `[B, H / cell, W / cell, C]`: the mean over each `cell` x `cell` block."""
    b, h, w, c = faces.shape
    return faces.reshape(b, h // cell, cell, w // cell, cell, c).mean((2, 4))


def with_coarse_face(faces, coarse, cell: int):
    """`faces [B, H, W, C]` with their cell means replaced by `coarse [B, (H/cell)*(W/cell)*C]`
    (row-major over cells, then channels), exactly, by adding a smooth image: a grid upsampled
    bilinearly (half-pixel centres), chosen so that the result's cell means are `coarse`. The
    face's detail within its cells stays."""
    b, h, w, c = faces.shape
    rows, cols = _cell_means_of_bilinear(h // cell, cell), _cell_means_of_bilinear(w // cell, cell)
    change = coarse.reshape(b, h // cell, w // cell, c) - cell_means(faces, cell)
    # Bilinear upsampling then cell means maps a grid g to rows @ g @ cols.T (per channel);
    # invert that, so the added image moves each cell mean by exactly `change`.
    grid = jnp.einsum("ij,bjkc,lk->bilc", np.linalg.inv(rows), change, np.linalg.inv(cols))
    return faces + jax.image.resize(grid, (b, h, w, c), "bilinear")


@functools.cache
def _cell_means_of_bilinear(cells: int, cell: int) -> np.ndarray:
    """`[cells, cells]` float64: entry (i, j) is the mean over output cell i of a 1-D signal of
    `cells` samples, all zero but sample j = 1, upsampled bilinearly by `cell`. Invertible: its
    eigenvalues lie in [0.5, 1] (an alternating signal keeps about half its amplitude)."""
    with jax.ensure_compile_time_eval():
        up = jax.image.resize(jnp.eye(cells, dtype=jnp.float32), (cells, cells * cell), "bilinear")
    return np.asarray(up, np.float64).reshape(cells, cells, cell).mean(-1).T


class FaceTrunk(nn.Module):
    """F: face `[B, 64, 64, 3]` -> feature `[B, out_dim]`.

    `kernel=4` is wen2019 (a 1x1 conv, four 4x4 stride-2 convs, a 4x4 valid conv); `kernel=3` is
    the paper's 3x3 trunk. LeakyReLU(0.2) between layers, none after the last.
    """

    channels: Sequence[int] = (32, 64, 128, 256, 512)
    out_dim: int = 64
    kernel: int = 4
    dtype: Dtype = jnp.float32
    convs: ops.conv.ConvForms = ops.conv.XLA

    @nn.compact
    def __call__(self, face):
        kw = dict(dtype=self.dtype, convs=self.convs)
        conv = ops.conv.Conv2d
        first_kernel = 1 if self.kernel == 4 else 3
        x = face.astype(self.dtype)
        x = conv(self.channels[0], first_kernel, 1, first_kernel // 2, name="conv0", **kw)(x)
        x = nn.leaky_relu(x, 0.2)
        for i, features in enumerate(self.channels[1:], start=1):
            x = conv(features, self.kernel, 2, 1, name=f"conv{i}", **kw)(x)
            x = nn.leaky_relu(x, 0.2)
        x = conv(self.out_dim, 4, 1, 0, name=f"conv{len(self.channels)}", **kw)(x)
        return x.reshape(x.shape[0], -1)


class Critics(nn.Module):
    """F with heads D (real/fake, one logit) and C (identity logits over `num_ids`).

    `shared_trunk=True` is wen2019: one F under both heads. False is the paper's: D and C each
    with their own trunk. Returns `(adv_logit [B], id_logits [B, num_ids])`, float32.
    """

    num_ids: int
    channels: Sequence[int] = (32, 64, 128, 256, 512)
    out_dim: int = 64
    kernel: int = 4
    shared_trunk: bool = True
    dtype: Dtype = jnp.float32
    convs: ops.conv.ConvForms = ops.conv.XLA

    def setup(self):
        trunk = dict(
            channels=self.channels,
            out_dim=self.out_dim,
            kernel=self.kernel,
            dtype=self.dtype,
            convs=self.convs,
        )
        if self.shared_trunk:
            self.trunk = FaceTrunk(**trunk)
        else:
            self.d_trunk = FaceTrunk(**trunk)
            self.c_trunk = FaceTrunk(**trunk)
        head = dict(
            use_bias=False, dtype=jnp.float32, kernel_init=ops.conv.torch_linear_init(self.out_dim)
        )
        self.d_head = nn.Dense(1, **head)
        self.c_head = nn.Dense(self.num_ids, **head)

    def __call__(self, face):
        if self.shared_trunk:
            d_feat = c_feat = self.trunk(face).astype(jnp.float32)
        else:
            d_feat = self.d_trunk(face).astype(jnp.float32)
            c_feat = self.c_trunk(face).astype(jnp.float32)
        return self.d_head(d_feat)[:, 0], self.c_head(c_feat)

    def features(self, face):
        """The (shared or identity) trunk's features `[B, out_dim]`."""
        trunk = self.trunk if self.shared_trunk else self.c_trunk
        return trunk(face).astype(jnp.float32)


class Networks:
    """The four networks of one config, built once; attributes are Flax modules.

    `convs` is the conv implementation `config.model.impl` names, resolved here for the
    default backend ("auto" per backend) and shared by every network.
    """

    def __init__(self, model_config: ml_collections.ConfigDict, num_ids: int):
        arch = model_config.arch
        if arch not in ("wen2019", "paper"):
            raise ValueError(f"config.model.arch must be 'wen2019' or 'paper', not {arch!r}")
        if num_ids < 1:
            raise ValueError(f"need at least one training identity, got num_ids={num_ids}")
        dtype = compute_dtype(model_config.dtype)
        self.convs = convs = ops.conv.forms_for(model_config.impl)
        self.arch = arch
        self.num_ids = num_ids
        self.embed_dim = model_config.embed_dim
        self.embedder = VoiceEmbedder(
            channels=tuple(model_config.voice_channels),
            embed_dim=model_config.embed_dim,
            dtype=dtype,
            convs=convs,
        )
        upsample, blur = generator_form(model_config)
        self.generator = Generator(
            channels=tuple(model_config.gen_channels),
            upsample=upsample,
            blur=blur,
            out_kernel=model_config.gen_out_kernel,
            coarse_cell=int(model_config.coarse_cell),
            dtype=dtype,
            convs=convs,
        )
        self.critics = Critics(
            num_ids=num_ids,
            channels=tuple(model_config.trunk_channels),
            out_dim=model_config.embed_dim,
            kernel=4 if arch == "wen2019" else 3,
            shared_trunk=arch == "wen2019",
            dtype=dtype,
            convs=convs,
        )
