"""Exact reformulations of the convolutions for XLA:CPU, chosen through `ops.conv.ConvForms`.

Each computes what the plain XLA conv computes (to float rounding, with the same parameters);
they exist because XLA:CPU runs convolution gradients 3-30x slower than matmuls, runs a
gradient through a stride-dilated input slower still, and computes bfloat16 convolutions in
float32, while 2-D matmuls reach its matmul library (YNNPACK) and, for bfloat16, its bf16
dot-product instructions. Figures are in BENCHMARKS.md.

- `subpixel`: a strided transposed conv as one stride-1 XLA conv producing the `stride**2`
  output phases as channels, then depth-to-space.
- `im2col`: a conv as im2col (space-to-depth first when strided) + one matmul; a transposed conv
  as the sub-pixel conv in that form or, on small inputs where that wastes work, PyTorch's
  col2im (`x @ kernel`, then overlap-add); E's 1-D conv as im2col + one matmul.
- `winograd`: Winograd's F(2x2, 2x2) for float32 4x4 stride-2 layers (9 products per 2x2 output
  tile instead of 16), where measured faster.
- `matmul_conv`: the entry points, a conv and a transposed conv in the matmul form (Winograd's
  where it applies) with a custom VJP per layer.
- `dot`: the 2-D matmuls underneath, with float32 accumulation.
"""

from v2f_jax.ops.cpu import dot, im2col, matmul_conv, subpixel, winograd

__all__ = ["dot", "im2col", "matmul_conv", "subpixel", "winograd"]
