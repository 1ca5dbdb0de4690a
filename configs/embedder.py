"""Speaker-classification pretraining of the voice embedder E (what the reference shipped as
`voice_embedding.pth`). Then: `v2f train --config configs/wen2019.py
--config.train.embedder_init=WORKDIR_OF_THIS_RUN`."""

from v2f_jax.configs import wen2019


def get_config():
    cfg = wen2019.get_config()
    cfg.train.task = "embedder"
    cfg.train.steps = 20_000
    cfg.optim.lr = 1e-3
    cfg.optim.b1 = 0.9
    return cfg
