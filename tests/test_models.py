"""Shapes and parameter counts of the four networks against the published architectures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from v2f_jax import config_checks, config_lib, models, ops
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


@pytest.mark.parametrize(
    "dtype,tol", [("float32", 2e-5), pytest.param("bfloat16", 3e-2, marks=pytest.mark.slow)]
)
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


# ------------------------------------------------------------------- G's upsampling forms

UPSAMPLE_FORMS = [(u, b) for u in models.UPSAMPLES for b in (False, True)]


def _tiny_generator(upsample, blur):
    config = config_lib.load_config(
        "configs/tiny.py", [f"model.upsample={upsample}", f"model.upsample_blur={blur}"]
    )
    nets = models.Networks(config.model, num_ids=3)
    params = nets.generator.init(jax.random.PRNGKey(0), jnp.zeros((1, nets.embed_dim)))
    return config, nets, params


def test_wen2019_keeps_the_reference_transposed_convs_by_default():
    """`model.upsample=""` is each architecture's own form; wen2019's is "deconv"."""
    for arch, form in (("wen2019", "deconv"), ("paper", "nearest")):
        config = config_lib.load_config(f"configs/{arch}.py")
        assert config.model.upsample == "" and config.model.upsample_blur is False
        assert models.generator_form(config.model) == (form, False)
        assert models.Networks(config.model, num_ids=3).generator.upsample == form
    _, _, params = _tiny_generator("", False)
    assert sorted(params["params"]) == [f"deconv{i}" for i in range(6)]


@pytest.mark.parametrize("upsample,blur", UPSAMPLE_FORMS)
def test_every_upsampling_form_draws_64x64_faces(upsample, blur):
    from v2f_jax.evaluation import picture

    _, nets, params = _tiny_generator(upsample, blur)
    names = sorted(params["params"])
    if upsample == "deconv":
        assert names == [f"deconv{i}" for i in range(6)]
    else:
        assert names == [f"conv{i}" for i in range(1, 6)] + ["deconv0"]
    emb = models.unit(jax.random.normal(jax.random.PRNGKey(1), (8, nets.embed_dim)))
    faces = np.asarray(nets.generator.apply(params, emb))
    assert faces.shape == (8, 64, 64, 3) and np.isfinite(faces).all()
    # At initialisation the transposed convs' fine detail is nearly all checkerboard (their taps
    # sum differently over the four output phases); every other form has a tenth of that or
    # less (white noise: 0.009).
    share = picture.period2_share(faces)
    assert share > 0.5 if (upsample, blur) == ("deconv", False) else share < 0.1


@pytest.mark.parametrize("upsample", ["bilinear", "deconv"])
def test_a_wider_last_layer_keeps_the_face_in_place_and_refuses_even_sizes(upsample):
    """`model.gen_out_kernel=3`: G's last layer is a padded 3x3 conv (transposed conv for
    "deconv") to RGB, so the face stays 64x64 and in place; an even size would shift it."""
    name = "conv5" if upsample == "bilinear" else "deconv5"
    config = config_lib.load_config(
        "configs/tiny.py", [f"model.upsample={upsample}", "model.gen_out_kernel=3"]
    )
    generator = models.Networks(config.model, num_ids=3).generator
    params = generator.init(jax.random.PRNGKey(0), jnp.zeros((1, config.model.embed_dim)))
    last = params["params"][name]
    assert last["kernel"].shape == (3, 3, config.model.gen_channels[-1], 3)
    emb = models.unit(jax.random.normal(jax.random.PRNGKey(1), (4, config.model.embed_dim)))
    faces = np.asarray(generator.apply(params, emb))
    assert faces.shape == (4, 64, 64, 3) and np.isfinite(faces).all()
    # In place: with its centre tap only, the 3x3 layer draws what the 1x1 layer draws.
    centre = np.zeros_like(last["kernel"])
    centre[1, 1] = last["kernel"][1, 1]
    one_by_one = config_lib.load_config("configs/tiny.py", [f"model.upsample={upsample}"])
    generator_1x1 = models.Networks(one_by_one.model, num_ids=3).generator
    with_centre = {"params": {**params["params"], name: {"kernel": centre, "bias": last["bias"]}}}
    as_1x1 = {
        "params": {**params["params"], name: {"kernel": centre[1:2, 1:2], "bias": last["bias"]}}
    }
    np.testing.assert_allclose(
        generator.apply(with_centre, emb), generator_1x1.apply(as_1x1, emb), rtol=1e-5, atol=1e-5
    )
    even = config_lib.load_config("configs/tiny.py", ["model.gen_out_kernel=2"])
    with pytest.raises(config_lib.ConfigError, match="gen_out_kernel"):
        config_checks.check(even)


def test_resize_matches_jax_image_resize():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 3))
    for method in ("nearest", "bilinear"):
        want = jax.image.resize(x, (2, 10, 14, 3), method)
        np.testing.assert_allclose(models.resize2x(x, method), want, atol=1e-6, err_msg=method)
    with pytest.raises(ValueError, match="bicubic"):
        models.resize2x(x, "bicubic")


def test_blur_removes_a_period_2_pattern_and_keeps_a_constant():
    i, j = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    board = jnp.asarray(((-1.0) ** (i + j))[None, :, :, None])
    inside = np.asarray(models.blur(board))[0, 1:-1, 1:-1, 0]
    np.testing.assert_allclose(inside, 0.0, atol=1e-7)
    np.testing.assert_allclose(models.blur(jnp.full((1, 6, 6, 2), 0.3)), 0.3, atol=1e-7)


def _bilinear_as_transposed_conv(x, kernel, bias):
    """Bilinear x2 (half-pixel) of `x` taken as zero beyond its edges, then a 3x3 conv (padding
    1), written as what it is: a stride-2 transposed conv whose 6x6 kernel is built here from
    bilinear's taps (an input pixel reaches up[2i-1..2i+2] with 1/4, 3/4, 3/4, 1/4)."""
    taps = {-1: 0.25, 0: 0.75, 1: 0.75, 2: 0.25}
    # y[j] = sum_i x[i] K[j - 2i + 2], K[m] = sum_k w[k] taps[m + k - 3], per axis.
    lift = np.zeros((6, 3), np.float32)
    for m in range(6):
        for k in range(3):
            lift[m, k] = taps.get(m + k - 3, 0.0)
    kernel6 = jnp.einsum("mk,nl,klio->mnio", lift, lift, kernel)
    return ops.conv.conv_transpose(x, kernel6, 2, 2, bias)


@pytest.mark.parametrize("impl", ops.conv.IMPLS)
@pytest.mark.parametrize("side", [5, 16])  # the matmul forms' col2im and sub-pixel paths
def test_bilinear_layer_is_a_smoothed_transposed_conv_and_draws_no_checkerboard(impl, side):
    """`BilinearConv2d`, in every conv form, gives the transposed conv it stands for, and its
    gradients; whatever its kernel, its four output phases treat a flat input alike, so they
    cannot draw a checkerboard."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, side + 1, side, 4))
    layer = models.BilinearConv2d(3, convs=ops.conv.ConvForms(impl))
    variables = layer.init(jax.random.PRNGKey(1), x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    assert kernel.shape == (3, 3, 4, 3) and bias.shape == (3,)

    def layer_fn(x, kernel, bias):
        return layer.apply({"params": {"kernel": kernel, "bias": bias}}, x)

    want = _bilinear_as_transposed_conv(x, kernel, bias)
    np.testing.assert_allclose(layer_fn(x, kernel, bias), want, atol=1e-5)
    cotangent = jax.random.normal(jax.random.PRNGKey(2), want.shape)
    got_grads = jax.vjp(layer_fn, x, kernel, bias)[1](cotangent)
    want_grads = jax.vjp(_bilinear_as_transposed_conv, x, kernel, bias)[1](cotangent)
    for got, expected in zip(got_grads, want_grads):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-4)
    # A flat input comes out flat (but for the border, where the zeros beyond it reach).
    y = np.asarray(layer_fn(jnp.full((1, 8, 8, 4), 0.7), kernel, bias))[:, 2:-2, 2:-2]
    np.testing.assert_allclose(y, np.broadcast_to(y[:, :1, :1], y.shape), atol=1e-6)


def test_subpixel_layer_is_icnr_initialised_and_pixel_shuffles_as_pytorch():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 3))
    layer = models.SubpixelConv2d(4)
    variables = layer.init(jax.random.PRNGKey(1), x)
    assert variables["params"]["kernel"].shape == (3, 3, 3, 16)
    y = np.asarray(layer.apply(variables, x))
    assert y.shape == (2, 10, 14, 4)
    # ICNR: the four sub-pixels of a channel start equal, a conv then nearest x2 upsampling.
    for di, dj in ((0, 1), (1, 0), (1, 1)):
        np.testing.assert_array_equal(y[:, di::2, dj::2], y[:, ::2, ::2])
    # PixelShuffle's order: input channel c * 4 + i * 2 + j -> sub-pixel (i, j) of channel c.
    z = np.arange(2 * 3 * 8).reshape(1, 2, 3, 8).astype(np.float32)
    out = np.asarray(models.depth_to_space(jnp.asarray(z)))
    assert out.shape == (1, 4, 6, 2)
    assert out[0, 2 * 1 + 1, 2 * 2 + 0, 1] == z[0, 1, 2, 1 * 4 + 1 * 2 + 0]


def test_an_unknown_upsampling_is_refused_by_name():
    config = config_lib.load_config("configs/tiny.py", ["--config.model.upsample=bicubic"])
    from v2f_jax import config_checks

    with pytest.raises(config_lib.ConfigError, match="model.upsample"):
        config_checks.check_networks(config)
    with pytest.raises(ValueError, match="bicubic"):
        models.Generator(upsample="bicubic").init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
