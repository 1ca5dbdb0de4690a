"""Voice mixup (`train.voice_mixup`): the blends, the blended identity loss, any device count."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train_step import NUM_IDS, make_batch, tiny_config

from v2f_jax import config_checks, config_lib, models, train_step
from v2f_jax import state as state_lib
from v2f_jax.config_lib import ConfigError
from v2f_jax.training import face_targets, voice_mixup


def _unit_rows(n, dim, seed=0):
    return models.unit(jnp.asarray(np.random.default_rng(seed).normal(size=(n, dim)), jnp.float32))


def test_pairs_are_a_permutation_with_weights_in_0_1_and_blends_are_unit():
    ids = jnp.arange(32, dtype=jnp.int32) % 7
    pairs = voice_mixup.draw_pairs(jax.random.key(3), ids, alpha=0.4)
    rows = np.asarray(pairs.partner_rows)
    assert sorted(rows.tolist()) == list(range(32))
    np.testing.assert_array_equal(pairs.partner_ids, np.asarray(ids)[rows])
    lam = np.asarray(pairs.lam)
    assert ((lam >= 0) & (lam <= 1)).all() and lam.std() > 0.1
    emb = _unit_rows(32, 16)
    mixed = np.asarray(voice_mixup.mix(emb, pairs))
    np.testing.assert_allclose(np.linalg.norm(mixed, axis=1), 1.0, rtol=1e-5)
    # Each blend lies in the plane of its two voices, on the side of the heavier one.
    own, partner = np.asarray(emb), np.asarray(emb)[rows]
    closer_to_own = (mixed * own).sum(1) >= (mixed * partner).sum(1) - 1e-6
    np.testing.assert_array_equal(closer_to_own[lam > 0.5], True)


def test_the_identity_loss_is_the_blend_of_both_speakers_cross_entropies():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)), jnp.float32)
    ids = jnp.asarray([0, 1, 2, 3], jnp.int32)
    pairs = voice_mixup.Pairs(
        partner_rows=jnp.asarray([1, 0, 3, 2], jnp.int32),
        partner_ids=jnp.asarray([1, 0, 4, 2], jnp.int32),
        lam=jnp.asarray([1.0, 0.0, 0.25, 0.5], jnp.float32),
    )
    xent = lambda labels: optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    own, partner = np.asarray(xent(ids)), np.asarray(xent(pairs.partner_ids))
    want = np.mean(
        [own[0], partner[1], 0.25 * own[2] + 0.75 * partner[2], 0.5 * (own[3] + partner[3])]
    )
    assert float(voice_mixup.identity_loss(logits, ids, pairs)) == pytest.approx(want, rel=1e-6)


def test_pmaps_devices_pair_across_each_others_rows_as_one_device_does():
    """Partners and weights are drawn for the global batch: under pmap on four devices each
    device blends with rows of the others and gets one device's blends and loss."""
    devices = jax.devices()
    ids = jnp.arange(16, dtype=jnp.int32) % 5
    emb = _unit_rows(16, 8, seed=2)
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(16, 5)), jnp.float32)
    key = jax.random.key(7)

    def blend(emb, ids, logits, axis_name=None):
        pairs = voice_mixup.draw_pairs(key, ids, 0.4, axis_name)
        loss = voice_mixup.identity_loss(logits, ids, pairs)
        if axis_name is not None:
            loss = jax.lax.pmean(loss, axis_name)
        return voice_mixup.mix(emb, pairs, axis_name), loss

    want_mix, want_loss = blend(emb, ids, logits)
    shard = lambda x: x.reshape((4, 4) + x.shape[1:])
    got_mix, got_loss = jax.pmap(lambda *a: blend(*a, axis_name="d"), "d", devices=devices)(
        shard(emb), shard(ids), shard(logits)
    )
    np.testing.assert_allclose(np.asarray(got_mix).reshape(16, 8), want_mix, rtol=1e-6)
    np.testing.assert_allclose(got_loss, float(want_loss), rtol=1e-6)


def test_the_gan_step_blends_voices_and_their_identities_only_when_asked(monkeypatch):
    traced = []
    for name in ("mix", "identity_loss"):
        original = getattr(voice_mixup, name)
        monkeypatch.setattr(
            voice_mixup, name, lambda *a, _f=original, _n=name: traced.append(_n) or _f(*a)
        )
    batch = make_batch()
    for alpha, want in ((0.0, []), (0.4, ["identity_loss", "mix"])):
        traced.clear()
        config = tiny_config(f"--config.train.voice_mixup={alpha}")
        nets = models.Networks(config.model, NUM_IDS)
        step = train_step.make_gan_step(config, nets)
        jax.eval_shape(step, state_lib.create_gan_state(config, nets), batch)  # traces only
        assert sorted(set(traced)) == want


def test_a_negative_mixup_is_refused_naming_the_key():
    config = config_lib.load_config("configs/tiny.py", ["train.voice_mixup=-0.1"])
    with pytest.raises(ConfigError, match="voice_mixup"):
        config_checks.check(config)


def test_the_mean_face_term_asks_a_blend_of_voices_for_the_same_blend_of_their_faces():
    """Targets of a blended voice: `lam` x its speaker's mean face + `1 - lam` x the partner's;
    a pair where either speaker has no face is left out of the mean."""
    rng = np.random.default_rng(4)
    dim = face_targets.target_dim(32)
    values = rng.normal(size=(3, dim)).astype(np.float32)
    present = np.array([True, True, False])
    targets = face_targets.FaceTargets(values, present, np.zeros(dim, np.float32), 1.0, 32)
    loss = train_step._face_target_loss(targets, 1.0, 3, dim, None)
    ids = jnp.asarray([0, 1, 0, 2], jnp.int32)
    pairs = voice_mixup.Pairs(
        partner_rows=jnp.asarray([1, 0, 3, 2], jnp.int32),
        partner_ids=jnp.asarray([1, 0, 2, 0], jnp.int32),
        lam=jnp.asarray([0.25, 1.0, 0.5, 0.7], jnp.float32),
    )
    prediction = rng.normal(size=(4, dim)).astype(np.float32)
    blends = [0.25 * values[0] + 0.75 * values[1], values[1]]
    want = np.mean([np.mean((prediction[i] - blends[i]) ** 2) for i in range(2)])
    assert float(loss(prediction, ids, pairs)) == pytest.approx(want, rel=1e-5)
    # The blends themselves meet their targets exactly.
    exact = np.concatenate([np.stack(blends), prediction[2:]])
    assert float(loss(exact, ids, pairs)) == pytest.approx(0.0, abs=1e-10)
    # Without mixup, each voice's own speaker (the faceless one left out).
    want_own = np.mean([np.mean((prediction[i] - values[[0, 1, 0][i]]) ** 2) for i in range(3)])
    assert float(loss(prediction, ids)) == pytest.approx(want_own, rel=1e-5)


@pytest.mark.slow
def test_a_gan_step_with_mixup_and_the_mean_face_term_draws_blends_toward_blended_faces():
    """Both on: the step runs, and G's faces move toward their (blended) targets."""
    batch = make_batch()
    sums = np.repeat(200.0 + 4.0 * np.arange(NUM_IDS)[:, None], 48, axis=1)
    targets = face_targets.standardise(sums, np.ones(NUM_IDS, np.int64), pool=16)
    config = tiny_config(
        "--config.train.face_target_weight=2.0",
        "--config.train.voice_mixup=0.4",
        "--config.optim.lr=1e-3",
    )
    config_checks.check(config)
    nets = models.Networks(config.model, NUM_IDS)
    step = jax.jit(train_step.make_gan_step(config, nets, None, targets))
    state = state_lib.create_gan_state(config, nets)
    history = []
    for _ in range(10):
        state, metrics = step(state, batch)
        history.append(jax.device_get(metrics))
    assert all(np.isfinite(m["g_face_loss"]) for m in history)
    assert history[-1]["g_face_loss"] < 0.5 * history[0]["g_face_loss"]
