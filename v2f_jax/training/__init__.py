"""What the training loop (`v2f_jax/train.py`) stands on, one job a module.

- `workdir`: one run per workdir, what a resumed run may change, a full disk.
- `embedder_init`: a pretrained voice embedder E as a GAN run's starting point.
- `coarse_face`: G's coarse map (`model.coarse_cell`), fitted with E when a GAN run starts.
- `face_targets`, `voice_mixup`: optional loss terms of the step (a speaker's mean face; voice
  blends).
- `step_metrics`, `nonfinite`, `metric_writers`: metrics fetched one interval late, the NaN
  guard, and where they are written (metrics.jsonl, TensorBoard, progress).
- `samples`: the sample grid, drawn on a worker thread.
- `compilation`, `profiling`, `host_memory`, `distributed`: the persistent compilation cache,
  `jax.profiler` traces, malloc settings for CPU runs, multi-host start and SIGTERM.
"""
