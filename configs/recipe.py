"""The GAN recipe `v2f demo` runs and the README recommends for your own data: the reference's
networks and losses, with G's coarse face drawn by a linear map of the voice fitted to the
training speakers' mean faces, and G's network held to it.

    v2f train --config configs/embedder.py:BASE --records R --workdir runs/embedder
    v2f train --config configs/recipe.py:BASE --records R --workdir runs/gan \\
        --config.train.embedder_init=runs/embedder

`BASE` is `wen2019` (default), `paper` or `tiny`; `configs/recipe.py:tiny` is what `v2f demo`
trains. Every figure behind these values is in RESULTS.md.
"""

import importlib

BASES = ("wen2019", "paper", "tiny")


def get_config(base: str = "wen2019"):
    if base not in BASES:
        raise ValueError(f"unknown base config {base!r}; choose one of {BASES}")
    cfg = importlib.import_module(f"v2f_jax.configs.{base}").get_config()
    # C's identity loss lets G's network memorise its training speakers and draw a new voice
    # like the nearest of them. A linear map from E's embedding cannot: G's means over 8x8-pixel
    # cells come from one, fitted to the training speakers' mean faces before the GAN trains
    # (v2f_jax/training/coarse_face.py), and G's network draws the detail within the cells. The
    # mean-face term holds the network's own cell means to the map's, so that swapping them
    # leaves a smooth face. RESULTS.md, section 4.7.
    cfg.model.coarse_cell = 8
    cfg.train.face_target_weight = 5.0
    cfg.train.face_target_pool = 8
    if base == "tiny":
        # 600 steps on a CPU: the reference's 2e-4 needs thousands. Batch 64 rather than 32:
        # +1.9 points of 1:2 matching over eight corpora, paired (RESULTS.md).
        cfg.optim.lr = 1e-3
        cfg.train.batch_size = 64
        # Bilinear x2 + 3x3 conv in G: faces as free of checkerboard as photos, where the
        # reference's transposed convs draw one, for about 2 points of 1:2 matching. Its last
        # two layers are narrower, as they cost most (RESULTS.md, section 8).
        cfg.model.upsample = "bilinear"
        cfg.model.gen_channels = (128, 64, 32, 16, 16)
        # R1 on the critics (half the squared gradient norm of D's logit at real faces): +1.8
        # points of 1:2 matching over 14 pairs on the seven corpora, same gender unchanged. Only
        # every 4th step, at 4x the weight: the same within noise (-0.3 over the seven) with
        # the GAN at its speed without R1, where R1 on every step costs it 20-30% (RESULTS.md,
        # section 4.6).
        cfg.train.r1_weight = 1.0
        cfg.train.r1_every = 4
    return cfg
