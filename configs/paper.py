"""Maniyar, Budihal & Siddamal 2022 (Fig. 4): upsample+conv generator, separate D and C trunks."""

from v2f_jax.configs import wen2019


def get_config():
    cfg = wen2019.get_config()
    cfg.model.arch = "paper"
    return cfg
