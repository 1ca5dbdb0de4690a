"""The wen2019 training step as XLA compiles it for an H100 or H200, read on a CPU host.

No GPU is needed: the CUDA PJRT plugin compiles for a GPU described by XLA's own target spec
(`benchmarks/gpu_specs/`, copied from openxla/xla) without a device or driver ("deviceless AOT").
The step is built exactly as `v2f bench` builds it (`v2f_jax.bench.step`, `parallel.DataParallel`)
with `model.impl="xla"` (on a CPU host "auto" would pick the CPU forms) and lowered from
`ShapeDtypeStruct`s sharded over the GPU topology's devices.

Install (a venv of its own; jax[cuda12-local] brings the plugin without nvidia-* wheels, and
nothing runs on a GPU), then run (about 15 s of compile per row on a 2-core CPU):

    python3 -m venv ../aot-venv && ../aot-venv/bin/pip install -e '.[test,gpu-aot]'
    ../aot-venv/bin/python benchmarks/gpu_hlo.py --json gpu_hlo.json
    ../aot-venv/bin/python benchmarks/gpu_hlo.py --collectives --gpu-topology --dtypes bfloat16
    ../aot-venv/bin/python -m pytest tests/test_gpu_hlo.py   # the H100 test runs only here

Modes:
  (default)      for each GPU spec x dtype x batch: kernels, cuDNN conv calls per network, the
                 pad/transpose fusions left, memory (`memory_analysis`), and a roofline estimate
                 of the step time, samples/s and MFU. A Markdown table on stdout.
  --collectives  the data-parallel step compiled for `--devices` fake CPU devices (a fresh
                 process: `jax_num_cpu_devices`): every collective, count and bytes by dtype; then
                 ring all-reduce traffic per device at 8, 64 and 256 devices against NVLink,
                 InfiniBand and TPU ICI at the estimated step time.

The estimate (a roofline per kernel, summed; kernels run one after another on one stream):
  t_step = sum over kernels of max(FLOPs_k / peak(dtype_k), bytes_k / HBM bandwidth) + launch.
  - Kernels: every fusion, custom call (cuDNN conv, cuBLAS, Triton gemm), device copy and
    collective outside fused computations, as the compiled GPU HLO lists them (`lax.scan` bodies
    once). `kernels` in the table is `v2f_jax.bench.hlo.hlo_kernels` (fusions + custom calls,
    the figure `v2f bench` reports); copies are memcpys, costed but not counted there.
  - FLOPs_k: cuDNN convs 2 x |conv output| x |filter| / filter out-features, from the operand and
    result shapes and `dim_labels` of the custom call (the forward conv a backward-input or
    backward-filter call stands for): the FLOPs executed, zeros of a dilated input included,
    padding's zeros included (XLA's cost analysis skips those, so executed >= model FLOPs);
    gemms (cuBLAS calls, Triton gemm fusions) 2 x |output| x contracted size. Element-wise and
    reduction fusions: 0 FLOPs (they are bound by their bytes on these GPUs).
  - bytes_k: every operand's and result's full size, read and written once (cuDNN's scratch
    buffer left out; a fusion that reads a slice of an operand is charged the whole operand;
    L2 reuse between kernels ignored); a copy reads and writes its size.
  - peak(dtype): the GPU's dense tensor-core rate for a conv/gemm whose inputs are bfloat16;
    float32 convs/gemms run as TF32 on tensor cores under `model.matmul_precision="default"`
    (JAX's and XLA:GPU's default), at the non-tensor FP32 rate under "highest". The rates come
    from the spec (`matrix_unit_description` / `scalar_unit_description`: SMs x units x ops per
    clock x clock x 2 for a fused multiply-add) and match NVIDIA's datasheets: H100 and H200 SXM
    989 TFLOP/s dense BF16, 495 TF32, 67 FP32 (H100 datasheet: 1979 / 989 with sparsity, 67).
  - HBM bandwidth: the spec's `memory_bandwidth`, H100 SXM 3.35 TB/s, H200 4.8 TB/s (datasheets:
    3.35 and 4.8 TB/s).
  - launch: 1 us per kernel or copy, 5 us per collective: XLA's own GPU cost model's constants
    (`kKernelLaunchOverhead`, `kNcclKernelLaunchOverhead` in
    xla/service/gpu/model/gpu_performance_model_base.h). `--launch-us` changes the first.
  - MFU: the step's model FLOPs (XLA's cost analysis of the same step lowered for the CPU: the
    GPU executable's cost analysis is empty) / (t_step x peak of the compute dtype).
  A roofline is a lower bound on time: real cuDNN kernels reach perhaps 50-80% of peak on these
  small-channel layers, so read the samples/s as a ceiling and measure (`v2f bench`,
  `benchmarks/gpu_check.sh`) where a GPU is at hand.

Interconnect constants (--collectives; per device, one direction):
  - H100 SXM NVLink 4: 900 GB/s bidirectional per GPU (NVIDIA H100 datasheet) -> 450 GB/s, for
    the 8 GPUs of one HGX/DGX node.
  - Beyond a node: one 400 Gb/s NDR InfiniBand NIC per GPU (DGX H100) -> 50 GB/s. NCCL's rings
    cross each node boundary once per ring, one ring per NIC: the all-reduce moves 2 (m - 1) / m
    x its bytes over a node's 8 NICs (m nodes); an all-to-all's bytes leave over each GPU's NIC.
  - TPU v5p ICI: 1200 GB/s bidirectional per chip (Cloud TPU v5p docs) -> 600 GB/s; v5e: 400 GB/s
    bidirectional per chip (Cloud TPU v5e docs) -> 200 GB/s. TPU step times are the H100 kernel
    list re-costed at the chip's bf16 peak (v5p 459, v5e 197 TFLOP/s) and HBM bandwidth (v5p
    2765, v5e 819 GB/s) with no launch cost: a paper figure.
  - Ring all-reduce: each device sends (and receives) 2 (n - 1) / n x the reduced bytes. TPU
    ICI figures are the chip's aggregate over its links: optimistic (a ring along one torus
    dimension uses 1/3 of v5p's links, 1/2 of v5e's).
  - Per-device batch fixed as devices grow (the global batch grows); the step time is the
    one-device estimate at that batch.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import pathlib
import re
import sys
import time

SPECS = pathlib.Path(__file__).resolve().parent / "gpu_specs"
GPUS = {"h100": "h100_sxm.txtpb", "h200": "h200.txtpb"}
# Fields of newer XLA specs that an older plugin's GpuTargetConfigProto does not know; dropped
# (and reported) only if the spec as written is refused.
_NEWER_SPEC_FIELDS = ("collective_memory_granularity",)
FRAMES = 800  # wen2019's longest crop: what `v2f bench` times by default
LAUNCH_S = 1e-6  # XLA's kKernelLaunchOverhead
COLLECTIVE_LAUNCH_S = 5e-6  # XLA's kNcclKernelLaunchOverhead
NETWORKS = (("VoiceEmbedder", "E"), ("Generator", "G"), ("Critics", "D/C"))
CUDNN = {
    "__cudnn$convForward": "fwd",
    "__cudnn$convBiasActivationForward": "fwd+bias",
    "__cudnn$convBackwardInput": "bwd-input",
    "__cudnn$convBackwardFilter": "bwd-filter",
}
COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)
_FREE = {
    "parameter",
    "constant",
    "get-tuple-element",
    "tuple",
    "bitcast",
    "after-all",
    "add-dependency",
    "opt-barrier",
    "partition-id",
    "replica-id",
}
_CONTROL = {"call", "while", "conditional"}
_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2}
_BYTES |= {"bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8}
_BYTES |= {"c128": 16}
# Interconnects, bytes/s per device in one direction (module docstring).
LINKS = {
    "H100 NVLink4": 450e9,
    "H100 IB NDR/GPU": 50e9,
    "TPU v5p ICI": 600e9,
    "TPU v5e ICI": 200e9,
}
TPUS = {"v5p": (459e12, 2765e9), "v5e": (197e12, 819e9)}  # bf16 peak FLOP/s, HBM bytes/s


# ---------------------------------------------------------------------------------------------
# HLO text


@dataclasses.dataclass
class Instr:
    """One HLO instruction: `name = shape opcode(operands), attrs`."""

    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    computation: str

    @property
    def op_name(self) -> str:
        found = re.search(r'op_name="([^"]*)"', self.attrs)
        return found.group(1) if found else ""

    def attr(self, key: str) -> str | None:
        found = re.search(rf"\b{key}=(%?[\w.\-$]+|\{{[^}}]*\}})", self.attrs)
        return found.group(1) if found else None

    def called(self) -> list[str]:
        """Computations this instruction calls (fusion body, reducer, loop body, branches)."""
        names = re.findall(
            r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)",
            self.attrs,
        )
        for group in re.findall(r"branch_computations=\{([^}]*)\}", self.attrs):
            names += [n.strip().lstrip("%") for n in group.split(",")]
        return names


@dataclasses.dataclass
class HloModule:
    computations: dict[str, list[Instr]]
    entry: str

    def table(self, computation: str) -> dict[str, Instr]:
        return {i.name: i for i in self.computations[computation]}


def _closing(text: str, start: int) -> int:
    """Index of the bracket closing the one at `text[start]`."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "({":
            depth += 1
        elif text[i] in ")}":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced brackets in {text[:120]!r}")


def parse_hlo(text: str) -> HloModule:
    """HLO text (`Lowered.as_text(dialect="hlo")` or `Compiled.as_text()`) -> its instructions."""
    computations: dict[str, list[Instr]] = {}
    entry = ""
    current = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("HloModule"):
            continue
        if not line[0].isspace():
            if line.startswith("}"):
                current = None
                continue
            head = line.split()
            is_entry = head[0] == "ENTRY"
            current = head[1 if is_entry else 0].lstrip("%")
            computations[current] = []
            entry = current if is_entry else entry
            continue
        found = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*", line)
        if current is None or not found:
            continue
        rest = line[found.end() :]
        if rest.startswith("("):
            end = _closing(rest, 0)
            shape, rest = rest[: end + 1], rest[end + 1 :].lstrip()
        else:
            shape, _, rest = rest.partition(" ")
        op = re.match(r"([a-z][\w\-]*)\(", rest)
        if not op:
            continue
        close = _closing(rest, op.end() - 1)
        operands = [
            tok.split()[-1].lstrip("%") for tok in _split_top(rest[op.end() : close]) if tok.strip()
        ]
        computations[current].append(
            Instr(found.group(1), shape, op.group(1), operands, rest[close + 1 :], current)
        )
    if not entry and computations:
        entry = list(computations)[-1]
    return HloModule(computations, entry)


def _split_top(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """`bf16[8,4]{1,0}` or a tuple of them -> [(dtype, dims), ...]."""
    out = []
    for dtype, dims in re.findall(r"\b([a-z][a-z0-9]*)\[([\d,]*)\]", shape):
        out.append((dtype, tuple(int(d) for d in dims.split(",") if d)))
    return out


def nbytes(shape: str, skip_u8: bool = False) -> float:
    total = 0.0
    for dtype, dims in arrays(shape):
        if skip_u8 and dtype == "u8":
            continue
        total += _BYTES.get(dtype, 4) * math.prod(dims)
    return total


def numel(shape: str) -> int:
    first = arrays(shape)
    return math.prod(first[0][1]) if first else 0


# ---------------------------------------------------------------------------------------------
# The hazard of issue #26 (section 1), in the lowered step


def deconv_filter_problems(hlo_text: str) -> tuple[list[str], int]:
    """Convolutions whose filter XLA:GPU cannot take for a transposed conv.

    XLA:GPU's conv rewriter makes cuDNN's backward-input conv of a conv over an input-dilated
    (`lhs_dilate`) input only when its filter is a plain `reverse`; `convert(reverse(kernel))`
    (a flipped float32 kernel cast to bfloat16) leaves a forward conv over the zero-dilated
    input (4x the FLOPs of a stride-2 layer). Checked on the lowered, unoptimised HLO:
    - no convolution's filter is `convert(reverse(...))`;
    - every input-dilated convolution that computes activations (its output batch-major, not a
      kernel gradient) has a filter that is a `reverse` of a value already of the conv's dtype.

    Returns:
      (problems, the number of input-dilated activation convs checked).
    """
    module = parse_hlo(hlo_text)
    callers = collections.defaultdict(list)  # computation -> call instructions
    tables = {name: module.table(name) for name in module.computations}
    for instrs in module.computations.values():
        for instr in instrs:
            if instr.opcode == "call":
                for name in instr.called():
                    callers[name].append(instr)

    def producer(name: str, computation: str) -> Instr | None:
        instr = tables[computation].get(name)
        # A parameter of a called computation is its call's operand (one caller: jit's calls).
        while instr is not None and instr.opcode == "parameter" and callers.get(computation):
            index = int(instr.operands[0]) if instr.operands else 0
            call = callers[computation][0]
            computation = call.computation
            instr = tables[computation].get(call.operands[index])
        return instr

    problems, checked = [], 0
    for comp, instrs in module.computations.items():
        for conv in instrs:
            if conv.opcode != "convolution" or len(conv.operands) < 2:
                continue
            kernel = producer(conv.operands[1], comp)
            if kernel is None:
                continue
            inner = producer(kernel.operands[0], kernel.computation) if kernel.operands else None
            if kernel.opcode == "convert" and inner is not None and inner.opcode == "reverse":
                problems.append(f"{conv.name}: filter {kernel.name} is convert(reverse(...))")
                continue
            window = conv.attr("window") or ""
            lhs = re.search(r"lhs_dilate=([\dx]+)", window)
            labels = re.search(r"dim_labels=\w+_\w+->(\w+)", conv.attrs)
            dilated = lhs and any(int(f) > 1 for f in lhs.group(1).split("x"))
            if not dilated or not labels or not labels.group(1).startswith("b"):
                continue
            checked += 1
            conv_dtype = arrays(conv.shape)[0][0]
            kernel_dtype = arrays(kernel.shape)[0][0] if arrays(kernel.shape) else "?"
            if kernel.opcode != "reverse" or kernel_dtype != conv_dtype:
                problems.append(
                    f"{conv.name} ({conv_dtype}, lhs_dilate={lhs.group(1)}): filter {kernel.name}"
                    f" is {kernel.opcode} ({kernel_dtype}), not a reverse of a {conv_dtype} value"
                )
    return problems, checked


def flip_then_cast_conv_transpose(x, kernel, stride: int, padding: int, bias=None):
    """`ops.conv.conv_transpose` as it was before issue #26 (flip, then cast): the hazard, kept
    to measure it (`--flip-then-cast`) and to prove the check above catches it."""
    import jax

    from v2f_jax.ops import conv

    edge = kernel.shape[0] - 1 - padding
    y = jax.lax.conv_general_dilated(
        x,
        kernel[::-1, ::-1].astype(x.dtype),
        window_strides=(1, 1),
        padding=((edge, edge), (edge, edge)),
        lhs_dilation=(stride, stride),
        dimension_numbers=conv._DIMS,
    )
    return y if bias is None else y + bias.astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# Building and lowering the step


def step_config(batch: int, dtype: str, matmul_precision: str = "default", num_ids: int = 0):
    """configs/wen2019.py with `v2f bench`'s overrides and `model.impl="xla"`."""
    from v2f_jax.bench import step
    from v2f_jax.configs import wen2019

    config = step.apply_step_overrides(
        wen2019.get_config(),
        batch_size=batch,
        dtype=dtype,
        impl="xla",
        matmul_precision=matmul_precision,
        parallel_mode="jit",
    )
    config.model.num_ids = num_ids or step.DEFAULT_NUM_IDS
    return config


def abstract_step(config, devices, frames: int = FRAMES):
    """(the jitted data-parallel step over `devices`, its state and batch as sharded
    ShapeDtypeStructs, the DataParallel). Nothing is allocated: lowering only."""
    import jax

    from v2f_jax import models, parallel, train_step
    from v2f_jax import state as state_lib
    from v2f_jax.bench import step

    nets = models.Networks(config.model, config.model.num_ids)
    dp = parallel.DataParallel(
        lambda axis_name: train_step.make_gan_step(config, nets, axis_name),
        "jit",
        devices=list(devices),
    )
    shapes = jax.eval_shape(lambda: state_lib.create_gan_state(config, nets))
    state = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=dp.replicated), shapes
    )
    host = step.synthetic_batch(
        config.train.batch_size,
        frames,
        config.model.num_ids,
        config.data.n_mels,
        config.data.image_size,
    )
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=dp.batch_sharding)
        for k, v in host.items()
    }
    return dp.step, state, batch, dp


def lower_step(config, devices, frames: int = FRAMES):
    jitted, state, batch, _ = abstract_step(config, devices, frames)
    return jitted.lower(state, batch)


def model_flops(config, frames: int = FRAMES) -> float | None:
    """FLOPs of one step (all devices), XLA's cost analysis of the step lowered for one CPU."""
    import jax

    lowered = lower_step(config, jax.devices("cpu")[:1], frames)
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def plugin_missing() -> str | None:
    """Why the deviceless GPU compile cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("jax_cuda12_plugin") is None:
        return (
            "jax-cuda12-plugin is not installed: pip install -e '.[gpu-aot]' (jax[cuda12-local],"
            " no nvidia-* wheels) in a venv of its own"
        )
    return None


def read_spec(gpu: str) -> str:
    path = pathlib.Path(gpu) if gpu not in GPUS else SPECS / GPUS[gpu]
    return path.read_text()


def gpu_devices(gpu: str = "h100", topology: str = "1x1x1"):
    """The compile-only devices of a CUDA topology ("slices x hosts x devices per host") for the
    spec `gpu` ("h100", "h200" or a .txtpb path). Returns (devices, spec fields dropped)."""
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    import jax
    from jax.experimental import topologies

    spec = read_spec(gpu)
    dropped: list[str] = []
    try:
        topo = topologies.get_topology_desc(platform="cuda", topology=topology, target_config=spec)
    except jax.errors.JaxRuntimeError as err:
        if "target_config" not in str(err):
            raise
        dropped = [f for f in _NEWER_SPEC_FIELDS if re.search(rf"^\s*{f}:", spec, re.M)]
        for field in dropped:
            spec = re.sub(rf"^\s*{field}:.*\n", "", spec, flags=re.M)
        topo = topologies.get_topology_desc(platform="cuda", topology=topology, target_config=spec)
    return topo.devices, dropped


@dataclasses.dataclass
class GpuSpec:
    name: str
    memory: float  # bytes
    bandwidth: float  # bytes/s
    peak: dict[str, float]  # "bf16", "tf32", "fp32" -> FLOP/s

    @classmethod
    def read(cls, gpu: str) -> GpuSpec:
        text = read_spec(gpu)
        info = re.search(r"gpu_device_info \{(.*)\n\}", text, re.S).group(1)
        cores = int(re.search(r"\bcore_count: (\d+)", info).group(1))

        def rate(unit: str, key: int) -> float:
            block = re.search(rf"{unit} \{{(.*?)\n  \}}", info, re.S).group(1)
            entry = re.search(rf"key: {key}\s+value \{{([^}}]*)\}}", block).group(1)
            clock = float(re.search(r"clock_rate_ghz: ([\d.]+)", entry).group(1)) * 1e9
            units = int(re.search(r"units_per_core: (\d+)", entry).group(1))
            ops = int(re.search(r"ops_per_clock: (\d+)", entry).group(1))
            return cores * units * ops * clock * 2  # a fused multiply-add is 2 FLOPs

        # Keys are XLA's PrimitiveType numbers: 11 F32, 16 BF16.
        return cls(
            name=re.search(r'\bname: "([^"]+)"', info).group(1),
            memory=float(re.search(r"device_memory_size: (\d+)", info).group(1)),
            bandwidth=float(re.search(r"memory_bandwidth: (\d+)", info).group(1)),
            peak={
                "bf16": rate("matrix_unit_description", 16),
                "tf32": rate("matrix_unit_description", 11),
                "fp32": rate("scalar_unit_description", 11),
            },
        )


# ---------------------------------------------------------------------------------------------
# What the compiled GPU step is made of


@dataclasses.dataclass
class Kernel:
    name: str
    opcode: str  # fusion, custom-call, copy, all-reduce-start, ...
    kind: str  # "fusion:kLoop", "cudnn:bwd-input", "gemm", "copy", "all-reduce", ...
    network: str  # E, G, D/C, other
    op_name: str
    flops: float
    bytes: float
    dtype: str  # the conv/gemm input dtype, else the result's
    pad: bool = False
    transpose: bool = False


def network_of(op_name: str) -> str:
    for module, short in NETWORKS:
        if f"({module})" in op_name or f"/{module}/" in op_name:
            return short
    return "other"


def _conv_flops(instr: Instr, target: str, shapes: dict[str, str]) -> tuple[float, str]:
    """Executed FLOPs of a cuDNN conv call and its input dtype (module docstring)."""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", instr.attrs)
    ops = [shapes.get(o, "") for o in instr.operands]
    result = "".join(f"{d}[{','.join(map(str, s))}]" for d, s in arrays(instr.shape)[:1])
    if target == "__cudnn$convBackwardInput":
        out, rhs = ops[0], ops[1]
    elif target == "__cudnn$convBackwardFilter":
        out, rhs = ops[1], result
    else:
        out, rhs = result, ops[1]
    rhs_dims = arrays(rhs)[0][1]
    o = rhs_dims[labels.group(2).index("o")]
    dtype = arrays(ops[0])[0][0] if ops and arrays(ops[0]) else "f32"
    return 2.0 * numel(out) * math.prod(rhs_dims) / o, dtype


def _dot_flops(module: HloModule, computation: str, seen=None) -> tuple[float, str]:
    """FLOPs of the dots in a fused computation (and the ones it calls), their input dtype."""
    seen = seen if seen is not None else set()
    if computation in seen or computation not in module.computations:
        return 0.0, ""
    seen.add(computation)
    table = module.table(computation)
    flops, dtype = 0.0, ""
    for instr in module.computations[computation]:
        if instr.opcode in ("dot", "scaled-dot"):
            lhs = arrays(table[instr.operands[0]].shape)[0]
            contracted = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instr.attrs)
            dims = [int(d) for d in contracted.group(1).split(",") if d] if contracted else []
            flops += 2.0 * numel(instr.shape) * math.prod(lhs[1][d] for d in dims)
            dtype = dtype or lhs[0]
        for called in instr.called():
            f, d = _dot_flops(module, called, seen)
            flops, dtype = flops + f, dtype or d
    return flops, dtype


def _fused_opcodes(module: HloModule, computation: str, seen=None) -> set[str]:
    seen = seen if seen is not None else set()
    if computation in seen or computation not in module.computations:
        return set()
    seen.add(computation)
    found = set()
    for instr in module.computations[computation]:
        found.add(instr.opcode)
        if instr.opcode == "fusion":
            for called in instr.called():
                found |= _fused_opcodes(module, called, seen)
    return found


def gpu_kernels(hlo_text: str) -> list[Kernel]:
    """The kernels of a compiled GPU executable, in program order, with FLOPs and bytes."""
    module = parse_hlo(hlo_text)
    kernels: list[Kernel] = []

    def walk(computation: str):
        instrs = module.computations.get(computation, [])
        shapes = {i.name: i.shape for i in instrs}
        for instr in instrs:
            op = instr.opcode
            if op in _FREE or op.endswith("-done"):
                continue
            if op in _CONTROL:
                for called in instr.called():
                    if op != "call" or "command_buffer" in called or called in module.computations:
                        walk(called)
                continue
            moved = sum(nbytes(shapes.get(o, "")) for o in instr.operands)
            moved += nbytes(instr.shape, skip_u8=op == "custom-call")
            result_dtype = arrays(instr.shape)[0][0] if arrays(instr.shape) else ""
            kernel = Kernel(
                instr.name,
                op,
                op,
                network_of(instr.op_name),
                instr.op_name,
                0.0,
                moved,
                result_dtype,
            )
            if op == "custom-call":
                target = instr.attr("custom_call_target") or ""
                target = target.strip('"')
                found = re.search(r'custom_call_target="([^"]+)"', instr.attrs)
                target = found.group(1) if found else target
                if target in CUDNN:
                    kernel.kind = f"cudnn:{CUDNN[target]}"
                    kernel.flops, kernel.dtype = _conv_flops(instr, target, shapes)
                elif "gemm" in target or "matmul" in target:
                    kernel.kind = "gemm"
                    lhs = arrays(shapes.get(instr.operands[0], ""))[0]
                    dims = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', instr.attrs)
                    dims = [int(d.strip('" ')) for d in dims.group(1).split(",") if d.strip()]
                    kernel.flops = 2.0 * numel(instr.shape) * math.prod(lhs[1][d] for d in dims)
                    kernel.dtype = lhs[0]
                else:
                    kernel.kind = f"custom-call:{target}"
            elif op == "fusion":
                found = re.search(r"kind=(k\w+)", instr.attrs)
                kernel.kind = f"fusion:{found.group(1) if found else '?'}"
                called = instr.called()
                inside = set()
                for name in called:
                    inside |= _fused_opcodes(module, name)
                    flops, dtype = _dot_flops(module, name)
                    if flops:
                        kernel.kind, kernel.flops, kernel.dtype = "gemm", flops, dtype
                kernel.pad = "pad" in inside
                kernel.transpose = "transpose" in inside or "transpose" in instr.name
            elif op == "copy" or op == "copy-start":
                kernel.kind = "copy"
            elif any(op.startswith(c) for c in COLLECTIVES):
                kernel.kind = op.removesuffix("-start")
            kernels.append(kernel)

    walk(module.entry)
    return kernels


def roofline(
    kernels: list[Kernel],
    peak: dict[str, float],
    bandwidth: float,
    launch_s: float,
    fp32_peak: str = "tf32",
    collective_launch_s: float = COLLECTIVE_LAUNCH_S,
) -> dict:
    """Seconds of the step: each kernel's max(FLOPs / peak, bytes / bandwidth) + its launch."""
    compute = memory = launch = total = 0.0
    for k in kernels:
        rate = peak["bf16"] if k.dtype in ("bf16", "f16") else peak[fp32_peak]
        t_flops = k.flops / rate if k.flops else 0.0
        t_bytes = k.bytes / bandwidth
        cost = collective_launch_s if k.kind in COLLECTIVES else launch_s
        if t_flops >= t_bytes:
            compute += t_flops
        else:
            memory += t_bytes
        launch += cost
        total += max(t_flops, t_bytes) + cost
    return {
        "step_s": total,
        "compute_bound_s": compute,
        "memory_bound_s": memory,
        "launch_s": launch,
    }


def summarize(kernels: list[Kernel]) -> dict:
    """Counts: cuDNN calls per network, pad and transpose fusions, executed FLOPs."""
    cudnn = collections.Counter(
        (k.network, k.kind.removeprefix("cudnn:")) for k in kernels if k.kind.startswith("cudnn:")
    )
    per_net: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for (net, kind), n in sorted(cudnn.items()):
        per_net[net][kind] = n
    pads = [k for k in kernels if k.kind.startswith("fusion") and k.pad]
    transposes = [k for k in kernels if k.kind.startswith("fusion") and k.transpose and not k.pad]
    return {
        "fusions": sum(k.opcode == "fusion" for k in kernels),  # Triton gemm fusions too
        "custom_calls": sum(k.opcode == "custom-call" for k in kernels),
        "copies": sum(k.kind == "copy" for k in kernels),
        "cudnn_per_network": dict(per_net),
        "pad_fusions": len(pads),
        "pad_fusions_by_dtype": dict(collections.Counter(k.dtype for k in pads)),
        "pad_fusions_mb": sum(k.bytes for k in pads) / 1e6,
        "transpose_fusions": len(transposes),
        "transpose_fusions_mb": sum(k.bytes for k in transposes) / 1e6,
        "executed_conv_gemm_flops": sum(k.flops for k in kernels),
        "bytes": sum(k.bytes for k in kernels),
    }


def compile_for_gpu(
    gpu: str,
    batch: int,
    dtype: str,
    *,
    launch_s: float = LAUNCH_S,
    matmul_precision: str = "default",
    frames: int = FRAMES,
    flip_then_cast: bool = False,
    keep_text: bool = False,
) -> dict:
    """The step compiled for one GPU spec: its kernels, memory and roofline estimate."""
    from v2f_jax.bench import hlo
    from v2f_jax.ops import conv

    spec = GpuSpec.read(gpu)
    devices, dropped = gpu_devices(gpu)
    config = step_config(batch, dtype, matmul_precision)
    original = conv.conv_transpose
    if flip_then_cast:
        conv.conv_transpose = flip_then_cast_conv_transpose
    try:
        start = time.perf_counter()
        lowered = lower_step(config, devices, frames)
        lower_s = time.perf_counter() - start
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start - lower_s
        flops = model_flops(config, frames)
    finally:
        conv.conv_transpose = original
    text = compiled.as_text()
    kernels = gpu_kernels(text)
    mem = compiled.memory_analysis()
    memory = {
        "arguments": mem.argument_size_in_bytes,
        "outputs": mem.output_size_in_bytes,
        "aliased": mem.alias_size_in_bytes,
        "temps": mem.temp_size_in_bytes,
    }
    memory["peak"] = memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temps"]
    fp32_peak = "fp32" if matmul_precision == "highest" else "tf32"
    time_s = roofline(kernels, spec.peak, spec.bandwidth, launch_s, fp32_peak)
    rate = spec.peak["bf16" if dtype == "bfloat16" else fp32_peak]
    out = {
        "gpu": spec.name,
        "spec": gpu,
        "spec_fields_dropped": dropped,
        "batch": batch,
        "dtype": dtype,
        "matmul_precision": matmul_precision,
        "frames": frames,
        "deconv_form": "flip-then-cast" if flip_then_cast else "cast-then-flip",
        "lower_s": lower_s,
        "compile_s": compile_s,
        "kernels": hlo.hlo_kernels(compiled),
        **summarize(kernels),
        "memory": memory,
        "fits": memory["peak"] <= spec.memory,
        "device_memory": spec.memory,
        "model_flops": flops,
        **time_s,
        "samples_per_s": batch / time_s["step_s"],
        "mfu": flops / time_s["step_s"] / rate if flops else None,
        "constants": {
            "peak_flops": spec.peak,
            "peak_used": rate,
            "hbm_bytes_per_s": spec.bandwidth,
            "launch_s": launch_s,
            "collective_launch_s": COLLECTIVE_LAUNCH_S,
        },
        "kernel_list": [dataclasses.asdict(k) for k in kernels],
    }
    if keep_text:
        out["hlo_text"] = text
    return out


# ---------------------------------------------------------------------------------------------
# Collectives (section 3)


def collectives(hlo_text: str) -> dict:
    """Every collective of a compiled executable: count and bytes (its result, per device),
    by kind and dtype, with the op_name of each."""
    module = parse_hlo(hlo_text)
    found = []
    for instrs in module.computations.values():
        for instr in instrs:
            kind = instr.opcode.removesuffix("-start")
            if kind not in COLLECTIVES:
                continue
            by_dtype = collections.Counter()
            for dtype, dims in arrays(instr.shape):
                by_dtype[dtype] += _BYTES.get(dtype, 4) * math.prod(dims)
            if instr.opcode.endswith("-start") and kind != "all-reduce":
                # An async start's result tuple holds its input and output: count the output.
                by_dtype = collections.Counter({d: b / 2 for d, b in by_dtype.items()})
            found.append(
                {
                    "kind": kind,
                    "name": instr.name,
                    "op_name": instr.op_name,
                    "bytes_by_dtype": dict(by_dtype),
                    "bytes": sum(by_dtype.values()),
                }
            )
    summary: dict[str, dict] = {}
    for c in found:
        entry = summary.setdefault(c["kind"], {"count": 0, "bytes": 0.0, "bytes_by_dtype": {}})
        entry["count"] += 1
        entry["bytes"] += c["bytes"]
        for dtype, b in c["bytes_by_dtype"].items():
            entry["bytes_by_dtype"][dtype] = entry["bytes_by_dtype"].get(dtype, 0) + b
    return {"summary": summary, "collectives": found}


def trainable_parameters(config) -> dict[str, int]:
    """Float32 parameters each update trains (E is frozen unless train.train_embedder)."""
    import jax

    from v2f_jax import models
    from v2f_jax import state as state_lib

    nets = models.Networks(config.model, config.model.num_ids)
    shapes = jax.eval_shape(lambda: state_lib.create_gan_state(config, nets))
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))  # noqa: E731
    out = {"generator": count(shapes.generator), "critics": count(shapes.critics)}
    if config.train.train_embedder:
        out["embedder"] = count(shapes.embedder["params"])
    return out


def compile_collectives(
    n_devices: int, batch_per_device: int, dtype: str, frames: int = 300, gpu: str | None = None
) -> dict:
    """The data-parallel step compiled over the first `n_devices` CPU devices (or, with `gpu`,
    the devices of a one-host CUDA topology of that spec); its collectives."""
    import jax

    config = step_config(batch_per_device * n_devices, dtype)
    if gpu:
        devices, _ = gpu_devices(gpu, f"1x1x{n_devices}")
    else:
        devices = jax.devices("cpu")[:n_devices]
    if len(devices) < n_devices:
        raise RuntimeError(
            f"{len(devices)} CPU devices, {n_devices} asked: set jax_num_cpu_devices first"
        )
    start = time.perf_counter()
    compiled = lower_step(config, devices, frames).compile()
    compile_s = time.perf_counter() - start
    params = trainable_parameters(config)
    return {
        "platform": f"cuda ({gpu})" if gpu else "cpu",
        "devices": n_devices,
        "batch": batch_per_device * n_devices,
        "dtype": dtype,
        "frames": frames,
        "compile_s": compile_s,
        "trainable_parameters": params,
        "trainable_float32_bytes": 4 * sum(params.values()),
        **collectives(compiled.as_text()),
    }


def scaling(
    traffic: dict[str, tuple[float, float]],
    step_s: dict[str, float],
    batch_per_device: int,
    counts=(8, 64, 256),
) -> list[dict]:
    """Collective traffic per device at `counts` devices (per-device batch fixed) and the share
    of each link's time it needs per step (module docstring: the models and their constants).

    `traffic`: "gpu" and "tpu" -> (all-reduce bytes per device per step, bytes of the other
    collectives per device per sample of the device's batch), as compiled.
    - all-reduce: a ring, 2 (n - 1) / n x the reduced bytes through each device. Beyond one
      8-GPU node NCCL's rings cross nodes once per ring, one ring per NIC, so the node-level ring
      (nodes m = n / 8) moves 2 (m - 1) / m x the bytes over the node's 8 NICs.
    - the other collectives (the batch resharding all-to-alls and permutes): (n - 1) / n of
      their bytes leave each device, over its NIC beyond a node.
    """
    rows = []
    for n in counts:
        row = {"devices": n, "global_batch": n * batch_per_device}
        for platform, (allreduce, per_sample) in traffic.items():
            row[platform] = {
                "ring_bytes_per_device": 2 * (n - 1) / n * allreduce,
                "other_bytes_per_device": per_sample * batch_per_device * (n - 1) / n,
            }
        for link, bw in LINKS.items():
            platform = "tpu" if "TPU" in link else "gpu"
            chip = "v5p" if "v5p" in link else "v5e" if "v5e" in link else "h100"
            ring = row[platform]["ring_bytes_per_device"]
            other = row[platform]["other_bytes_per_device"]
            if link == "H100 NVLink4":
                if n > 8:
                    continue
                seconds = (ring + other) / bw
            elif link == "H100 IB NDR/GPU":
                if n <= 8:
                    continue
                nodes = n / 8
                allreduce = traffic[platform][0]
                seconds = 2 * (nodes - 1) / nodes * allreduce / (8 * bw) + other / bw
            else:
                seconds = (ring + other) / bw
            row[link] = {
                "step_s": step_s[chip],
                "seconds": seconds,
                "share": seconds / step_s[chip],
            }
        rows.append(row)
    return rows


def tpu_step_s(kernels: list[Kernel], chip: str) -> float:
    peak, bw = TPUS[chip]
    rates = {"bf16": peak, "tf32": peak, "fp32": peak}
    return roofline(kernels, rates, bw, 0.0, collective_launch_s=0.0)["step_s"]


# ---------------------------------------------------------------------------------------------
# Output


def _gb(b: float) -> str:
    return f"{b / 1e9:.2f}"


def estimate_table(rows: list[dict]) -> str:
    head = (
        "| GPU | dtype | B | kernels (+copies) | cuDNN convs fwd / bwd-in / bwd-filter |"
        " pad fusions | transpose fusions (MB) | memory GB: args + temps + outputs (peak) | fits |"
        " executed / model GFLOP | est. step ms (compute + memory + launch) | samples/s | MFU |"
        " lower + compile s |\n|" + "---|" * 14
    )
    lines = [head]
    for r in rows:
        kinds = collections.Counter()
        for per in r["cudnn_per_network"].values():
            kinds.update(per)
        convs = f"{kinds['fwd'] + kinds['fwd+bias']} / {kinds['bwd-input']} / {kinds['bwd-filter']}"
        pads = f"{r['pad_fusions']}" + (
            f" ({', '.join(f'{n} {d}' for d, n in r['pad_fusions_by_dtype'].items())})"
            if r["pad_fusions"]
            else ""
        )
        m = r["memory"]
        mem = f"{_gb(m['arguments'])} + {_gb(m['temps'])} + {_gb(m['outputs'])} ({_gb(m['peak'])})"
        fits = f"{'yes' if r['fits'] else 'NO'} ({r['device_memory'] / 1e9:.0f} GB)"
        flops = f"{r['executed_conv_gemm_flops'] / 1e9:.0f} / {(r['model_flops'] or 0) / 1e9:.0f}"
        ms = (
            f"{r['step_s'] * 1e3:.2f} ({r['compute_bound_s'] * 1e3:.2f} + "
            f"{r['memory_bound_s'] * 1e3:.2f} + {r['launch_s'] * 1e3:.2f})"
        )
        gpu = r["gpu"].replace("NVIDIA ", "") + (
            " [flip-then-cast]" if r["deconv_form"] == "flip-then-cast" else ""
        )
        mfu = f"{r['mfu']:.0%}" if r["mfu"] else "-"
        lines.append(
            f"| {gpu} | {r['dtype']} | {r['batch']} | {r['kernels']} (+{r['copies']}) | {convs} |"
            f" {pads} | {r['transpose_fusions']} ({r['transpose_fusions_mb']:.0f}) | {mem} |"
            f" {fits} | {flops} | {ms} | {r['samples_per_s']:,.0f} | {mfu} |"
            f" {r['lower_s']:.1f} + {r['compile_s']:.1f} |"
        )
    return "\n".join(lines)


def cudnn_table(rows: list[dict]) -> str:
    lines = ["| GPU | dtype | B | E | G | D/C | other |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for net in ("E", "G", "D/C", "other"):
            per = r["cudnn_per_network"].get(net, {})
            cells.append(", ".join(f"{n} {k}" for k, n in sorted(per.items())) or "-")
        lines.append(
            f"| {r['gpu'].replace('NVIDIA ', '')} | {r['dtype']} | {r['batch']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def constants_text(rows: list[dict]) -> str:
    seen, lines = set(), []
    for r in rows:
        if r["gpu"] in seen:
            continue
        seen.add(r["gpu"])
        c = r["constants"]
        p = c["peak_flops"]
        lines.append(
            f"- {r['gpu']} (benchmarks/gpu_specs/{GPUS.get(r['spec'], r['spec'])}): dense peak "
            f"BF16 {p['bf16'] / 1e12:.0f}, TF32 {p['tf32'] / 1e12:.0f}, FP32 {p['fp32'] / 1e12:.0f}"
            f" TFLOP/s; HBM {c['hbm_bytes_per_s'] / 1e12:.2f} TB/s, {r['device_memory'] / 1e9:.1f}"
            f" GB; launch {c['launch_s'] * 1e6:g} us per kernel or copy"
        )
    return "\n".join(lines)


def _estimates(args) -> list[dict]:
    rows = []
    for gpu in args.gpus:
        for dtype in args.dtypes:
            for batch in args.batches:
                for old in [False, True] if args.flip_then_cast else [False]:
                    r = compile_for_gpu(
                        gpu,
                        batch,
                        dtype,
                        launch_s=args.launch_us * 1e-6,
                        matmul_precision=args.matmul_precision,
                        flip_then_cast=old,
                    )
                    print(
                        f"# compiled {r['gpu']} {dtype} B={batch} {r['deconv_form']}: "
                        f"{r['compile_s']:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                    rows.append(r)
    return rows


def _collective_lines(result: dict, title: str) -> list[str]:
    lines = [
        title,
        "",
        "| collective | count | MB per device | by dtype (MB) |",
        "|---|---|---|---|",
    ]
    for kind, v in sorted(result["summary"].items()):
        dt = ", ".join(f"{d} {b / 1e6:.3f}" for d, b in v["bytes_by_dtype"].items())
        lines.append(f"| {kind} | {v['count']} | {v['bytes'] / 1e6:.3f} | {dt} |")
    return lines


def _traffic(result: dict) -> tuple[float, float]:
    """(all-reduce bytes per device, other collectives' bytes per device per device-sample)."""
    summary = result["summary"]
    allreduce = summary.get("all-reduce", {}).get("bytes", 0.0)
    other = sum(v["bytes"] for k, v in summary.items() if k != "all-reduce")
    return allreduce, other / (result["batch"] / result["devices"])


def _collectives_report(args) -> dict:
    dtype = args.dtypes[0]
    result = compile_collectives(args.devices, args.batch_per_device, dtype, args.frames)
    out = {"cpu": result}
    lines = _collective_lines(
        result,
        f"Data-parallel step ({dtype}, global batch {result['batch']} over {args.devices} fake "
        f"CPU devices, {result['frames']} frames), compiled in {result['compile_s']:.1f} s. "
        "Collectives per step, per device:",
    )
    params = result["trainable_parameters"]
    allreduce = result["summary"].get("all-reduce", {}).get("bytes", 0.0)
    lines += [
        "",
        f"Trainable parameters: {', '.join(f'{k} {v:,}' for k, v in params.items())}"
        f" = {sum(params.values()):,}; x 4 bytes = {result['trainable_float32_bytes']:,} B; "
        f"all-reduced: {allreduce:,.0f} B.",
    ]
    traffic = {"gpu": _traffic(result), "tpu": _traffic(result)}
    have_gpu = not plugin_missing()
    if args.gpu_topology and have_gpu:
        gpu = compile_collectives(args.devices, args.batch_per_device, dtype, args.frames, "h100")
        out["gpu"] = gpu
        traffic["gpu"] = _traffic(gpu)
        lines += [""] + _collective_lines(
            gpu,
            f"The same step compiled for {args.devices} H100s (CUDA topology "
            f"1x1x{args.devices}, deviceless) in {gpu['compile_s']:.1f} s:",
        )
    step_s = {}
    if args.step_ms:
        step_s = dict.fromkeys(("h100", "v5p", "v5e"), args.step_ms / 1e3)
    elif have_gpu:
        est = compile_for_gpu("h100", args.batch_per_device, dtype, launch_s=args.launch_us * 1e-6)
        kernels = [Kernel(**k) for k in est["kernel_list"]]
        step_s = {
            "h100": est["step_s"],
            "v5p": tpu_step_s(kernels, "v5p"),
            "v5e": tpu_step_s(kernels, "v5e"),
        }
        out["gpu_estimate"] = {k: v for k, v in est.items() if k != "kernel_list"}
    if step_s:
        rows = scaling(traffic, step_s, args.batch_per_device)
        out["scaling"] = rows
        links = list(LINKS)
        source = "the H100 compile" if "gpu" in out else "the CPU compile"
        lines += [
            "",
            f"Per-device batch {args.batch_per_device}; estimated {dtype} step: H100 "
            f"{step_s['h100'] * 1e3:.2f} ms, TPU v5p {step_s['v5p'] * 1e3:.2f} ms, v5e "
            f"{step_s['v5e'] * 1e3:.2f} ms. GPU traffic from {source}, TPU traffic from the "
            "CPU compile (float32 gradients). Share of each link's one-direction bandwidth the "
            "step's collectives need: ring all-reduce 2(n-1)/n x bytes (beyond a node, the "
            "node-level ring over its 8 NICs) plus the batch resharding collectives; TPU ICI is "
            "the chip's aggregate (a ring along one torus dimension gets 1/3 of v5p's, 1/2 of "
            "v5e's):",
            "",
            "| devices | global batch | GPU all-reduce + other MB/device | TPU all-reduce + "
            "other MB/device | "
            + " | ".join(f"{k} ({LINKS[k] / 1e9:.0f} GB/s)" for k in links)
            + " |",
            "|---|---|---|---|" + "---|" * len(links),
        ]
        for row in rows:
            cells = [f"{row[k]['share']:.1%}" if k in row else "-" for k in links]
            mb = [
                f"{row[p]['ring_bytes_per_device'] / 1e6:.1f} + "
                f"{row[p]['other_bytes_per_device'] / 1e6:.1f}"
                for p in ("gpu", "tpu")
            ]
            lines.append(
                f"| {row['devices']} | {row['global_batch']} | {mb[0]} | {mb[1]} | "
                + " | ".join(cells)
                + " |"
            )
    out["markdown"] = "\n".join(lines)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu_hlo.py",
        description=__doc__,  # the constants, their sources and the approximations
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--gpus",
        nargs="+",
        default=["h100", "h200"],
        help="specs: h100, h200 or a GpuTargetConfigProto .txtpb path",
    )
    parser.add_argument(
        "--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"]
    )
    parser.add_argument(
        "--batches", nargs="+", type=int, default=[128, 1024], help="global batch sizes (one GPU)"
    )
    parser.add_argument(
        "--matmul-precision",
        default="default",
        choices=["default", "high", "highest"],
        help="config.model.matmul_precision (float32 convs: TF32 unless highest)",
    )
    parser.add_argument(
        "--launch-us",
        type=float,
        default=LAUNCH_S * 1e6,
        help="cost of a kernel launch, microseconds (XLA's cost model: 1)",
    )
    parser.add_argument(
        "--flip-then-cast",
        action="store_true",
        help="also compile the pre-#26 transposed conv (flip, then cast)",
    )
    parser.add_argument(
        "--collectives",
        action="store_true",
        help="the data-parallel step on fake CPU devices: collectives, scaling",
    )
    parser.add_argument("--devices", type=int, default=8, help="fake CPU devices (--collectives)")
    parser.add_argument(
        "--batch-per-device", type=int, default=128, help="per-device batch (--collectives)"
    )
    parser.add_argument("--frames", type=int, default=FRAMES)
    parser.add_argument(
        "--gpu-topology",
        action="store_true",
        help="--collectives: also compile for --devices H100s (needs the plugin)",
    )
    parser.add_argument(
        "--step-ms",
        type=float,
        default=None,
        help="step time for --collectives (default: the H100 bf16 estimate)",
    )
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write results here")
    args = parser.parse_args(argv)

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    import jax

    if args.collectives:
        jax.config.update("jax_num_cpu_devices", args.devices)
        out = _collectives_report(args)
        print(out["markdown"])
    else:
        missing = plugin_missing()
        if missing:
            print(missing, file=sys.stderr)
            return 2
        rows = _estimates(args)
        print(
            "Estimates (roofline; not measured): the wen2019 GAN step, "
            f"{args.frames} voice frames, model.impl=xla, matmul_precision="
            f"{args.matmul_precision}, one GPU.\n"
        )
        print(estimate_table(rows))
        print("\ncuDNN conv calls per network (E voice embedder, G generator, D/C critics):\n")
        print(cudnn_table(rows))
        print("\nConstants:\n" + constants_text(rows))
        dropped = sorted({f for r in rows for f in r["spec_fields_dropped"]})
        if dropped:
            print(f"- spec fields this plugin does not know, dropped: {', '.join(dropped)}")
        out = {
            "estimates": [{k: v for k, v in r.items() if k != "kernel_list"} for r in rows],
            "jax": jax.__version__,
        }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
