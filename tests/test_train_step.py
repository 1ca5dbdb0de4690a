"""The GAN step: what it updates, that it learns, that it is the same on 1 and 4 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from v2f_jax import config_lib, losses, models, parallel, train_step
from v2f_jax import state as state_lib

NUM_IDS = 6


def tiny_config(*overrides):
    return config_lib.load_config("configs/tiny.py", list(overrides))


def make_batch(batch_size=16, frames=96, seed=0):
    """Faces whose colour says their identity, so C (and then G) have something to learn."""
    rng = np.random.default_rng(seed)
    face_id = rng.integers(0, NUM_IDS, batch_size).astype(np.int32)
    tint = np.linspace(-0.8, 0.8, NUM_IDS)[face_id][:, None, None, None]
    face = np.clip(tint + 0.1 * rng.normal(size=(batch_size, 64, 64, 3)), -1, 1)
    face[..., 1] *= -1
    return {
        "voice": rng.normal(size=(batch_size, frames, 64)).astype(np.float32),
        "voice_id": rng.integers(0, NUM_IDS, batch_size).astype(np.int32),
        "face": face.astype(np.float32),
        "face_id": face_id,
    }


def run_steps(config, batch, steps, mode="jit", devices=None, on_trace=None, states=None):
    """`steps` steps on `batch`: (final state, each step's metrics); each step's state is also
    appended to `states` where given."""
    nets = models.Networks(config.model, NUM_IDS)

    def make_step(axis_name):
        step = train_step.make_gan_step(config, nets, axis_name)
        if on_trace is None:
            return step

        def counted(state, batch):
            on_trace()  # runs at trace time only
            return step(state, batch)

        return counted

    dp = parallel.DataParallel(make_step, mode, devices=devices)
    state = dp.put_state(state_lib.create_gan_state(config, nets))
    history = []
    for _ in range(steps):
        state, metrics = dp(state, dp.put_batch(batch))
        history.append(dp.get_metrics(metrics))
        if states is not None:
            states.append(jax.device_get(dp.get_state(state)))
    return jax.device_get(dp.get_state(state)), history


def _changed(a, b):
    return any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def test_one_step_updates_g_and_critics_but_not_frozen_e():
    config = tiny_config()
    nets = models.Networks(config.model, NUM_IDS)
    before = jax.device_get(state_lib.create_gan_state(config, nets))
    after, history = run_steps(config, make_batch(), steps=1)
    assert int(after.step) == 1
    assert _changed(before.generator, after.generator)
    for part in ("trunk", "d_head", "c_head"):
        assert _changed(before.critics[part], after.critics[part]), part
    assert not _changed(before.embedder, after.embedder)
    assert np.array_equal(before.key, after.key)
    assert set(history[0]) >= {"d_loss", "d_real", "d_fake", "c_loss", "g_adv", "g_id"}
    assert all(np.isfinite(v) for v in history[0].values())


def test_joint_embedder_training_updates_e_and_its_statistics():
    config = tiny_config("--config.train.train_embedder=True")
    nets = models.Networks(config.model, NUM_IDS)
    before = jax.device_get(state_lib.create_gan_state(config, nets))
    after, _ = run_steps(config, make_batch(), steps=1)
    assert _changed(before.embedder["params"], after.embedder["params"])
    assert _changed(before.embedder["batch_stats"], after.embedder["batch_stats"])


@pytest.mark.slow
def test_fifty_steps_on_a_fixed_batch_learn():
    """The critics separate real from fake and learn identities; G learns to draw them.

    G's identity loss logged during training rises while C grows confident, so G's progress is
    judged against the final critics: the trained G's faces must carry the voices' identities far
    better than the initial G's.
    """
    config = tiny_config()
    nets = models.Networks(config.model, NUM_IDS)
    batch = make_batch()
    batch["voice_id"] = batch["face_id"].copy()
    # Voices whose spectrum says the speaker (the frozen E maps them apart).
    batch["voice"] += 3.0 * np.eye(64)[batch["voice_id"] * 7][:, None, :]
    initial = jax.device_get(state_lib.create_gan_state(config, nets))
    final, history = run_steps(config, batch, steps=50)
    first = history[0]
    last = {k: np.mean([h[k] for h in history[-5:]]) for k in history[0]}
    assert last["d_loss"] < 0.7 * first["d_loss"], (first, last)
    assert last["c_loss"] < 0.3 * first["c_loss"], (first, last)

    def identity_loss(generator):
        raw = nets.embedder.apply(final.embedder, batch["voice"])
        faces = nets.generator.apply({"params": generator}, models.unit(raw))
        _, ids = nets.critics.apply({"params": final.critics}, faces)
        return float(losses.xent(ids, batch["voice_id"]))

    # Measured: 3.30 vs 5.18 (seed 0).
    assert identity_loss(final.generator) < 0.75 * identity_loss(initial.generator)


def test_one_device_four_devices_and_pmap_agree():
    """Same global batch and seed -> same losses and parameters (float32, 1e-5 relative)."""
    config, batch = tiny_config(), make_batch()
    devices = jax.devices()
    assert len(devices) == 4, "conftest sets four fake CPU devices"
    runs = {
        "jit x1": run_steps(config, batch, 3, "jit", devices[:1]),
        "jit x4": run_steps(config, batch, 3, "jit", devices),
        "pmap x4": run_steps(config, batch, 3, "pmap", devices),
    }
    ref_state, ref_hist = runs["jit x1"]
    for name, (state, hist) in runs.items():
        for key in ref_hist[-1]:
            np.testing.assert_allclose(
                hist[-1][key], ref_hist[-1][key], rtol=1e-5, atol=1e-6, err_msg=f"{name}: {key}"
            )
        for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(ref_state)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_pmap_with_joint_embedder_matches_jit():
    """BatchNorm statistics are over the global batch under pmap too."""
    config, batch = tiny_config("--config.train.train_embedder=True"), make_batch()
    jit_state, jit_hist = run_steps(config, batch, 2, "jit")
    pmap_state, pmap_hist = run_steps(config, batch, 2, "pmap")
    np.testing.assert_allclose(pmap_hist[-1]["g_loss"], jit_hist[-1]["g_loss"], rtol=1e-5)
    for a, b in zip(
        jax.tree_util.tree_leaves(pmap_state.embedder),
        jax.tree_util.tree_leaves(jit_state.embedder),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_step_compiles_once():
    traces = []
    run_steps(tiny_config(), make_batch(), steps=4, on_trace=lambda: traces.append(1))
    assert len(traces) == 1


@pytest.mark.slow
def test_bfloat16_compute_runs_and_stays_finite():
    state, history = run_steps(tiny_config("--config.model.dtype=bfloat16"), make_batch(), 5)
    assert all(np.isfinite(v) for h in history for v in h.values())
    # Parameters stay float32; only the compute is bfloat16.
    assert {x.dtype for x in jax.tree_util.tree_leaves(state.generator)} == {np.dtype("float32")}


def test_embedder_pretraining_learns_speakers():
    config = tiny_config("--config.train.task=embedder", "--config.optim.lr=1e-3")
    nets = models.Networks(config.model, NUM_IDS)
    batch = make_batch()
    # Voices whose spectrum says the speaker.
    batch["voice"] = batch["voice"] + 2.0 * np.eye(64)[batch["voice_id"] * 7][:, None, :]
    dp = parallel.DataParallel(
        lambda axis: train_step.make_embedder_step(config, nets, NUM_IDS, axis), "jit"
    )
    state = dp.put_state(state_lib.create_embedder_state(config, nets, NUM_IDS))
    losses = []
    for _ in range(30):
        state, metrics = dp(state, dp.put_batch(batch))
        losses.append(dp.get_metrics(metrics)["e_loss"])
    assert losses[-1] < 0.3 * losses[0]


def test_noise_is_the_same_for_any_device_count():
    raw = jnp.arange(32.0).reshape(8, 4)
    key = jax.random.PRNGKey(3)
    one = train_step.noisy_unit_embedding(raw, key, 0.05)
    split = jax.pmap(lambda r: train_step.noisy_unit_embedding(r, key, 0.05, "d"), axis_name="d")(
        raw.reshape(4, 2, 4)
    )
    np.testing.assert_allclose(split.reshape(8, 4), one, rtol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(one, axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("bad", ["--config.train.parallel=gspmd"])
def test_unknown_parallel_mode_is_refused(bad):
    config = tiny_config(bad)
    nets = models.Networks(config.model, NUM_IDS)
    with pytest.raises(ValueError, match="gspmd"):
        parallel.DataParallel(
            lambda a: train_step.make_gan_step(config, nets, a), config.train.parallel
        )


def test_every_crop_length_runs_in_one_compiled_step():
    """wen2019's five crop lengths, padded to the longest with `voice_len`: one trace, one
    executable, for the whole run."""
    config = tiny_config("--config.data.crop_lengths=(300, 425, 550, 675, 800)")
    nets = models.Networks(config.model, NUM_IDS)
    traces = []

    def make_step(axis_name):
        step = train_step.make_gan_step(config, nets, axis_name)

        def counted(state, batch):
            traces.append(1)  # runs at trace time only
            return step(state, batch)

        return counted

    dp = parallel.DataParallel(make_step, "jit")
    state = dp.put_state(state_lib.create_gan_state(config, nets))
    for length in config.data.crop_lengths:
        batch = make_batch(frames=800, seed=length)
        batch["voice"][:, length:] = 0
        batch["voice_len"] = np.full((16,), length, np.int32)
        state, metrics = dp(state, dp.put_batch(batch))
        assert np.isfinite(dp.get_metrics(metrics)["g_loss"])
    assert len(traces) == 1


@pytest.mark.slow
def test_identity_weight_scales_cs_term_in_gs_loss_and_only_g_trains_differently():
    """`train.identity_weight`: G's loss is adversarial + weight x identity; the critics' first
    update is G's previous faces', the same whatever the weight."""
    batch = make_batch()
    states, logs = {}, {}
    for weight in (0.0, 3.0):
        config = tiny_config(f"--config.train.identity_weight={weight}")
        states[weight], logs[weight] = run_steps(config, batch, 1)
    for weight, history in logs.items():
        for m in history:
            assert m["g_loss"] == pytest.approx(m["g_adv"] + weight * m["g_id"], rel=1e-5)
    first = {w: h[0] for w, h in logs.items()}
    assert first[0.0]["d_loss"] == first[3.0]["d_loss"]  # step 1's critics saw the same G
    assert first[0.0]["g_grad_norm"] != first[3.0]["g_grad_norm"]
    assert _changed(states[0.0].generator, states[3.0].generator)
    assert not _changed(states[0.0].critics, states[3.0].critics)


def test_a_cosine_learning_rate_decays_to_zero_over_decay_steps():
    """`optim.decay_steps=4`: update t is the constant-lr update times (1 + cos(pi t / 4)) / 2,
    then 0."""
    decayed = state_lib.make_optimizer(tiny_config("--config.optim.decay_steps=4").optim)
    constant = state_lib.make_optimizer(tiny_config().optim)
    params, grads = {"w": np.ones(3, np.float32)}, {"w": np.ones(3, np.float32)}
    s_decayed, s_constant = decayed.init(params), constant.init(params)
    ratios = []
    for _ in range(6):
        u_decayed, s_decayed = decayed.update(grads, s_decayed, params)
        u_constant, s_constant = constant.update(grads, s_constant, params)
        ratios.append(float(u_decayed["w"][0] / u_constant["w"][0]))
    want = [(1 + np.cos(np.pi * min(t, 4) / 4)) / 2 for t in range(6)]
    np.testing.assert_allclose(ratios, want, atol=1e-6)


def _update_ratios(*overrides: str, updates: int) -> list[float]:
    """Each update's size under `overrides` over the constant-rate update's, same gradients."""
    scheduled = state_lib.make_optimizer(tiny_config(*overrides).optim)
    constant = state_lib.make_optimizer(tiny_config().optim)
    params, grads = {"w": np.ones(3, np.float32)}, {"w": np.ones(3, np.float32)}
    s_scheduled, s_constant = scheduled.init(params), constant.init(params)
    ratios = []
    for _ in range(updates):
        u_scheduled, s_scheduled = scheduled.update(grads, s_scheduled, params)
        u_constant, s_constant = constant.update(grads, s_constant, params)
        ratios.append(float(u_scheduled["w"][0] / u_constant["w"][0]))
    return ratios


def test_a_warmup_rises_linearly_to_the_rate_then_holds_or_decays():
    """`optim.warmup_steps=4`: update t is t/4 of the constant-rate update, then all of it; with
    `optim.decay_steps=8` too, a cosine from the rate at update 4 to 0 at update 8."""
    np.testing.assert_allclose(
        _update_ratios("--config.optim.warmup_steps=4", updates=7),
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0],
        atol=1e-6,
    )
    both = _update_ratios(
        "--config.optim.warmup_steps=4", "--config.optim.decay_steps=8", updates=10
    )
    cosine = [(1 + np.cos(np.pi * min(t - 4, 4) / 4)) / 2 for t in range(4, 10)]
    np.testing.assert_allclose(both, [0.0, 0.25, 0.5, 0.75, *cosine], atol=1e-6)


def test_generator_ema_follows_g_and_is_what_a_model_exports():
    """`train.ema_decay`: the average starts at G's initial weights and moves by (1 - decay)
    towards G after every step; G itself trains exactly as without it."""
    from v2f_jax.inference import model as model_lib

    batch = make_batch()
    plain, _ = run_steps(tiny_config(), batch, 1)
    averaged, _ = run_steps(tiny_config("--config.train.ema_decay=0.9"), batch, 1)
    assert plain.generator_ema is None
    for name in ("generator", "critics"):
        runs_equal = [
            np.array_equal(x, y)
            for x, y in zip(
                jax.tree_util.tree_leaves(getattr(plain, name)),
                jax.tree_util.tree_leaves(getattr(averaged, name)),
            )
        ]
        assert all(runs_equal), name
    config = tiny_config("--config.train.ema_decay=0.9")
    initial = state_lib.create_gan_state(config, models.Networks(config.model, NUM_IDS)).generator
    for ema, g, g0 in zip(
        *(
            jax.tree_util.tree_leaves(t)
            for t in (averaged.generator_ema, averaged.generator, initial)
        )
    ):
        np.testing.assert_allclose(ema, 0.9 * np.asarray(g0) + 0.1 * np.asarray(g), rtol=1e-6)
    config.model.num_ids = NUM_IDS
    exported = model_lib.model_from_state(config, averaged)
    assert exported.source["generator"] == "ema 0.9"
    for x, y in zip(
        *(jax.tree_util.tree_leaves(t) for t in (exported.generator, averaged.generator_ema))
    ):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "arch,impl", [("wen2019", "auto"), pytest.param("paper", "xla", marks=pytest.mark.slow)]
)
def test_r1_penalises_ds_gradient_at_the_real_faces(arch, impl):
    """`train.r1_weight`: the critics' loss gains weight / 2 x the mean |dD/dface|^2 over the
    real faces (`d_r1`), differentiated through in the step's own conv forms (on CPU "auto" is
    the matmul forms with custom VJPs: R1 differentiates through their backward passes); D's
    and C's losses themselves are what they were. The paper's critics (D on its own trunk) in
    plain XLA convs: their double backward compiles for minutes in the matmul forms."""
    batch = make_batch()
    arch_impl = (f"--config.model.arch={arch}", f"--config.model.impl={impl}")
    state, history = run_steps(tiny_config(*arch_impl, "--config.train.r1_weight=10.0"), batch, 1)
    plain_state, plain = run_steps(tiny_config(*arch_impl), batch, 1)
    assert "d_r1" not in plain[0]
    assert history[0]["d_loss"] == pytest.approx(plain[0]["d_loss"], rel=1e-5)
    assert _changed(state.critics, plain_state.critics)
    # The penalty on the critics that step 1 starts from, in plain XLA convs.
    xla = tiny_config(f"--config.model.arch={arch}", "--config.model.impl=xla")
    nets = models.Networks(xla.model, NUM_IDS)
    critics = state_lib.create_gan_state(xla, nets).critics
    method = None if arch == "wen2019" else train_step._adv_only
    grads = jax.grad(
        lambda f: jnp.sum(nets.critics.apply({"params": critics}, f, method=method)[0])
    )(jnp.asarray(batch["face"]))
    want = float(jnp.mean(jnp.sum(jnp.square(grads), axis=(1, 2, 3))))
    assert history[0]["d_r1"] == pytest.approx(want, rel=1e-3)


def test_lazy_r1_runs_every_nth_step_at_n_times_the_weight():
    """`train.r1_every=2`: step 0 takes R1 at twice the weight (the same update as R1 every
    step at twice `r1_weight`), step 1 none (`d_r1` 0), step 2 again."""
    batch, states = make_batch(), []
    lazy_cfg = tiny_config("--config.train.r1_weight=5.0", "--config.train.r1_every=2")
    _, lazy = run_steps(lazy_cfg, batch, 3, states=states)
    eager_state, eager = run_steps(tiny_config("--config.train.r1_weight=10.0"), batch, 1)
    assert lazy[0]["d_r1"] == pytest.approx(2 * eager[0]["d_r1"], rel=1e-5)
    assert lazy[1]["d_r1"] == 0.0
    assert lazy[2]["d_r1"] > 0.0
    for a, b in zip(
        jax.tree_util.tree_leaves(states[0].critics),
        jax.tree_util.tree_leaves(eager_state.critics),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_lazy_r1_under_pmap_matches_jit():
    """The steps that take R1 are the same on every device: pmap on 4 = jit on 1."""
    batch = make_batch()
    config = tiny_config("--config.train.r1_weight=5.0", "--config.train.r1_every=2")
    jit_state, jit_hist = run_steps(config, batch, 3)
    pmap_state, pmap_hist = run_steps(config, batch, 3, "pmap")
    np.testing.assert_allclose(
        [h["d_r1"] for h in pmap_hist], [h["d_r1"] for h in jit_hist], rtol=1e-5
    )
    for a, b in zip(jax.tree_util.tree_leaves(pmap_state), jax.tree_util.tree_leaves(jit_state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
