"""Our training step against the reference's PyTorch training iteration, interleaved, same shapes.

The PyTorch side is the published loop of cmu-mlsp/reconstructing_faces_from_voices
(`gan_train.py`, `network.py`), re-implemented: its networks (`v2f_jax.inference.torch_reference`,
with the channel widths of `--config`), and here its losses, Adam settings and update order, the
face trunk run five times per iteration (`f_net(face)` twice and `f_net(fake.detach())` for the
critics, `f_net(fake)` twice for G), and one change that only helps it: the frozen voice embedder
runs under `torch.no_grad()` (the published loop backpropagates through it for nothing).

It runs on the CPU or on CUDA (`--device`; default cuda where torch sees one), as one or more
variants, each what a user of that device would write (`--torch-variants`, a comma-separated list;
a variant is a precision and options joined by '+', e.g. `bf16+channels_last+fused_adam`):

  fp32           float32; on CUDA with TF32 allowed (matmul and cuDNN) and cudnn.benchmark on
  bf16           `torch.autocast(device, torch.bfloat16)`, fp32 master weights (the same on CUDA)
  channels_last  G and F (and the faces) in channels_last memory format
  fused_adam     `torch.optim.Adam(..., fused=True)`
  no_item        no per-step `.item()`: the losses stay on the device and are fetched once at the
                 end of a timed round (after `torch.cuda.synchronize()`)
  compile        the five networks under `torch.compile` (default mode, static shapes); CUDA only
                 here (reported as skipped on the CPU); a compile failure is that variant's error
  dedup          our step's structure: the trunk on `cat([face, fake.detach()])` once, on `fake`
                 once for G (three trunk passes instead of five)
  all            channels_last + fused_adam + no_item + compile

The default on the CPU is the published loop alone, in `--torch-dtype` (the flags `--torch-variant
dedup` and `--channels-last` add those options); on CUDA, and with `--torch-variants gpu`, it is
every option alone, the first three together, all four, and all four with dedup. The JSON lists
every variant with its samples/s (or its error, or why it was skipped) and names the fastest:
`fastest_pytorch_variant`, `fastest_pytorch_samples_per_s`; `pytorch` and the speedups are
against that one, the peer.

Each side, and each variant, runs in its own worker process started by this one; the parent tells
them in turn to run a round of `--steps-per-round` steps, rotating the order every round, so all
see the same machine load and only one runs at a time. Ratios are computed per round (adjacent in
time), then their median taken. On the CPU a step's time is the median of the round's per-step
times (each step ends synchronised); on CUDA it is the round's wall time over its steps, the round
ending with `jax.block_until_ready` (ours, steps dispatched back to back as `v2f train` runs them)
and `torch.cuda.synchronize()` (theirs). Both workers get the same malloc environment: by default
`v2f_jax.training.host_memory.SETTINGS`, under which each side reuses freed host memory instead of
page-faulting its large temporaries afresh every step (PyTorch gains more from it than we do);
`--allocator system` runs both with glibc's defaults. Our side needs no TensorFlow.

    python benchmarks/compare_pytorch.py --batch 128 --frames 800 --dtype float32 --rounds 6
    python benchmarks/compare_pytorch.py --dtype bfloat16      # both sides in bf16
    python benchmarks/compare_pytorch.py --device cuda --dtype bfloat16    # every GPU variant
    python benchmarks/compare_pytorch.py --torch-variants fp32,bf16+all    # these two peers
    python benchmarks/compare_pytorch.py --track-bf16 200      # bf16 vs fp32 losses, tiny config

Needs `pip install torch`. Prints a table on stderr and one JSON line on stdout; exits 1 when our
side or every PyTorch variant failed (the JSON says which and why).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import queue
import statistics
import subprocess
import sys
import threading
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_IDS = 924

sys.path.insert(0, str(REPO))
from v2f_jax.training import host_memory  # noqa: E402  (no JAX import: the parent stays light)

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}
FEATURES = ("channels_last", "fused_adam", "no_item", "compile", "dedup")
ALL_FEATURES = ("channels_last", "fused_adam", "no_item", "compile")
# Features not run on a device, and why: reported as that variant's `skipped`.
NOT_ON = {
    ("compile", "cpu"): "torch.compile runs on CUDA only here (on the CPU inductor builds C++ "
    "for minutes)",
}


# ----------------------------------------------------------------------------- variants


def parse_variant(spec: str, default_precision: str) -> tuple[str, dict]:
    """`bf16+channels_last` -> ("bf16+channels_last", options); precision first in the name, the
    options in FEATURES order, so equal variants get equal names."""
    precision, features = None, set()
    for token in spec.split("+"):
        t = token.strip().lower().replace("-", "_")
        if t in ("fp32", "float32"):
            precision = "fp32"
        elif t in ("bf16", "bfloat16"):
            precision = "bf16"
        elif t == "all":
            features.update(ALL_FEATURES)
        elif t in FEATURES:
            features.add(t)
        elif t not in ("", "reference", "base"):
            raise ValueError(
                f"unknown PyTorch variant option {token!r} in {spec!r} (precisions: fp32, bf16; "
                f"options: {', '.join(FEATURES)}, all)"
            )
    precision = precision or default_precision
    name = "+".join([precision] + [f for f in FEATURES if f in features])
    return name, {"precision": precision, **{f: f in features for f in FEATURES}}


def gpu_variant_specs(precision: str) -> list[str]:
    """What a GPU user would try: each option alone, then stacked."""
    p = precision
    return [
        p,
        f"{p}+channels_last",
        f"{p}+fused_adam",
        f"{p}+no_item",
        f"{p}+compile",
        f"{p}+channels_last+fused_adam+no_item",
        f"{p}+all",
        f"{p}+all+dedup",
    ]


def variants_for(args, device: str) -> dict[str, dict]:
    precision = "bf16" if (args.torch_dtype or args.dtype) == "bfloat16" else "fp32"
    extra = (["dedup"] if args.torch_variant == "dedup" else []) + (
        ["channels_last"] if args.channels_last else []
    )
    if args.torch_variants in (None, "default"):
        specs = gpu_variant_specs(precision) if device == "cuda" else [precision]
    elif args.torch_variants == "gpu":
        specs = gpu_variant_specs(precision)
    else:
        specs = [s for s in args.torch_variants.split(",") if s.strip()]
    out = {}
    for spec in specs:
        name, options = parse_variant("+".join([spec, *extra]), precision)
        out.setdefault(name, options)
    return out


def default_device() -> str:
    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- PyTorch worker


def _error_text(err: BaseException, limit: int = 1500) -> str:
    """The exception and the end of its traceback, short enough for a JSON field."""
    text = f"{type(err).__name__}: {err}"[:limit]
    tb = "".join(traceback.format_exception(err)).strip()
    return f"{text}\n(traceback end) ...{tb[-limit:]}"


def _torch_worker(args) -> None:
    name, opts = parse_variant(args.variant_spec, "fp32")
    ready = {"side": "pytorch", "variant": name, "options": opts, "device": args.device}
    try:
        step, run_round, info = _torch_setup(args, opts)
        ready.update(info)
        start = time.perf_counter()
        step()  # the first call: cuDNN's algorithm search, torch.compile's compile
        ready["first_step_s"] = time.perf_counter() - start
        start = time.perf_counter()
        run_round(max(args.warmup - 1, 0))
        ready["warmup_s"] = time.perf_counter() - start
    except Exception as err:  # a variant that cannot run is reported, not fatal
        ready["error"] = _error_text(err)
        print(json.dumps(ready), flush=True)
        return
    _serve(ready, run_round)


def _torch_setup(args, opts: dict):
    import torch
    import torch.nn.functional as F

    from v2f_jax import config_lib
    from v2f_jax.inference import torch_reference as ref

    config = config_lib.load_config(args.config, args.config_override)
    if config.model.arch != "wen2019":
        raise ValueError(f"the PyTorch reference has the wen2019 networks, not {config.model.arch}")
    m = config.model
    n_mels, embed = config.data.n_mels, m.embed_dim

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no CUDA device")
    torch.set_num_threads(args.torch_threads)
    if cuda:
        # What a GPU user sets: TF32 for what stays float32, cuDNN picks its fastest algorithms.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    e_net = ref.VoiceEmbedNet(n_mels, tuple(m.voice_channels), embed)
    g_net = ref.Generator(embed, tuple(m.gen_channels), 3)
    f_net = ref.FaceEmbedNet(3, tuple(m.trunk_channels), embed)
    d_net = ref.Classifier(embed, (), 1)
    c_net = ref.Classifier(embed, (), NUM_IDS)
    e_net.eval()
    memory_format = torch.channels_last if opts["channels_last"] else torch.contiguous_format
    for net in (e_net, g_net, f_net, d_net, c_net):
        net.to(device)
    g_net.to(memory_format=memory_format)
    f_net.to(memory_format=memory_format)

    def adam(net):
        extra = {"fused": True} if opts["fused_adam"] else {}
        return torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999), **extra)

    g_opt, f_opt, d_opt, c_opt = adam(g_net), adam(f_net), adam(d_net), adam(c_net)
    if opts["compile"]:
        compiled = [torch.compile(n, dynamic=False) for n in (e_net, g_net, f_net, d_net, c_net)]
        e_run, g_run, f_run, d_run, c_run = compiled
    else:
        e_run, g_run, f_run, d_run, c_run = e_net, g_net, f_net, d_net, c_net

    b, t, size = args.batch, args.frames, config.data.image_size
    gen = torch.Generator().manual_seed(0)
    voice = torch.randn(b, n_mels, t, generator=gen).to(device)
    voice_label = torch.randint(0, NUM_IDS, (b,), generator=gen).to(device)
    face = (torch.rand(b, 3, size, size, generator=gen) * 2 - 1).to(device)
    face = face.contiguous(memory_format=memory_format)
    face_label = torch.randint(0, NUM_IDS, (b,), generator=gen).to(device)
    real_label = torch.ones(b, 1, device=device)
    fake_label = torch.zeros(b, 1, device=device)
    bf16 = opts["precision"] == "bf16"
    dedup = opts["dedup"]

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step():
        noise = 0.05 * torch.randn(b, embed, 1, 1, device=device)
        with torch.no_grad(), autocast():
            embeddings = e_run(voice).float()  # [B, D, 1, 1]: E's forward pools over time
        embeddings = F.normalize(embeddings)
        embeddings = F.normalize(embeddings + noise)
        with autocast():
            fake = g_run(embeddings)

        f_opt.zero_grad()
        d_opt.zero_grad()
        c_opt.zero_grad()
        with autocast():
            if dedup:
                feats = f_run(torch.cat([face, fake.detach()]))
                real_score_out, fake_score_out = d_run(feats).float().chunk(2)
                real_label_out = c_run(feats[:b]).float()
            else:
                real_score_out = d_run(f_run(face)).float()
                fake_score_out = d_run(f_run(fake.detach())).float()
                real_label_out = c_run(f_run(face)).float()
        d_real = F.binary_cross_entropy(torch.sigmoid(real_score_out), real_label)
        d_fake = F.binary_cross_entropy(torch.sigmoid(fake_score_out), fake_label)
        c_real = F.nll_loss(F.log_softmax(real_label_out, 1), face_label)
        (d_real + d_fake + c_real).backward()
        f_opt.step()
        d_opt.step()
        c_opt.step()

        g_opt.zero_grad()
        with autocast():
            if dedup:
                feats = f_run(fake)
                fake_score_out, fake_label_out = d_run(feats).float(), c_run(feats).float()
            else:
                fake_score_out = d_run(f_run(fake)).float()
                fake_label_out = c_run(f_run(fake)).float()
        gd = F.binary_cross_entropy(torch.sigmoid(fake_score_out), real_label)
        gc = F.nll_loss(F.log_softmax(fake_label_out, 1), voice_label)
        (gd + gc).backward()
        g_opt.step()
        losses = (d_real, d_fake, c_real, gd, gc)
        if opts["no_item"]:
            return torch.stack([x.detach() for x in losses])
        # The reference's meters call .item() on every loss every iteration.
        return [x.item() for x in losses]

    def run_round(n: int) -> dict:
        times, kept = [], []
        start = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            out = step()
            if opts["no_item"]:
                kept.append(out)
            times.append(time.perf_counter() - t0)
        finite = True
        if kept:
            finite = bool(torch.isfinite(torch.stack(kept).cpu()).all())
        if cuda:
            torch.cuda.synchronize()
        return {"times": times, "round_s": time.perf_counter() - start, "finite": finite}

    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "autocast": "bfloat16" if bf16 else None,
    }
    if cuda:
        info.update(
            device_name=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32=True,
            cudnn_benchmark=True,
        )
    if opts["compile"]:
        info["compile"] = {"mode": "default", "dynamic": False}
    return step, run_round, info


# ----------------------------------------------------------------------------- JAX worker


def _jax_worker(args) -> None:
    ready = {"side": "jax", "device": args.device}
    try:
        import jax

        from v2f_jax import config_lib
        from v2f_jax.bench import hlo, probes, step

        backend = jax.default_backend()
        if args.device == "cuda" and backend != "gpu":
            raise RuntimeError(f"--device cuda, but JAX's backend is {backend}")
        config = config_lib.load_config(args.config, args.config_override)
        config = step.apply_step_overrides(
            config, batch_size=args.batch, dtype=args.dtype, parallel_mode="jit", impl=args.impl
        )
        runner = step.StepRunner(config, frames=args.frames, num_ids=NUM_IDS)
        ready["compile_s"] = runner.compile()
        start = time.perf_counter()
        runner.run(1)
        ready["first_step_s"] = time.perf_counter() - start
        runner.run(max(args.warmup - 1, 0))
        ready.update(
            flops_per_step=hlo.compiled_flops(runner.compiled),
            impl=config.model.impl,
            hlo=hlo.hlo_op_counts(runner.compiled),
            matmul_precision=str(jax.config.jax_default_matmul_precision),
            machine=probes.machine(),
        )
        if args.peak:
            # A 2048^3 product is over in microseconds on a GPU: a larger one there.
            size = 8192 if backend == "gpu" else 2048
            ready["peak_gflops_per_s"] = probes.matmul_peak(args.dtype, size=size)["gflops_per_s"]
    except Exception as err:
        ready["error"] = _error_text(err)
        print(json.dumps(ready), flush=True)
        return

    def run_round(n: int) -> dict:
        if args.device == "cpu":
            times = runner.run(n)  # each step blocked on, as before
            return {"times": times, "round_s": sum(times)}
        # As `v2f train` runs: steps dispatched back to back, one wait at the end of the round.
        if hasattr(runner, "run_pipelined"):
            return {"round_s": runner.run_pipelined(n)}
        start = time.perf_counter()
        state, metrics = runner.state, runner.last_metrics
        for _ in range(n):
            state, metrics = runner.step(state, runner.batch)
        jax.block_until_ready((state, metrics))
        runner.state, runner.last_metrics = state, metrics
        return {"round_s": time.perf_counter() - start}

    _serve(ready, run_round)


def _serve(ready: dict, run_round) -> None:
    """Line protocol: we print `ready`, then answer each `run N` with a round of N steps."""
    out = sys.stdout
    print(json.dumps(ready), file=out, flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        print(json.dumps(run_round(int(cmd[1]))), file=out, flush=True)


# ----------------------------------------------------------------------------- parent


class Worker:
    """One worker process; its stdout lines arrive through a queue so that every wait can time
    out (a hung compile or step is reported as that worker's error, the others go on)."""

    def __init__(self, side: str, args, device: str, variant: str | None = None):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            side,
            "--device",
            device,
            "--batch",
            str(args.batch),
            "--frames",
            str(args.frames),
            "--dtype",
            args.dtype,
            "--config",
            args.config,
            "--torch-threads",
            str(args.torch_threads),
            "--impl",
            args.impl,
            "--warmup",
            str(args.warmup),
        ]
        if variant:
            cmd += ["--variant-spec", variant]
        cmd += [f"--config-override={o}" for o in args.config_override]
        if args.peak:
            cmd.append("--peak")
        pythonpath = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(":") if p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath), TF_CPP_MIN_LOG_LEVEL="2")
        for key in host_memory.SETTINGS:
            env.pop(key, None)
        if args.allocator == "reuse":
            env.update(host_memory.SETTINGS)
        if side == "jax":
            env["JAX_PLATFORMS"] = "cuda" if device == "cuda" else "cpu"
            own = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE")
            if device == "cuda" and not any(k in env for k in own):
                # JAX takes 75% of the GPU by default; leave room for the PyTorch workers.
                env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.4"
        self.side = side
        self.name = variant or "v2f-jax"
        self.info: dict = {}
        self.error: str | None = None
        self.rounds: list[dict] = []
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
        )
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    @property
    def ok(self) -> bool:
        return self.error is None

    def _read(self, timeout: float, what: str) -> dict | None:
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.fail(f"no answer to {what} within {timeout:.0f} s")
                return None
            if line is None:
                self.fail(f"worker died during {what} (exit {self.proc.wait()})")
                return None
            if line.startswith("{"):
                return json.loads(line)
            # Anything else a library printed to stdout is passed on.
            print(f"  [{self.name}] {line.rstrip()}", file=sys.stderr)

    def wait_ready(self, timeout: float) -> None:
        info = self._read(timeout, "start-up")
        if info is None:
            return
        self.info = info
        if "error" in info:
            self.fail(info["error"])

    def run(self, n: int, timeout: float) -> dict | None:
        try:
            self.proc.stdin.write(f"run {n}\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.fail(f"worker gone (exit {self.proc.poll()})")
            return None
        got = self._read(timeout, f"a round of {n} steps")
        if got is not None:
            self.rounds.append(got)
        return got

    def fail(self, error: str) -> None:
        self.error = self.error or error
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=30 if self.ok else 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _step_s(round_: dict, n: int, device: str) -> float:
    """One round's seconds per step: the median step on the CPU (every step ends synchronised),
    the round's wall time over its steps on CUDA (the round ends synchronised)."""
    if device == "cpu" and round_.get("times"):
        return statistics.median(round_["times"])
    return round_["round_s"] / n


def _stats(step_s: list[float], batch: int) -> dict:
    med = statistics.median(step_s)
    return {
        "step_s_median": med,
        "step_s_min": min(step_s),
        "step_s_max": max(step_s),
        "samples_per_s": batch / med,
    }


def compare(args) -> tuple[dict, int]:
    log = sys.stderr
    device = args.device or default_device()
    torch_dtype = args.torch_dtype or args.dtype
    variants = variants_for(args, device)
    has_torch = importlib.util.find_spec("torch") is not None
    results: dict[str, dict] = {}
    to_start = []
    for name, options in variants.items():
        results[name] = {"options": options}
        skip = next((why for (f, d), why in NOT_ON.items() if options[f] and d == device), None)
        if not has_torch:
            results[name].update(status="error", error="torch is not installed")
        elif skip:
            results[name].update(status="skipped", reason=skip)
        else:
            to_start.append(name)
    print(
        f"starting workers on {device} (B={args.batch}, T={args.frames}, ours {args.dtype}, "
        f"PyTorch {', '.join(to_start) or 'none'}, {args.torch_threads} PyTorch threads, "
        f"{args.allocator} malloc)...",
        file=log,
    )
    # By default one at a time on the CPU (our compile gets the whole machine, as before), all at
    # once on CUDA (compiles overlap); the timed rounds run one worker at a time either way.
    parallel = (args.start or ("parallel" if device == "cuda" else "sequential")) == "parallel"
    # --time-limit: start-up gets at most 3/4 of it, and no round starts that would not end in it
    # (the JSON then reports the rounds that ran).
    t_start = time.monotonic()
    limit = args.time_limit or float("inf")

    def left() -> float:
        return limit - (time.monotonic() - t_start)

    ready_until = time.monotonic() + min(args.ready_timeout if parallel else limit, 0.75 * limit)
    workers: list[Worker] = []
    jax_worker = None
    stopped = None
    rounds_run = 0
    try:
        for side, variant in [("pytorch", v) for v in to_start] + [("jax", None)]:
            w = Worker(side, args, device, variant)
            workers.append(w)
            jax_worker = w if side == "jax" else jax_worker
            if not parallel:
                w.wait_ready(max(min(args.ready_timeout, ready_until - time.monotonic()), 1.0))
        if parallel:
            for w in workers:
                w.wait_ready(max(ready_until - time.monotonic(), 1.0))
        for w in workers:
            shown = {k: v for k, v in w.info.items() if k not in ("machine", "hlo", "options")}
            print(f"  {w.name}: {json.dumps(shown) if w.ok else 'FAILED: ' + w.error}", file=log)

        n = args.steps_per_round
        ratios: dict[str, list[float]] = {w.name: [] for w in workers if w.side == "pytorch"}
        last_round_s = 0.0
        for r in range(args.rounds):
            alive = [w for w in workers if w.ok]
            if not alive:
                break
            if r and left() < 1.2 * last_round_s + 2:
                stopped = f"after {r} of {args.rounds} rounds: --time-limit {args.time_limit:g} s"
                print(f"  stopped {stopped}", file=log)
                break
            k = r % len(alive)
            got = {}
            round_start = time.monotonic()
            for w in alive[k:] + alive[:k]:
                res = w.run(n, max(min(args.round_timeout, left() - 2), 1.0))
                if res is not None:
                    got[w.name] = _step_s(res, n, device)
            last_round_s = time.monotonic() - round_start
            rounds_run = r + 1
            line = ", ".join(f"{name} {s:.4g}" for name, s in got.items())
            if jax_worker.name in got:
                for name, s in got.items():
                    if name in ratios:
                        ratios[name].append(s / got[jax_worker.name])
            print(f"  round {r} (s/step): {line}", file=log)
    finally:
        for w in workers:
            w.close()

    b = args.batch
    summary = {
        "device": device,
        "batch": b,
        "frames": args.frames,
        "config": args.config,
        "dtype": args.dtype,
        "torch_dtype": torch_dtype,
        "rounds": args.rounds,
        "rounds_run": rounds_run,
        "stopped_early": stopped,
        "steps_per_round": args.steps_per_round,
        "warmup": args.warmup,
        "timing": "median step of each round"
        if device == "cpu"
        else "round wall time / steps, synchronised at the end of the round",
        "torch_variant": args.torch_variant,
        "torch_variants": list(variants),
        "torch_threads": args.torch_threads,
        "channels_last": args.channels_last,
        "impl": args.impl,
        "allocator": args.allocator,
        "date": time.strftime("%Y-%m-%d"),
    }
    by_name = {w.name: w for w in workers}
    # Ours.
    jw = jax_worker
    if jw is not None and jw.ok and jw.rounds:
        jax_steps = [_step_s(x, args.steps_per_round, device) for x in jw.rounds]
        summary["jax"] = _stats(jax_steps, b)
        for key in ("compile_s", "first_step_s", "flops_per_step", "hlo", "matmul_precision"):
            summary["jax"][key] = jw.info.get(key)
        if jw.info.get("flops_per_step"):
            summary["jax"]["gflops_per_s"] = (
                jw.info["flops_per_step"] / summary["jax"]["step_s_median"] / 1e9
            )
        if "peak_gflops_per_s" in jw.info:
            summary["jax"]["peak_gflops_per_s"] = jw.info["peak_gflops_per_s"]
    else:
        summary["jax"] = {"error": (jw.error if jw else None) or "no rounds ran"}
    summary["machine"] = jw.info.get("machine") if jw else None

    # Theirs, every variant.
    for name, entry in results.items():
        w = by_name.get(name)
        if w is None:
            continue
        drop = ("side", "variant", "options", "error")
        info = {k: v for k, v in w.info.items() if k not in drop}
        if w.ok and w.rounds:
            steps = [_step_s(x, args.steps_per_round, device) for x in w.rounds]
            entry.update(info, status="ok", **_stats(steps, b))
            entry["losses_finite"] = all(x.get("finite", True) for x in w.rounds)
            if ratios.get(name):
                entry["speedup_median_of_rounds"] = statistics.median(ratios[name])
                entry["speedup_range"] = [min(ratios[name]), max(ratios[name])]
        else:
            entry.update(info, status="error", error=w.error or "no rounds ran")
    summary["pytorch_variants"] = results
    ran = {k: v for k, v in results.items() if v.get("status") == "ok"}
    fastest = max(ran, key=lambda k: ran[k]["samples_per_s"]) if ran else None
    summary["fastest_pytorch_variant"] = fastest
    summary["fastest_pytorch_samples_per_s"] = ran[fastest]["samples_per_s"] if fastest else None
    if fastest:
        peer = ran[fastest]
        summary["pytorch"] = {
            k: peer.get(k)
            for k in ("step_s_median", "step_s_min", "step_s_max", "samples_per_s", "torch")
        }
        summary["pytorch"].update(variant=fastest, threads=peer.get("threads"))
        if "step_s_median" in summary["jax"]:
            summary["speedup_median_of_rounds"] = peer.get("speedup_median_of_rounds")
            summary["speedup_range"] = peer.get("speedup_range")
            summary["speedup_of_medians"] = peer["step_s_median"] / summary["jax"]["step_s_median"]
    else:
        summary["pytorch"] = None

    _print_table(summary, log)
    ok = "step_s_median" in summary["jax"] and fastest is not None
    return summary, 0 if ok else 1


def _print_table(summary: dict, log) -> None:
    width = max([len(n) for n in summary["pytorch_variants"]] + [20]) + 9
    print(f"\n{'':{width}s}{'s/step':>10s}{'samples/s':>12s}{'ours x':>8s}", file=log)
    for name, v in summary["pytorch_variants"].items():
        mark = "*" if name == summary["fastest_pytorch_variant"] else " "
        if v.get("status") != "ok":
            why = v.get("reason") or (v.get("error") or "").splitlines()[0][:60]
            print(f"{mark}pytorch {name:{width - 9}s}  {v['status']}: {why}", file=log)
            continue
        sp = v.get("speedup_median_of_rounds")
        print(
            f"{mark}pytorch {name:{width - 9}s}{v['step_s_median']:10.4g}{v['samples_per_s']:12.1f}"
            f"{'' if sp is None else format(sp, '8.2f'):>8s}",
            file=log,
        )
    j = summary["jax"]
    if "step_s_median" in j:
        print(
            f" {'v2f-jax':{width - 1}s}{j['step_s_median']:10.4g}{j['samples_per_s']:12.1f}",
            file=log,
        )
    else:
        print(f" v2f-jax FAILED: {j['error'][:200]}", file=log)
    if summary.get("speedup_median_of_rounds"):
        lo, hi = summary["speedup_range"]
        print(
            f"speedup over the fastest PyTorch ({summary['fastest_pytorch_variant']}): "
            f"{summary['speedup_median_of_rounds']:.2f}x (median of {summary['rounds_run']} "
            f"rounds, range {lo:.2f}-{hi:.2f})",
            file=log,
        )


def track_bf16(args) -> dict:
    """bf16 against fp32 on the tiny config: same start, same batches, every step's losses.

    A GAN's step-by-step losses are chaotic: two fp32 runs that differ only in their seed drift
    apart within tens of steps. So the yardstick is that drift: bf16's distance from fp32 (same
    seed) next to a second fp32 run's (seed + 1), both on losses smoothed over `window` steps.
    """
    import numpy as np

    from v2f_jax import config_lib
    from v2f_jax.bench import loss_tracking, step

    runs = {"fp32": ("float32", 0), "bf16": ("bfloat16", 0), "fp32_seed1": ("float32", 1)}
    histories = {}
    for name, (dtype, seed) in runs.items():
        config = config_lib.load_config(REPO / "configs/tiny.py", args.config_override)
        config = step.apply_step_overrides(config, dtype=dtype, impl=args.impl)
        config.seed = seed
        print(f"  {name}: {args.track_bf16} steps...", file=sys.stderr)
        histories[name] = loss_tracking.loss_history(config, steps=args.track_bf16)
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="where both sides run (default: cuda if torch.cuda.is_available() else cpu)",
    )
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
        help="PyTorch's: float32, or bfloat16 autocast (default: --dtype); the precision of "
        "variants that name none",
    )
    parser.add_argument(
        "--torch-variants",
        default=None,
        metavar="LIST",
        help="comma-separated PyTorch variants, each a precision and options joined by '+' "
        f"(fp32|bf16, {'|'.join(FEATURES)}|all), or 'gpu' for the GPU list (the default on "
        "CUDA); default on the CPU: the published loop in --torch-dtype",
    )
    parser.add_argument("--rounds", type=int, default=None, help="default: 6 (CPU), 5 (CUDA)")
    parser.add_argument(
        "--steps-per-round", type=int, default=None, help="default: 2 (CPU), 20 (CUDA)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps per worker before the rounds (the first included; default: 1 on the "
        "CPU, 5 on CUDA)",
    )
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--torch-variant",
        choices=("reference", "dedup"),
        default="reference",
        help="dedup: add our step's structure to every PyTorch variant",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="PyTorch G and F in channels_last memory format (added to every variant)",
    )
    parser.add_argument("--config", default=str(REPO / "configs/wen2019.py"))
    parser.add_argument(
        "--config-override",
        action="append",
        default=[],
        help="a --config.x=y for both sides (repeatable)",
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
        "--ready-timeout",
        type=float,
        default=900,
        help="seconds a worker may take to start (compiles included); a late one is an error",
    )
    parser.add_argument(
        "--start",
        choices=("sequential", "parallel"),
        default=None,
        help="start the workers one after another (default on the CPU) or all at once (CUDA)",
    )
    parser.add_argument(
        "--round-timeout", type=float, default=600, help="seconds a worker may take for a round"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds for the whole comparison: start-up gets at most 3/4 of it, and the rounds "
        "stop early rather than run past it (the JSON says so); default: none",
    )
    parser.add_argument(
        "--track-bf16",
        type=int,
        default=0,
        metavar="STEPS",
        help="instead: fp32 vs bf16 losses over STEPS steps of configs/tiny.py",
    )
    parser.add_argument("--worker", choices=("pytorch", "jax"), help=argparse.SUPPRESS)
    parser.add_argument("--variant-spec", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "pytorch":
        return _torch_worker(args) or 0
    if args.worker == "jax":
        return _jax_worker(args) or 0
    if args.track_bf16:
        print(json.dumps(track_bf16(args), sort_keys=True))
        return 0
    device = args.device or default_device()
    args.device = device
    cuda = device == "cuda"
    if args.rounds is None:
        args.rounds = 5 if cuda else 6
    if args.steps_per_round is None:
        args.steps_per_round = 20 if cuda else 2
    if args.warmup is None:
        args.warmup = 5 if cuda else 1
    try:
        variants_for(args, device)
    except ValueError as err:
        parser.error(str(err))
    result, code = compare(args)
    print(json.dumps(result, sort_keys=True))
    return code


if __name__ == "__main__":
    sys.exit(main())
