"""Our training step against the reference's PyTorch training iteration, interleaved, same shapes.

The PyTorch side is the published loop of cmu-mlsp/reconstructing_faces_from_voices
(`gan_train.py`, `network.py`), re-implemented: its networks (`v2f_jax.inference.torch_reference`),
and here its losses, Adam settings and update order, the face trunk run five times per iteration
(`f_net(face)` twice and `f_net(fake.detach())` for the critics, `f_net(fake)` twice for G), and
one change that only helps it: the frozen voice embedder runs under `torch.no_grad()` (the
published loop backpropagates through it for nothing). `--torch-variant dedup` also gives PyTorch
our dedup (three trunk passes) as an extra, stronger peer.

Each side runs in its own worker process, started by this one; the parent tells them in turn to
run a few steps, alternating the order every round, so both see the same machine load and only
one runs at a time. Ratios are computed per round (adjacent in time), then their median taken.
Both workers get the same malloc environment: by default `v2f_jax.host_memory.SETTINGS`, under
which each side reuses freed host memory instead of page-faulting its large temporaries afresh
every step (PyTorch gains more from it than we do); `--allocator system` runs both with glibc's
defaults.

    python benchmarks/compare_pytorch.py --batch 128 --frames 800 --dtype float32 --rounds 6
    python benchmarks/compare_pytorch.py --dtype bfloat16      # both sides in bf16
    python benchmarks/compare_pytorch.py --track-bf16 200      # bf16 vs fp32 losses, tiny config

Needs `pip install torch` (CPU wheel). Prints a table on stderr and one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_IDS = 924

sys.path.insert(0, str(REPO))
from v2f_jax import host_memory  # noqa: E402  (no JAX import: the parent stays light)

# ----------------------------------------------------------------------------- PyTorch worker


def _torch_worker(args) -> None:
    import torch
    import torch.nn.functional as F

    from v2f_jax.inference import torch_reference as ref

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)

    e_net = ref.VoiceEmbedNet(ref.N_MELS, ref.VOICE_CHANNELS, ref.EMBED_DIM)
    g_net = ref.Generator(ref.EMBED_DIM, ref.GENERATOR_CHANNELS, 3)
    f_net = ref.FaceEmbedNet(3, ref.FACE_CHANNELS, ref.EMBED_DIM)
    d_net = ref.Classifier(ref.EMBED_DIM, (), 1)
    c_net = ref.Classifier(ref.EMBED_DIM, (), NUM_IDS)
    e_net.eval()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    g_net.to(memory_format=memory_format)
    f_net.to(memory_format=memory_format)

    def adam(net):
        return torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))

    g_opt, f_opt, d_opt, c_opt = adam(g_net), adam(f_net), adam(d_net), adam(c_net)
    b, t = args.batch, args.frames
    gen = torch.Generator().manual_seed(0)
    voice = torch.randn(b, 64, t, generator=gen)
    voice_label = torch.randint(0, NUM_IDS, (b,), generator=gen)
    face = (torch.rand(b, 3, 64, 64, generator=gen) * 2 - 1).contiguous(memory_format=memory_format)
    face_label = torch.randint(0, NUM_IDS, (b,), generator=gen)
    real_label, fake_label = torch.ones(b, 1), torch.zeros(b, 1)
    bf16 = (args.torch_dtype or args.dtype) == "bfloat16"

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def step():
        noise = 0.05 * torch.randn(b, 64, 1, 1)
        with torch.no_grad(), autocast():
            embeddings = e_net(voice).float()  # [B, 64, 1, 1]: E's forward pools over time
        embeddings = F.normalize(embeddings)
        embeddings = F.normalize(embeddings + noise)
        with autocast():
            fake = g_net(embeddings)

        f_opt.zero_grad()
        d_opt.zero_grad()
        c_opt.zero_grad()
        with autocast():
            if args.torch_variant == "dedup":
                feats = f_net(torch.cat([face, fake.detach()]))
                real_score_out, fake_score_out = d_net(feats).float().chunk(2)
                real_label_out = c_net(feats[:b]).float()
            else:
                real_score_out = d_net(f_net(face)).float()
                fake_score_out = d_net(f_net(fake.detach())).float()
                real_label_out = c_net(f_net(face)).float()
        d_real = F.binary_cross_entropy(torch.sigmoid(real_score_out), real_label)
        d_fake = F.binary_cross_entropy(torch.sigmoid(fake_score_out), fake_label)
        c_real = F.nll_loss(F.log_softmax(real_label_out, 1), face_label)
        (d_real + d_fake + c_real).backward()
        f_opt.step()
        d_opt.step()
        c_opt.step()

        g_opt.zero_grad()
        with autocast():
            if args.torch_variant == "dedup":
                feats = f_net(fake)
                fake_score_out, fake_label_out = d_net(feats).float(), c_net(feats).float()
            else:
                fake_score_out = d_net(f_net(fake)).float()
                fake_label_out = c_net(f_net(fake)).float()
        gd = F.binary_cross_entropy(torch.sigmoid(fake_score_out), real_label)
        gc = F.nll_loss(F.log_softmax(fake_label_out, 1), voice_label)
        (gd + gc).backward()
        g_opt.step()
        # The reference's meters call .item() on every loss every iteration.
        return [x.item() for x in (d_real, d_fake, c_real, gd, gc)]

    start = time.perf_counter()
    step()
    _serve(
        {
            "side": "pytorch",
            "first_step_s": time.perf_counter() - start,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        lambda: step(),
    )


# ----------------------------------------------------------------------------- JAX worker


def _jax_worker(args) -> None:
    from v2f_jax import bench, config_lib

    config = config_lib.load_config(args.config, args.config_override)
    config = bench.apply_step_overrides(
        config, batch_size=args.batch, dtype=args.dtype, parallel_mode="jit", impl=args.impl
    )
    runner = bench.StepRunner(config, frames=args.frames, num_ids=NUM_IDS)
    compile_s = runner.compile()
    start = time.perf_counter()
    runner.run(1)
    info = {
        "side": "jax",
        "compile_s": compile_s,
        "first_step_s": time.perf_counter() - start,
        "flops_per_step": bench.compiled_flops(runner.compiled),
        "impl": config.model.impl,
        "hlo": bench.hlo_op_counts(runner.compiled),
        "machine": bench.machine(),
    }
    if args.peak:
        info["peak_gflops_per_s"] = bench.matmul_peak(args.dtype)["gflops_per_s"]
    _serve(info, lambda: runner.run(1))


def _serve(ready: dict, step) -> None:
    """Line protocol: we print `ready`, then answer each `run N` with N step times."""
    out = sys.stdout
    print(json.dumps(ready), file=out, flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        times = []
        for _ in range(int(cmd[1])):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        print(json.dumps({"times": times}), file=out, flush=True)


# ----------------------------------------------------------------------------- parent


class Worker:
    def __init__(self, side: str, args, extra: list[str]):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            side,
            "--batch",
            str(args.batch),
            "--frames",
            str(args.frames),
            "--dtype",
            args.dtype,
            "--config",
            args.config,
            "--torch-dtype",
            args.torch_dtype or args.dtype,
            "--torch-threads",
            str(args.torch_threads),
            "--torch-variant",
            args.torch_variant,
            "--impl",
            args.impl,
            *extra,
        ]
        cmd += [f"--config-override={o}" for o in args.config_override]
        if args.channels_last:
            cmd.append("--channels-last")
        if args.peak:
            cmd.append("--peak")
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
        for name in host_memory.SETTINGS:
            env.pop(name, None)
        if args.allocator == "reuse":
            env.update(host_memory.SETTINGS)
        self.side = side
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
        )
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.side} worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def run(self, n: int) -> list[float]:
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        return self._read()["times"]

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


def compare(args) -> dict:
    log = sys.stderr
    torch_dtype = args.torch_dtype or args.dtype
    print(
        f"starting workers (B={args.batch}, T={args.frames}, ours {args.dtype}, PyTorch "
        f"{torch_dtype}, {args.torch_threads} PyTorch threads, {args.allocator} malloc)...",
        file=log,
    )
    # The peer first: its warm-up is short, ours includes compiling.
    workers = [Worker("pytorch", args, []), Worker("jax", args, [])]
    for w in workers:
        print(f"  {w.side}: {json.dumps(w.info)}", file=log)
    times = {w.side: [] for w in workers}
    ratios = []
    try:
        for r in range(args.rounds):
            order = workers if r % 2 == 0 else workers[::-1]
            got = {w.side: w.run(args.steps_per_round) for w in order}
            for side, ts in got.items():
                times[side] += ts
            ratios.append(statistics.median(got["pytorch"]) / statistics.median(got["jax"]))
            print(
                f"  round {r}: pytorch {statistics.median(got['pytorch']):.2f} s/step, "
                f"jax {statistics.median(got['jax']):.2f} s/step, ratio {ratios[-1]:.2f}",
                file=log,
            )
    finally:
        for w in workers:
            w.close()
    b = args.batch
    summary = {
        "batch": b,
        "frames": args.frames,
        "dtype": args.dtype,
        "torch_dtype": torch_dtype,
        "rounds": args.rounds,
        "steps_per_round": args.steps_per_round,
        "torch_variant": args.torch_variant,
        "torch_threads": args.torch_threads,
        "channels_last": args.channels_last,
        "impl": args.impl,
        "allocator": args.allocator,
        "date": time.strftime("%Y-%m-%d"),
    }
    for side, ts in times.items():
        med = statistics.median(ts)
        summary[side] = {
            "step_s_median": med,
            "step_s_min": min(ts),
            "step_s_max": max(ts),
            "samples_per_s": b / med,
        }
    jax_info = workers[1].info
    summary["jax"].update(
        compile_s=jax_info["compile_s"],
        flops_per_step=jax_info["flops_per_step"],
        hlo=jax_info["hlo"],
    )
    if jax_info.get("flops_per_step"):
        summary["jax"]["gflops_per_s"] = (
            jax_info["flops_per_step"] / summary["jax"]["step_s_median"] / 1e9
        )
    if "peak_gflops_per_s" in jax_info:
        summary["jax"]["peak_gflops_per_s"] = jax_info["peak_gflops_per_s"]
    summary["pytorch"].update(torch=workers[0].info["torch"], threads=workers[0].info["threads"])
    summary["speedup_median_of_rounds"] = statistics.median(ratios)
    summary["speedup_range"] = [min(ratios), max(ratios)]
    summary["speedup_of_medians"] = (
        summary["pytorch"]["step_s_median"] / summary["jax"]["step_s_median"]
    )
    summary["machine"] = jax_info["machine"]
    print(
        f"\n{'':10s}{'s/step':>10s}{'samples/s':>12s}\n"
        f"{'pytorch':10s}{summary['pytorch']['step_s_median']:10.2f}"
        f"{summary['pytorch']['samples_per_s']:12.1f}\n"
        f"{'v2f-jax':10s}{summary['jax']['step_s_median']:10.2f}"
        f"{summary['jax']['samples_per_s']:12.1f}\n"
        f"speedup {summary['speedup_median_of_rounds']:.2f}x (median of {args.rounds} rounds, "
        f"range {min(ratios):.2f}-{max(ratios):.2f})",
        file=log,
    )
    return summary


def track_bf16(args) -> dict:
    """bf16 against fp32 on the tiny config: same start, same batches, every step's losses.

    A GAN's step-by-step losses are chaotic: two fp32 runs that differ only in their seed drift
    apart within tens of steps. So the yardstick is that drift: bf16's distance from fp32 (same
    seed) next to a second fp32 run's (seed + 1), both on losses smoothed over `window` steps.
    """
    import numpy as np

    from v2f_jax import bench, config_lib

    runs = {"fp32": ("float32", 0), "bf16": ("bfloat16", 0), "fp32_seed1": ("float32", 1)}
    histories = {}
    for name, (dtype, seed) in runs.items():
        config = config_lib.load_config(REPO / "configs/tiny.py", args.config_override)
        config = bench.apply_step_overrides(config, dtype=dtype, impl=args.impl)
        config.seed = seed
        print(f"  {name}: {args.track_bf16} steps...", file=sys.stderr)
        histories[name] = bench.loss_history(config, steps=args.track_bf16)
    window = 20

    def smooth(x):
        x = np.asarray(x, np.float64)
        return np.convolve(x, np.ones(window) / window, mode="valid")

    out = {
        "steps": args.track_bf16,
        "config": "configs/tiny.py",
        "smoothing_window": window,
        "losses": {},
    }
    print(
        f"  {'loss':8s} {'fp32 end':>9s} {'bf16 end':>9s} {'|bf16-fp32|':>12s} "
        f"{'|fp32 seed1-fp32|':>18s}  (smoothed over {window} steps, mean over the run)",
        file=sys.stderr,
    )
    for k in sorted(histories["fp32"]):
        a, b, c = (smooth(histories[n][k]) for n in ("fp32", "bf16", "fp32_seed1"))
        first = np.abs(np.asarray(histories["bf16"][k][:10]) - histories["fp32"][k][:10])
        out["losses"][k] = {
            "fp32_end": float(a[-1]),
            "bf16_end": float(b[-1]),
            "fp32_seed1_end": float(c[-1]),
            "bf16_vs_fp32_mean_abs": float(np.mean(np.abs(b - a))),
            "fp32_seed1_vs_fp32_mean_abs": float(np.mean(np.abs(c - a))),
            "bf16_vs_fp32_first10_max_abs": float(first.max()),
        }
        o = out["losses"][k]
        print(
            f"  {k:8s} {o['fp32_end']:9.3f} {o['bf16_end']:9.3f} "
            f"{o['bf16_vs_fp32_mean_abs']:12.3f} {o['fp32_seed1_vs_fp32_mean_abs']:18.3f}",
            file=sys.stderr,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--frames", type=int, default=800)
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="our compute dtype (and PyTorch's unless --torch-dtype)",
    )
    parser.add_argument(
        "--torch-dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="PyTorch's: float32, or bfloat16 autocast (default: --dtype)",
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps-per-round", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count())
    parser.add_argument("--torch-variant", choices=("reference", "dedup"), default="reference")
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="PyTorch G and F in channels_last memory format",
    )
    parser.add_argument("--config", default=str(REPO / "configs/wen2019.py"))
    parser.add_argument(
        "--config-override",
        action="append",
        default=[],
        help="a --config.x=y for our side (repeatable)",
    )
    parser.add_argument(
        "--impl",
        default="auto",
        help="our conv forms (config.model.impl): auto | xla | subpixel | matmul | winograd",
    )
    parser.add_argument("--peak", action="store_true", help="also measure our matmul peak")
    parser.add_argument(
        "--allocator",
        choices=("reuse", "system"),
        default="reuse",
        help="both workers' malloc: host_memory.SETTINGS (reuse freed memory) or glibc defaults",
    )
    parser.add_argument(
        "--track-bf16",
        type=int,
        default=0,
        metavar="STEPS",
        help="instead: fp32 vs bf16 losses over STEPS steps of configs/tiny.py",
    )
    parser.add_argument("--worker", choices=("pytorch", "jax"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "pytorch":
        return _torch_worker(args)
    if args.worker == "jax":
        return _jax_worker(args)
    result = track_bf16(args) if args.track_bf16 else compare(args)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
