"""Speaker-classification pretraining of the voice embedder E (what the reference shipped as
`voice_embedding.pth`): the first half of training on your own data (README).

    v2f train --config configs/embedder.py --records R --workdir runs/embedder
    v2f train --config configs/wen2019.py --records R --workdir runs/gan \\
        --config.train.embedder_init=runs/embedder

`configs/embedder.py:BASE` pretrains the E of `configs/BASE.py` (default `wen2019`; `tiny` for
the CPU demo, `paper`), so that its shapes fit the GAN that starts from it.
"""

import importlib

BASES = ("wen2019", "paper", "tiny")


def get_config(base: str = "wen2019"):
    if base not in BASES:
        raise ValueError(f"unknown base config {base!r}; choose one of {BASES}")
    cfg = importlib.import_module(f"v2f_jax.configs.{base}").get_config()
    cfg.train.task = "embedder"
    cfg.train.steps = 3_000 if base == "tiny" else 20_000  # tiny: what `v2f demo` runs
    cfg.optim.lr = 1e-3
    cfg.optim.b1 = 0.9
    # E also learns to predict a coarse picture of its speaker's face, so that what it hears of
    # the face carries over to new speakers (README: "Train on your own data").
    cfg.train.face_target_weight = 10.0
    return cfg
