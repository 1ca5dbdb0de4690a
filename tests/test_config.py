"""Configs load, and overrides either apply with the right type or fail naming the key."""

import pytest

from v2f_jax import config_lib


@pytest.mark.parametrize("name", ["wen2019", "paper", "tiny", "embedder"])
def test_every_config_loads(name):
    config = config_lib.load_config(f"configs/{name}.py")
    assert config.optim.lr > 0 and config.train.batch_size > 0


def test_published_defaults():
    config = config_lib.load_config("configs/wen2019.py")
    assert (config.optim.lr, config.optim.b1, config.optim.b2) == (2e-4, 0.5, 0.999)
    assert config.train.embed_noise == 0.05 and not config.train.train_embedder
    assert min(config.data.crop_lengths) == 300 and max(config.data.crop_lengths) == 800


def test_overrides_are_typed():
    config = config_lib.load_config(
        "configs/tiny.py",
        [
            "--config.train.batch_size=64",
            "--config.optim.lr=1",
            "--config.model.dtype=bfloat16",
            "--config.train.train_embedder=true",
            "--config.data.crop_lengths=(64, 128)",
            "--config.data.crop_lengths=80",
        ],
    )
    assert config.train.batch_size == 64
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.model.dtype == "bfloat16"
    assert config.train.train_embedder is True
    assert config.data.crop_lengths == (80,)


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.train.batchsize=3", "unknown config key 'train.batchsize'"),
        ("--config.trian.steps=3", "unknown config key 'trian'"),
        ("--config.train.batch_size=big", "train.batch_size"),
        ("--config.train.train_embedder=maybe", "train.train_embedder"),
        ("--config.train.steps", "no '=value'"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config("configs/tiny.py", [override])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="nope.py"):
        config_lib.load_config(tmp_path / "nope.py")
