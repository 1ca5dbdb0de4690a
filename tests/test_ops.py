"""Every CPU form of the convolutions equals the plain XLA form: values and gradients, fp32 ~1e-5;
and how `config.model.impl` resolves to the forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from v2f_jax import config_lib, models
from v2f_jax import state as state_lib
from v2f_jax.ops import conv, cpu

FAST = [impl for impl in conv.IMPLS if impl != "xla"]
# (kernel, stride, padding, input size): G's layers (4x4 s2 p1 at several sizes, the 1x1 -> 4x4
# projection, the 1x1 to RGB) and odd geometries that exercise the general sub-pixel algebra.
TRANSPOSE_CASES = [
    (4, 2, 1, 4),
    (4, 2, 1, 9),
    (4, 2, 1, 16),  # sub-pixel form (G's last 4x4 layer's geometry)
    (4, 1, 0, 1),
    (1, 1, 0, 5),
    (3, 2, 1, 5),
    (5, 3, 2, 4),
]
# F's layers (1x1, 4x4 s2 p1, 4x4 valid on 4x4) and others.
CONV_CASES = [(1, 1, 0, 6), (4, 2, 1, 8), (4, 2, 1, 7), (4, 1, 0, 4), (3, 2, 1, 7)]


def _inputs(k, size, in_ch=3, out_ch=5, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, in_ch)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, in_ch, out_ch)) / k, jnp.float32)
    return x, w


def _op(name, impl):
    """`ConvForms(impl).conv2d` or `.conv_transpose`: `(x, kernel, stride, padding, bias=None)`."""
    return getattr(conv.ConvForms(impl), name)


def _value_and_grads(name, case, impl):
    k, stride, padding, size = case
    x, w = _inputs(k, size)
    op = _op(name, impl)
    probe = jax.random.normal(jax.random.PRNGKey(1), _op(name, "xla")(x, w, stride, padding).shape)

    def loss(x, w):
        return jnp.sum(op(x, w, stride, padding).astype(jnp.float32) * probe)

    return op(x, w, stride, padding), jax.grad(loss, argnums=(0, 1))(x, w)


def _assert_all_same(op_name, cases, rtol=1e-5, atol=1e-5):
    for case in cases:
        # One small jit per case (XLA's compile time grows faster than the graph).
        results = jax.jit(
            lambda case=case: {i: _value_and_grads(op_name, case, i) for i in conv.IMPLS}
        )()
        ref = results["xla"]
        for impl in FAST:
            got = results[impl]
            for name, a, b in zip(
                ("y", "dx", "dw"), jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)
            ):
                assert a.shape == b.shape
                np.testing.assert_allclose(
                    a, b, rtol=rtol, atol=atol, err_msg=f"{impl} {name} k,s,p,size={case}"
                )


def test_transposed_conv_forms_equal_the_plain_form():
    _assert_all_same("conv_transpose", TRANSPOSE_CASES)


def test_conv_forms_equal_the_plain_form():
    _assert_all_same("conv2d", CONV_CASES)


def test_matmul_forms_leave_a_conv_to_fewer_channels_to_xla():
    """G's k x k layer to RGB runs as XLA's conv in the matmul forms too (measured faster than
    im2col); its 1x1 form, strided convs, convs to more channels and D's last conv (its input
    to 1x1) stay matmuls."""

    def runs_xla_conv(x_shape, kernel_shape, stride, padding):
        x, w = jnp.zeros(x_shape), jnp.zeros(kernel_shape)
        for impl in ("matmul", "winograd"):
            conv = _op("conv2d", impl)
            loss = lambda x, w, conv=conv: jnp.sum(conv(x, w, stride, padding) ** 2)
            grads = jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w)
            yield "conv_general_dilated" in str(grads)

    assert all(runs_xla_conv((2, 8, 8, 16), (3, 3, 16, 3), 1, 1))
    assert all(runs_xla_conv((2, 8, 8, 16), (5, 5, 16, 3), 1, 2))
    assert not any(runs_xla_conv((2, 8, 8, 16), (1, 1, 16, 3), 1, 0))
    assert not any(runs_xla_conv((2, 8, 8, 16), (3, 3, 16, 3), 2, 1))
    assert not any(runs_xla_conv((2, 8, 8, 3), (3, 3, 3, 16), 1, 1))
    assert not any(runs_xla_conv((2, 4, 4, 16), (4, 4, 16, 3), 1, 0))  # D's 4x4 -> 1x1


def test_both_matmul_forms_of_the_transposed_conv_are_exercised():
    assert cpu.im2col.transpose_form(4, 4, 4, 2) == "col2im"  # G's 4x4 -> 8x8
    assert cpu.im2col.transpose_form(16, 17, 4, 2) == "subpixel"
    assert cpu.im2col.transpose_form(32, 32, 4, 2) == "subpixel"  # G's 32x32 -> 64x64
    assert cpu.im2col.transpose_form(1, 1, 4, 1) == "col2im"  # the 1x1 projection


@pytest.mark.parametrize(
    "name, x_shape, out_ch",
    [
        ("conv2d", (2, 8, 12, 16), 64),  # F's 4x4 stride-2 convs, non-square
        ("conv2d", (1, 4, 4, 20), 70),  # one 2x2 output tile
        ("conv_transpose", (2, 4, 6, 3), 64),  # G's 4x4 stride-2 transposed convs
        ("conv_transpose", (1, 16, 2, 4), 65),
    ],
)
def test_winograd_form_equals_the_plain_form(name, x_shape, out_ch):
    """Values and both gradients at float32 rounding, where the Winograd form is taken."""
    transposed = name == "conv_transpose"
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 4, x_shape[-1], out_ch)) / 4, jnp.float32)
    bias = jnp.asarray(rng.normal(size=out_ch), jnp.float32)
    assert cpu.winograd.applies(x.shape, x.dtype, w.shape, 2, 1, transposed=transposed)
    probe = jax.random.normal(jax.random.PRNGKey(1), _op(name, "xla")(x, w, 2, 1).shape)

    def value_and_grads(impl):
        op = _op(name, impl)

        def loss(x, w, b):
            return jnp.sum(op(x, w, 2, 1, bias=b) * probe)

        return op(x, w, 2, 1, bias=bias), jax.grad(loss, (0, 1, 2))(x, w, bias)

    got, ref = jax.jit(lambda: (value_and_grads("winograd"), value_and_grads("xla")))()
    for name, a, b in zip(("y", "dx", "dw", "db"), jax.tree.leaves(got), jax.tree.leaves(ref)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_transposed_conv_outside_the_winograd_form_takes_it_for_its_input_gradient():
    """G's last 4x4 layer (32x32 -> 64x64) stays in the matmul form, but its input gradient is a
    4x4 stride-2 conv of the output gradient (64 -> 128 channels), which the form does take."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 18, 20, 64)), jnp.float32)  # sides over 16
    w = jnp.asarray(rng.normal(size=(4, 4, 64, 16)) / 4, jnp.float32)
    assert not cpu.winograd.applies(x.shape, x.dtype, w.shape, 2, 1, transposed=True)
    assert cpu.winograd.applies((2, 36, 40, 16), x.dtype, (4, 4, 16, 64), 2, 1)
    probe = jax.random.normal(jax.random.PRNGKey(1), (2, 36, 40, 16))

    def grads(impl):
        def loss(x, w):
            return jnp.sum(conv.ConvForms(impl).conv_transpose(x, w, 2, 1) * probe)

        return jax.grad(loss, (0, 1))

    got, ref = jax.jit(lambda: (grads("winograd")(x, w), grads("xla")(x, w)))()
    for name, a, b in zip(("dx", "dw"), got, ref):
        # Each dw entry sums ~1,400 products: float32 rounding relative to the largest entry.
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale, err_msg=name)

    def matmuls(impl):  # the Winograd input gradient takes nine where the matmul form takes one
        return str(jax.make_jaxpr(grads(impl))(x, w)).count("dot_general")

    assert matmuls("winograd") == matmuls("matmul") + 8


def test_winograd_form_is_taken_only_where_it_was_measured_faster():
    f32, bf16 = jnp.float32, jnp.bfloat16
    assert cpu.winograd.applies((8, 32, 32, 64), f32, (4, 4, 64, 128), 2, 1)  # F's 2nd conv
    assert not cpu.winograd.applies((8, 32, 32, 64), bf16, (4, 4, 64, 128), 2, 1)
    assert not cpu.winograd.applies((8, 64, 64, 8), f32, (4, 4, 8, 64), 2, 1)  # few channels
    assert not cpu.winograd.applies((8, 32, 32, 64), f32, (4, 4, 64, 48), 2, 1)
    assert not cpu.winograd.applies((8, 30, 32, 64), f32, (4, 4, 64, 128), 2, 1)  # 15 rows out
    assert not cpu.winograd.applies((8, 4, 4, 512), f32, (4, 4, 512, 64), 1, 0)  # F's last
    g = (4, 4, 256, 128)
    assert cpu.winograd.applies((8, 16, 16, 256), f32, g, 2, 1, transposed=True)
    assert not cpu.winograd.applies((8, 32, 32, 128), f32, g, 2, 1, transposed=True)


def test_transposed_conv_matches_pytorch_semantics_by_hand():
    """ConvTranspose2d(1, 1, k=4, s=2, p=1) of a single 1 at (1, 1) stamps the kernel at
    rows/cols 2*1 - 1 + [0, 4), cropped to the 4x4 output: the definition, not another impl."""
    x = jnp.zeros((1, 2, 2, 1)).at[0, 1, 1, 0].set(1.0)
    w = jnp.arange(16.0).reshape(4, 4, 1, 1)
    expected = np.zeros((4, 4))
    expected[1:4, 1:4] = np.arange(16.0).reshape(4, 4)[:3, :3]
    for impl in conv.IMPLS:
        got = conv.ConvForms(impl).conv_transpose(x, w, 2, 1)
        np.testing.assert_allclose(got[0, :, :, 0], expected, err_msg=impl)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matmul_gradients_and_dtypes(dtype):
    """The custom VJP: a's gradient in the compute dtype, w's in w's dtype (float32)."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(37, 11)), dtype)
    w = jnp.asarray(rng.normal(size=(11, 6)), jnp.float32)
    y = cpu.dot.matmul(a, w)
    assert y.dtype == dtype
    da, dw = jax.grad(
        lambda a, w: jnp.sum(cpu.dot.matmul(a, w).astype(jnp.float32) ** 2), argnums=(0, 1)
    )(a, w)
    assert da.dtype == dtype and dw.dtype == jnp.float32
    a32 = a.astype(jnp.float32)
    da_ref, dw_ref = jax.grad(lambda a, w: jnp.sum((a @ w) ** 2), argnums=(0, 1))(a32, w)
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    np.testing.assert_allclose(da.astype(jnp.float32), da_ref, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(dw, dw_ref, rtol=tol, atol=tol * 10)


def test_auto_picks_per_backend_and_rejects_unknown_names():
    assert conv.forms_for("auto", "cpu") == conv.ConvForms("winograd")
    assert conv.forms_for("auto", "gpu") == conv.XLA
    assert conv.forms_for("auto", "tpu") == conv.XLA
    assert conv.forms_for("auto") == conv.forms_for("auto", jax.default_backend())
    for impl in conv.IMPLS:
        assert conv.forms_for(impl, "gpu").impl == impl  # a named form on any backend
    with pytest.raises(ValueError, match=r"must be 'auto' or one of \('xla', .*not 'im2col'"):
        conv.forms_for("im2col")
    with pytest.raises(ValueError, match="auto"):
        conv.ConvForms("auto")  # resolved names only


def test_legacy_reference_name_is_the_xla_forms():
    """Exported models and checkpoints' config.json from before the rename say "reference"."""
    assert conv.forms_for("reference", "cpu") == conv.XLA
    config = config_lib.load_config("configs/tiny.py", ["--config.model.impl=reference"])
    assert models.Networks(config.model, num_ids=3).convs == conv.XLA


def test_forms_are_hashable_and_leave_the_parameters_alone():
    assert hash(conv.forms_for("matmul")) == hash(conv.ConvForms("matmul"))
    x = jnp.ones((1, 8, 8, 2))
    for layer in (conv.Conv2d, conv.ConvTranspose2d):
        fast = layer(4, 4, 2, 1, convs=conv.ConvForms("winograd")).init(jax.random.PRNGKey(0), x)
        plain = layer(4, 4, 2, 1).init(jax.random.PRNGKey(0), x)
        assert jax.tree.map(jnp.shape, fast) == jax.tree.map(jnp.shape, plain)
        assert jax.tree.all(jax.tree.map(jnp.array_equal, fast, plain))


@pytest.mark.parametrize(
    "generator",
    [[], ["--config.model.upsample=bilinear", "--config.model.gen_out_kernel=3"]],
    ids=["reference", "bilinear-3x3-last"],
)
def test_networks_give_the_same_numbers_in_the_fast_forms(generator):
    """The tiny G and critics end to end (G's gradient goes through the critics' input gradient),
    parameters shared across impls (the layout is the same). Subpixel's pieces are covered above.
    """
    base = config_lib.load_config("configs/tiny.py", generator)
    nets = {}
    for impl in ("xla", "matmul", "winograd"):
        config = config_lib.load_config(
            "configs/tiny.py", [*generator, f"--config.model.impl={impl}"]
        )
        nets[impl] = models.Networks(config.model, num_ids=7)
    state = state_lib.create_gan_state(base, nets["xla"])
    emb = jax.random.normal(jax.random.PRNGKey(3), (3, base.model.embed_dim))

    def run(n):
        def loss(g_params, c_params):
            faces = n.generator.apply({"params": g_params}, emb)
            adv, ids = n.critics.apply({"params": c_params}, faces)
            return jnp.sum(adv) + jnp.sum(ids**2) * 1e-2, faces

        (value, faces), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
            state.generator, state.critics
        )
        return value, faces, grads

    ref = jax.jit(lambda: run(nets["xla"]))()
    for impl in ("matmul", "winograd"):
        got = jax.jit(lambda impl=impl: run(nets[impl]))()
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
            scale = float(np.max(np.abs(b))) or 1.0
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=impl)


def test_conv1d_matmul_equals_xla_conv_forward_and_gradients():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 37, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 8, 5)), jnp.float32)
    probe = jnp.asarray(rng.normal(size=(3, 19, 5)), jnp.float32)

    def run(conv):
        def loss(x, w):
            y = conv(x, w, (2,), ((1, 1),), dimension_numbers=("NWC", "WIO", "NWC"))
            return jnp.sum(y * probe), y

        (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, w)
        return y, grads

    got = jax.jit(lambda: run(cpu.im2col.conv1d_matmul))()
    ref = jax.jit(lambda: run(jax.lax.conv_general_dilated))()
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_frozen_bf16_voice_embedder_runs_its_convs_as_matmuls():
    """Only there (a GAN step's E): float32 and a learning E keep XLA's convs. Same embeddings
    as XLA's bfloat16 convs, to bfloat16 rounding."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 37, 64)), jnp.float32)

    def net(impl, dtype):
        forms = conv.ConvForms(impl)
        return models.VoiceEmbedder(channels=(32, 48), embed_dim=16, dtype=dtype, convs=forms)

    variables = net("xla", jnp.float32).init(jax.random.PRNGKey(0), x)
    exact = net("xla", jnp.float32).apply(variables, x)
    got = jax.jit(lambda: net("matmul", jnp.bfloat16).apply(variables, x))()
    xla = jax.jit(lambda: net("xla", jnp.bfloat16).apply(variables, x))()
    err = lambda y: float(jnp.linalg.norm(y - exact) / jnp.linalg.norm(exact))
    assert err(got) < 1e-2 and err(got) < 1.5 * err(xla), (err(got), err(xla))

    def uses_xla_conv(dtype, train):
        fn = lambda: net("matmul", dtype).apply(
            variables, x, train=train, mutable=["batch_stats"] if train else False
        )
        return "conv_general_dilated" in str(jax.make_jaxpr(fn)())

    assert not uses_xla_conv(jnp.bfloat16, train=False)
    assert uses_xla_conv(jnp.bfloat16, train=True)
    assert uses_xla_conv(jnp.float32, train=False)
