"""Small channels and short crops: tests and the 2-core CPU demo (`v2f demo`)."""

from v2f_jax.configs import wen2019


def get_config():
    cfg = wen2019.get_config()
    cfg.data.crop_lengths = (96,)
    cfg.data.shuffle_buffer = 512
    cfg.model.embed_dim = 16
    cfg.model.voice_channels = (32, 32, 48, 48)
    cfg.model.gen_channels = (128, 64, 32, 32, 16)
    cfg.model.trunk_channels = (8, 16, 32, 48, 64)
    cfg.train.batch_size = 32
    cfg.train.steps = 600
    cfg.train.log_every = 50
    cfg.train.sample_every = 200
    cfg.checkpoint.every = 200
    cfg.eval.face_embedder_steps = 300
    return cfg
