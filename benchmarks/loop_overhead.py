"""How much of the step's own speed the training loop keeps: `v2f train` against `v2f bench`.

Runs, side by side in one process tree: `v2f bench`'s step mode (pipelined samples/s: calls
dispatched back to back on a synthetic batch, no input pipeline, no logging) and a `v2f train` run
of the same config on real records (the tf.data reader, metrics, checkpoints), whose steady-state
samples/s is read from its `metrics.jsonl` (log intervals after the first, so compilation and the
reader's warm-up are left out). The records are read once beforehand, so they sit in the page
cache. Prints a table on stderr and one JSON line.

    python benchmarks/loop_overhead.py [--config configs/tiny.py --batch 32 --steps-per-call 8
        --steps 400 --records DIR --sample-every N]

Without `--records` a corpus is synthesised (`v2f synth`, 48 identities) and prepared in a
temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def _records(tmp: pathlib.Path) -> pathlib.Path:
    corpus, records = tmp / "corpus", tmp / "records"
    _run(["v2f", "synth", "--out", str(corpus), "--identities", "48", "--utterances", "4"])
    _run(
        [
            "v2f",
            "prepare",
            "--voices",
            str(corpus / "voices"),
            "--faces",
            str(corpus / "faces"),
            "--meta",
            str(corpus / "vox1_meta.csv"),
            "--out",
            str(records),
        ]
    )
    return records


def _warm_page_cache(records: pathlib.Path) -> None:
    for path in records.glob("*.tfrecord"):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps-per-call", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400, help="training steps of the train run")
    parser.add_argument("--records", type=pathlib.Path, default=None)
    parser.add_argument(
        "--sample-every", type=int, default=0, help="steps between sample grids (0: none)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="v2f-loop-") as tmp:
        tmp = pathlib.Path(tmp)
        records = args.records or _records(tmp)
        _warm_page_cache(records)
        k = args.steps_per_call
        bench = json.loads(
            _run(
                [
                    "v2f",
                    "bench",
                    "--config",
                    args.config,
                    "--batch",
                    str(args.batch),
                    "--steps-per-call",
                    str(k),
                    "--steps",
                    str(max(8 * k, 32)),
                    "--no-peak",
                ]
            ).splitlines()[-1]
        )
        workdir = tmp / "run"
        log_every = max(k, args.steps // 8 // k * k)
        _run(
            [
                "v2f",
                "train",
                "--config",
                args.config,
                "--records",
                str(records),
                "--workdir",
                str(workdir),
                f"--config.train.batch_size={args.batch}",
                f"--config.train.steps={args.steps}",
                f"--config.train.steps_per_call={k}",
                f"--config.train.log_every={log_every}",
                f"--config.train.sample_every={args.sample_every}",
                f"--config.checkpoint.every={args.steps}",
                "--config.train.embedder_init=random",
            ]
        )
        lines = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
        steady = [x["perf/samples_per_sec"] for x in lines[1:]] or [
            lines[-1]["perf/samples_per_sec"]
        ]
        train_rate = sorted(steady)[len(steady) // 2]
    result = {
        "config": args.config,
        "batch": args.batch,
        "steps_per_call": k,
        "sample_every": args.sample_every,
        "bench_samples_per_s_pipelined": bench["samples_per_s_pipelined"],
        "bench_samples_per_s_blocked": bench["samples_per_s"],
        "train_samples_per_s": train_rate,
        "train_over_bench": train_rate / bench["samples_per_s_pipelined"],
        "cpus": os.cpu_count(),
    }
    print(
        f"bench (pipelined) {result['bench_samples_per_s_pipelined']:.1f} samples/s | "
        f"train {train_rate:.1f} samples/s | train/bench {result['train_over_bench']:.3f}",
        file=sys.stderr,
    )
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
