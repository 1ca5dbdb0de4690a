"""G's bilinear x2 layer computed five ways, side by side: as `ops.conv.bilinear_up_conv2d`
computes it (a 3x3 stride-2 transposed conv, then bilinear's [1, 3, 3, 1] / 4 smoothing), as four
3x3 phase kernels over the input and depth-to-space, or at the output's resolution (the
zero-padded input resized x2, then a 3x3 conv); each with XLA's convs or the CPU matmul forms'
(`ops.cpu.matmul_conv`). All equal to float rounding. Forward and backward of each of
`configs/recipe.py:tiny`'s x2 layers at the GAN's batch. Prints a Markdown table on stderr and
one JSON line.

    python benchmarks/bilinear_layer.py [--batch 64 --rounds 20]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from v2f_jax import config_lib, ops
from v2f_jax.bench import timing

# `_PHASES[phase, input tap, filter tap]` along one axis, from up[2i] = 3/4 x[i] + 1/4 x[i-1]
# and up[2i+1] = 3/4 x[i] + 1/4 x[i+1], input taps x[i-1..i+1].
_PHASES = np.array(
    [
        [[0.75, 0.25, 0.0], [0.25, 0.75, 0.75], [0.0, 0.0, 0.25]],  # even outputs
        [[0.25, 0.0, 0.0], [0.75, 0.75, 0.25], [0.0, 0.25, 0.75]],  # odd outputs
    ],
    np.float32,
)


def _phase_kernels(x, kernel, bias, conv):
    """The same layer as four 3x3 phase kernels over the input, then depth-to-space."""
    b, h, w, i = x.shape
    o = kernel.shape[-1]
    a = jnp.asarray(_PHASES)
    # Channels ordered (out, phase y, phase x).
    phases = jnp.einsum("pak,qbl,klio->abiopq", a, a, kernel).reshape(3, 3, i, 4 * o)
    y = conv(x, phases, 1, 1, jnp.repeat(bias, 4))
    return y.reshape(b, h, w, o, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, o)


def _at_output_resolution(x, kernel, bias, conv):
    """The same layer computed at the output's resolution."""
    b, h, w, i = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    up = jax.image.resize(padded, (b, 2 * h + 4, 2 * w + 4, i), "bilinear")[:, 1:-1, 1:-1]
    return conv(up, kernel, 1, 0, bias)


_MATMUL = ops.cpu.matmul_conv.conv2d
WAYS = {
    "transposed conv + smoothing, matmul (what runs)": functools.partial(
        ops.conv.bilinear_up_conv2d, transposed_conv=ops.cpu.matmul_conv.conv_transpose
    ),
    "transposed conv + smoothing, XLA": ops.conv.bilinear_up_conv2d,
    "phase kernels, matmul": functools.partial(_phase_kernels, conv=_MATMUL),
    "output res, XLA": functools.partial(_at_output_resolution, conv=ops.conv.conv2d),
    "output res, matmul": functools.partial(_at_output_resolution, conv=_MATMUL),
}


def _grads_fn(layer):
    return jax.jit(jax.grad(lambda *a: jnp.sum(layer(*a) ** 2), argnums=(0, 1, 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    channels = config_lib.load_config("configs/recipe.py:tiny").model.gen_channels
    rows = []
    for i in range(1, len(channels)):
        side = 2 ** (i + 1)  # G's first layer draws 4x4; each x2 layer doubles it
        keys = jax.random.split(jax.random.PRNGKey(i), 2)
        inputs = (
            jax.random.normal(keys[0], (args.batch, side, side, channels[i - 1])),
            0.1 * jax.random.normal(keys[1], (3, 3, channels[i - 1], channels[i])),
            jnp.zeros((channels[i],)),
        )
        row = {"layer": f"conv{i}", "in": [side, side, channels[i - 1]], "out_side": 2 * side}
        for way, fn in WAYS.items():
            row[way] = timing.median_warm_seconds(_grads_fn(fn), inputs, args.rounds)
        rows.append(row)
    rows.append({"layer": "all", "in": None, "out_side": None})
    rows[-1].update({way: sum(r[way] for r in rows[:-1]) for way in WAYS})
    print(
        "| layer (in -> out side) | " + " | ".join(f"{w} (ms)" for w in WAYS) + " |",
        file=sys.stderr,
    )
    print("|---" * (len(WAYS) + 1) + "|", file=sys.stderr)
    for r in rows:
        cells = " | ".join(f"{1000 * r[w]:.1f}" for w in WAYS)
        name = r["layer"] if r["in"] is None else f"{r['layer']} ({r['in']} -> {r['out_side']})"
        print(f"| {name} | {cells} |", file=sys.stderr)
    print(
        json.dumps(
            {
                "batch": args.batch,
                "rounds": args.rounds,
                "backend": jax.default_backend(),
                "layers": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
