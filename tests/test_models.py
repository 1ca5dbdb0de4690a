"""Shapes and parameter counts of the four networks against the published architectures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from v2f_jax import config_lib, models
from v2f_jax import state as state_lib

# The reference's PyTorch state dicts (weights + biases + BatchNorm affine; no running stats).
WEN2019_COUNTS = {"E": 2_670_720, "G": 12_191_875, "F": 3_310_720, "D": 64, "C": 64 * 924}
# Maniyar et al. Fig. 4 with the same channel widths: G = 4x4 projection, then nearest x2 + 3x3
# conv per stage, 1x1 to RGB; D and C each own a 3x3 trunk 32-64-128-256-512 + 4x4 -> 64.
PAPER_COUNTS = {"E": 2_670_720, "G": 7_317_635, "F": 2_092_928, "D": 64, "C": 64 * 924}


def _networks(arch):
    """Networks and the shapes of a fresh state (jax.eval_shape: no 15M-parameter init)."""
    config = config_lib.load_config(f"configs/{arch}.py")
    nets = models.Networks(config.model, num_ids=924)
    return config, nets, jax.eval_shape(lambda: state_lib.create_gan_state(config, nets))


@pytest.mark.parametrize("arch,counts", [("wen2019", WEN2019_COUNTS), ("paper", PAPER_COUNTS)])
def test_parameter_counts_match_the_published_networks(arch, counts):
    _, _, state = _networks(arch)
    count = state_lib.count_params
    assert count(state.embedder["params"]) == counts["E"]
    assert count(state.generator) == counts["G"]
    if arch == "wen2019":
        assert count(state.critics["trunk"]) == counts["F"]
    else:
        assert count(state.critics["d_trunk"]) == counts["F"]
        assert count(state.critics["c_trunk"]) == counts["F"]
    assert count(state.critics["d_head"]) == counts["D"]
    assert count(state.critics["c_head"]) == counts["C"]
    # Running statistics are buffers, not parameters, as in PyTorch.
    assert count(state.embedder["batch_stats"]) == 2 * (256 + 384 + 576 + 864)


@pytest.mark.parametrize("arch", ["wen2019", "paper"])
def test_output_shapes(arch):
    _, nets, state = _networks(arch)
    mel = jax.ShapeDtypeStruct((2, 300, 64), jnp.float32)
    emb = jax.eval_shape(nets.embedder.apply, state.embedder, mel)
    assert emb.shape == (2, 64)
    faces = jax.eval_shape(nets.generator.apply, {"params": state.generator}, emb)
    assert faces.shape == (2, 64, 64, 3) and faces.dtype == jnp.float32
    adv, ids = jax.eval_shape(nets.critics.apply, {"params": state.critics}, faces)
    assert adv.shape == (2,) and ids.shape == (2, 924)


def test_embedder_accepts_any_length():
    config = config_lib.load_config("configs/tiny.py")
    nets = models.Networks(config.model, num_ids=3)
    variables = state_lib.init_embedder(nets, jax.random.PRNGKey(0))
    outputs = [nets.embedder.apply(variables, jnp.ones((1, t, 64))) for t in (64, 300, 801)]
    assert all(out.shape == (1, 16) for out in outputs)
    assert all(np.isfinite(out).all() for out in outputs)


def test_generator_upsampling_matches_pytorch_transposed_conv_geometry():
    """ConvTranspose2d(k=4, s=2, p=1) doubles the size; (k=4, s=1, p=0) maps 1x1 to 4x4."""
    from v2f_jax.ops import conv

    x = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 7, 3))
    up = conv.ConvTranspose2d(2, 4, 2, 1)
    assert up.apply(up.init(jax.random.PRNGKey(1), x), x).shape == (1, 10, 14, 2)
    first = conv.ConvTranspose2d(2, 4, 1, 0)
    one = jnp.ones((1, 1, 1, 3))
    assert first.apply(first.init(jax.random.PRNGKey(1), one), one).shape == (1, 4, 4, 2)


def test_unknown_architecture_is_a_clear_error():
    config = config_lib.load_config("configs/tiny.py", ["--config.model.arch=dcgan"])
    with pytest.raises(ValueError, match="dcgan"):
        models.Networks(config.model, num_ids=3)


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-5), ("bfloat16", 3e-2)])
def test_padded_embedder_equals_the_cropped_one(dtype, tol):
    """E over a batch padded to 800 frames, told each crop's length, gives what E gives on the
    crops themselves: frozen (running statistics) and training (batch statistics of the valid
    frames only), for wen2019 crop lengths whose halvings are odd (each such layer's last output
    reads the padding: 425 -> 213 -> 107 -> 54 -> 27 -> 14) and even."""
    config = config_lib.load_config("configs/tiny.py", [f"--config.model.dtype={dtype}"])
    nets = models.Networks(config.model, num_ids=3)
    variables = state_lib.init_embedder(nets, jax.random.PRNGKey(0))
    # Non-trivial running statistics, so a padded frame would show if it leaked through BN.
    rng = np.random.default_rng(0)
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype), variables["batch_stats"]
    )
    longest = 800
    for length in (425, 300, 97):
        mel = rng.normal(size=(2, length, 64)).astype(np.float32)
        padded = np.zeros((2, longest, 64), np.float32)
        padded[:, :length] = mel
        lengths = jnp.full((2,), length, jnp.int32)
        cropped = nets.embedder.apply(variables, mel)
        masked = nets.embedder.apply(variables, padded, lengths=lengths)
        np.testing.assert_allclose(masked, cropped, rtol=tol, atol=tol, err_msg=f"T={length}")
        # Training mode: BatchNorm's batch statistics count only valid frames.
        (c_out, c_vars), (m_out, m_vars) = (
            nets.embedder.apply(variables, x, train=True, mutable=["batch_stats"], **kw)
            for x, kw in ((mel, {}), (padded, {"lengths": lengths}))
        )
        np.testing.assert_allclose(m_out, c_out, rtol=tol, atol=tol, err_msg=f"train T={length}")
        for a, b in zip(jax.tree_util.tree_leaves(m_vars), jax.tree_util.tree_leaves(c_vars)):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"stats T={length}")
