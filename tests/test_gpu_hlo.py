"""What the step becomes for a GPU, checked on the CPU (issue #26, benchmarks/gpu_hlo.py).

- The lowered bfloat16 step feeds every transposed conv a filter XLA:GPU can turn into cuDNN's
  backward-input conv (a `reverse` of a bfloat16 value, never `convert(reverse(kernel))`); the
  check is shown to catch the old flip-then-cast form.
- With the CUDA plugin installed (`pip install -e '.[gpu-aot]'`), the step compiled for XLA's H100
  spec runs G's transposed convs as `__cudnn$convBackwardInput`, with no bfloat16 pad fusion
  feeding them; skipped where the plugin is not installed.
- The data-parallel step over the suite's fake CPU devices all-reduces exactly the trainable
  parameters' float32 bytes per step (the figure the README's scaling paragraph uses).
"""

import importlib.util
import pathlib
import sys

import jax
import pytest

from v2f_jax.ops import conv

REPO = pathlib.Path(__file__).resolve().parents[1]


def _gpu_hlo():
    spec = importlib.util.spec_from_file_location("gpu_hlo", REPO / "benchmarks" / "gpu_hlo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_hlo = _gpu_hlo()


def _lowered_bf16_step_text(batch=8, frames=64):
    config = gpu_hlo.step_config(batch, "bfloat16", num_ids=16)
    lowered = gpu_hlo.lower_step(config, jax.devices("cpu")[:1], frames)
    return lowered.as_text(dialect="hlo")


def test_transposed_conv_filters_are_plain_reverses_in_the_bf16_step():
    problems, checked = gpu_hlo.deconv_filter_problems(_lowered_bf16_step_text())
    assert not problems, "\n".join(problems)
    # G's four stride-2 deconvs, and the input gradients of F's strided convs in both updates.
    assert checked >= 4


def test_the_check_catches_flip_then_cast(monkeypatch):
    monkeypatch.setattr(conv, "conv_transpose", gpu_hlo.flip_then_cast_conv_transpose)
    problems, _ = gpu_hlo.deconv_filter_problems(_lowered_bf16_step_text())
    # G's five transposed convs (deconv5, 1x1 and float32-free of a flip, excepted).
    assert sum("convert(reverse" in p for p in problems) >= 4, problems


def test_cast_then_flip_gives_the_same_numbers():
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (2, 4, 4, 8), jax.numpy.bfloat16)
    kernel = jax.random.normal(jax.random.fold_in(key, 1), (4, 4, 8, 6))
    ours = conv.conv_transpose(x, kernel, 2, 1)
    old = gpu_hlo.flip_then_cast_conv_transpose(x, kernel, 2, 1)
    assert ours.dtype == old.dtype == jax.numpy.bfloat16
    assert bool((ours == old).all())


def test_hlo_parser_reads_a_cudnn_conv_call():
    text = """HloModule m

ENTRY %main (p0: bf16[8,4,4,64], p1: bf16[4,4,32,64]) -> bf16[8,8,8,32] {
  %p0 = bf16[8,4,4,64]{3,2,1,0} parameter(0)
  %p1 = bf16[4,4,32,64]{3,2,1,0} parameter(1)
  %c = (bf16[8,8,8,32]{3,2,1,0}, u8[0]{0}) custom-call(%p0, %p1), window={size=4x4 stride=2x2 \
pad=1_1x1_1}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convBackwardInput", \
metadata={op_name="jit(step)/jvp(Generator)/deconv1/conv_general_dilated"}
  ROOT %g = bf16[8,8,8,32]{3,2,1,0} get-tuple-element(%c), index=0
}
"""
    (kernel,) = gpu_hlo.gpu_kernels(text)
    assert (kernel.kind, kernel.network, kernel.dtype) == ("cudnn:bwd-input", "G", "bf16")
    # The forward conv it stands for: [8,8,8,32] -> [8,4,4,64] with a 4x4x32x64 filter.
    assert kernel.flops == 2 * (8 * 4 * 4 * 64) * (4 * 4 * 32)
    assert kernel.bytes == 2 * (8 * 4 * 4 * 64 + 4 * 4 * 32 * 64 + 8 * 8 * 8 * 32)


@pytest.mark.skipif(gpu_hlo.plugin_missing() is not None, reason=str(gpu_hlo.plugin_missing()))
def test_g_deconvs_compile_to_cudnn_backward_input_for_the_h100():
    result = gpu_hlo.compile_for_gpu("h100", 32, "bfloat16", frames=300, keep_text=True)
    kernels = [gpu_hlo.Kernel(**k) for k in result["kernel_list"]]
    deconvs = [
        k
        for k in kernels
        if k.kind.startswith("cudnn:")
        and "jvp(Generator)/deconv" in k.op_name
        and "transpose(" not in k.op_name
    ]
    # deconv0-4 (deconv5 is a 1x1 conv: XLA may make it a forward conv or a gemm).
    g_forward = {k.op_name.split("/")[2] for k in deconvs}
    assert {f"deconv{i}" for i in range(5)} <= g_forward, deconvs
    assert all(k.kind == "cudnn:bwd-input" for k in deconvs if k.op_name.split("/")[2] != "deconv5")
    # Nothing pads a bfloat16 input for them: no dilated-input forward conv is left.
    module = gpu_hlo.parse_hlo(result["hlo_text"])
    instrs = {i.name: i for comp in module.computations.values() for i in comp}
    pads = {k.name for k in kernels if k.pad and k.dtype == "bf16"}
    for k in deconvs:
        assert not pads & set(instrs[k.name].operands), k
    assert result["executed_conv_gemm_flops"] < 1.25 * result["model_flops"]


def test_the_data_parallel_step_all_reduces_the_trainable_float32_parameters():
    n = len(jax.devices("cpu"))
    assert n >= 2  # tests/conftest.py's fake devices
    result = gpu_hlo.compile_collectives(n, 2, "bfloat16", frames=64)
    all_reduce = result["summary"]["all-reduce"]
    # One all-reduce per update (critics, then G): float32 gradients even in a bfloat16 step,
    # with the losses' partial sums (a few float32 scalars) combined into them.
    assert set(all_reduce["bytes_by_dtype"]) == {"f32"}
    scalars = all_reduce["bytes"] - result["trainable_float32_bytes"]
    assert 0 <= scalars <= 64 and scalars % 4 == 0, scalars
    assert result["trainable_parameters"]["generator"] == 12_191_875
