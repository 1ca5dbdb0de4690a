"""What a run reports: `metrics.jsonl`, TensorBoard scalars and images, the progress line.

Process 0 writes; other processes get a writer that does nothing. TensorBoard goes through
`tf.summary` (the `tensorboard` package); where TensorFlow is not installed (an accelerator image
without it) the run still writes `metrics.jsonl`, and says once that TensorBoard is off.
"""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np

from v2f_jax import files

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
# What a person reads in the progress line, per task.
PROGRESS_KEYS = {"gan": ("d_loss", "c_loss", "g_adv", "g_id"), "embedder": ("e_loss", "e_acc")}

logger = logging.getLogger("v2f.train")


class MetricWriters:
    """Appends `{"step", "<name>": value, ...}` lines to `workdir/metrics.jsonl` and the same
    scalars to TensorBoard (`workdir/tb`).

    Args:
      workdir: the run directory.
      resumed_step: lines after this step (logged by a killed run after its last checkpoint, and
        about to be redone) are dropped.
      enabled: False on every process but 0.
    """

    def __init__(self, workdir: str, resumed_step: int, enabled: bool):
        self.enabled = enabled
        self._tb = None
        self._tf = None
        if not enabled:
            return
        self.jsonl = os.path.join(workdir, METRICS_FILE)
        self._truncate_after(resumed_step)
        try:
            import tensorflow as tf
        except ImportError:
            logger.warning("TensorFlow is not installed: no TensorBoard logs (metrics.jsonl only)")
            return
        self._tf = tf
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, TENSORBOARD_DIR))

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.jsonl):
            return
        keep = []
        with open(self.jsonl) as f:
            for line in f:
                try:
                    if json.loads(line)["step"] <= step:
                        keep.append(line if line.endswith("\n") else line + "\n")
                except (ValueError, KeyError, TypeError):
                    pass  # a line cut by a kill
        files.write_text(self.jsonl, "".join(keep))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, **values}, sort_keys=True) + "\n")
        if self._tb is not None:
            with self._tb.as_default(step=step):
                for name, value in values.items():
                    self._tf.summary.scalar(name, value)
            self._tb.flush()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """`image`: uint8 `[H, W, 3]`."""
        if self._tb is None:
            return
        with self._tb.as_default(step=step):
            self._tf.summary.image(name, image[None], max_outputs=1)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def last_logged(workdir: str) -> dict[str, float]:
    """The `train/...` values of the last line of `workdir/metrics.jsonl` ({} if none)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return {}
    last = {}
    with open(path) as f:
        for line in f:
            try:
                last = json.loads(line)
            except ValueError:
                pass
    return {k: v for k, v in last.items() if k.startswith("train/")}


def format_duration(seconds: float) -> str:
    """`3725` -> `"1h02m"`, `65` -> `"1m05s"`, `7` -> `"7s"`; not finite -> `"?"`."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_line(
    step: int, total: int, steps_per_s: float, global_batch: int, means: dict, task: str
) -> str:
    """`step  400/800 ( 50%) |   3.10 steps/s |     99.2 samples/s | ETA   2m09s | d_loss ...`."""
    losses = " ".join(f"{k} {means[k]:.4f}" for k in PROGRESS_KEYS[task] if k in means)
    eta = format_duration((total - step) / steps_per_s) if steps_per_s > 0 else "?"
    width = len(str(total))
    return (
        f"step {step:>{width}}/{total} ({100 * step // total:3d}%) | {steps_per_s:6.2f} steps/s | "
        f"{steps_per_s * global_batch:8.1f} samples/s | ETA {eta:>7} | {losses}"
    )
