"""G's last layer to RGB (`model.gen_out_kernel` k x k, stride 1, 64x64) computed two ways, side
by side: as im2col + one matmul (the CPU matmul forms' conv, `ops.cpu.matmul_conv.conv2d`) and
as XLA's conv. Both equal to float rounding. Forward and both gradients of
`configs/recipe.py:tiny`'s last layer at the GAN's batch, for k = 1, 3 and 5, and which of the two
the matmul forms take (`ops.conv.xla_conv_is_faster`). Prints a Markdown table on stderr and one
JSON line.

    python benchmarks/last_layer.py [--batch 64 --rounds 20]
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp

from v2f_jax import config_lib, ops
from v2f_jax.bench import timing

WAYS = {"im2col + matmul": ops.cpu.matmul_conv.conv2d, "XLA conv": ops.conv.conv2d}


def _grads_fn(conv, padding: int):
    def loss(x, kernel, bias):
        return jnp.sum(conv(x, kernel, 1, padding, bias) ** 2)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    channels = config_lib.load_config("configs/recipe.py:tiny").model.gen_channels[-1]
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, 64, 64, channels))
    rows = []
    for k in (1, 3, 5):
        shape, padding = (k, k, channels, 3), (k - 1) // 2
        inputs = (x, 0.1 * jax.random.normal(jax.random.PRNGKey(k), shape), jnp.zeros((3,)))
        row = {"kernel": k, "in": [64, 64, channels]}
        for way, conv in WAYS.items():
            grads = _grads_fn(conv, padding)
            row[way] = timing.median_warm_seconds(grads, inputs, args.rounds)
        taken_xla = ops.conv.xla_conv_is_faster(shape, 1, padding)
        row["taken"] = "XLA conv" if taken_xla else "im2col + matmul"
        rows.append(row)
    header = " | ".join(f"{w} (ms)" for w in WAYS)
    print(f"| last layer | {header} | the matmul forms take |", file=sys.stderr)
    print("|---" * (len(WAYS) + 2) + "|", file=sys.stderr)
    for r in rows:
        cells = " | ".join(f"{1000 * r[w]:.1f}" for w in WAYS)
        name = f"{r['kernel']}x{r['kernel']}, {channels} -> 3 at 64x64"
        print(f"| {name} | {cells} | {r['taken']} |", file=sys.stderr)
    out = {"batch": args.batch, "rounds": args.rounds, "backend": jax.default_backend()}
    print(json.dumps({**out, "layers": rows}))


if __name__ == "__main__":
    main()
