"""G's coarse face from a linear map of the voice (`model.coarse_cell`, `coarse_face.py`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_step import NUM_IDS, make_batch, tiny_config

from v2f_jax import config_checks, config_lib, models, parallel, train, train_step
from v2f_jax import state as state_lib
from v2f_jax.inference import generate
from v2f_jax.input_pipeline import manifest, reader
from v2f_jax.training import coarse_face, face_targets


def test_ridge_map_recovers_a_linear_relation_in_raw_units():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * [1.0, 10.0, 0.1, 3.0, 1.0] + 4.0  # unequal scales, offset
    true_kernel, true_bias = rng.normal(size=(5, 7)), rng.normal(size=7)
    kernel, bias = coarse_face.ridge_map(x, x @ true_kernel + true_bias, penalty=1e-9)
    np.testing.assert_allclose(kernel, true_kernel, atol=1e-6)
    np.testing.assert_allclose(bias, true_bias, atol=1e-5)
    # Fewer rows than columns (3 identities, 16 dimensions): still defined, and it fits them.
    x, y = rng.normal(size=(3, 16)), rng.normal(size=(3, 4))
    kernel, bias = coarse_face.ridge_map(x, y, penalty=1e-6)
    np.testing.assert_allclose(x @ kernel + bias, y, atol=1e-3)


def test_swapping_a_faces_coarse_part():
    rng = np.random.default_rng(1)
    faces = jnp.asarray(rng.uniform(-1, 1, (2, 64, 64, 3)), jnp.float32)
    own = models.cell_means(faces, 8).reshape(2, -1)
    # Its own coarse part: the face unchanged.
    np.testing.assert_allclose(models.with_coarse_face(faces, own, 8), faces, atol=1e-6)
    # A coarse part 0.3 higher in every cell raises every pixel by 0.3, whatever the face.
    raised = models.with_coarse_face(faces, own + 0.3, 8)
    np.testing.assert_allclose(raised - faces, 0.3, atol=1e-6)
    # Any coarse part, at any cell size: the result's cell means are exactly it.
    for cell in (2, 8, 16, 64):
        coarse = rng.uniform(-1, 1, (2, models.coarse_size(cell))).astype(np.float32)
        drawn = jax.jit(models.with_coarse_face, static_argnums=2)(faces, coarse, cell)
        np.testing.assert_allclose(models.cell_means(drawn, cell).reshape(2, -1), coarse, atol=1e-5)
    # What is added is smooth (a bilinearly upsampled grid): a face's fine pattern stays. Here
    # a face with a period-2 pattern of zero mean in every cell, given a coarse part that
    # brightens left to right.
    pattern = 0.2 * (-1.0) ** np.add.outer(np.arange(64), np.arange(64))[None, :, :, None]
    face = jnp.asarray(np.broadcast_to(pattern, (1, 64, 64, 3)), jnp.float32)
    ramp = np.broadcast_to(np.linspace(-0.7, 0.7, 8)[None, None, :, None], (1, 8, 8, 3))
    drawn = models.with_coarse_face(face, jnp.asarray(ramp.reshape(1, -1), jnp.float32), 8)
    fine = np.asarray(drawn - models.blur(drawn))  # the blur passes no period-2 pattern
    want = np.broadcast_to(pattern, fine.shape)
    np.testing.assert_allclose(fine[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1], atol=0.02)


def _coarse_config(*overrides):
    return tiny_config("--config.model.coarse_cell=8", "--config.optim.lr=1e-3", *overrides)


def _fitted():
    """A coarse G with its map set, at the mean-face term's weight 5: `(config, nets, state,
    targets)`."""
    config = _coarse_config(
        "--config.train.face_target_weight=5", "--config.train.face_target_pool=8"
    )
    nets = models.Networks(config.model, NUM_IDS)
    state = jax.device_get(state_lib.create_gan_state(config, nets))
    rng = np.random.default_rng(2)
    # A map that draws every voice far brighter than an untrained network (about 0).
    kernel = (0.05 * rng.normal(size=(16, 192))).astype(np.float32)
    bias = np.full(192, 0.6, np.float32)
    state = state.replace(generator=coarse_face.with_fitted_map(state.generator, kernel, bias))
    # Targets in pixel units around 128 (only their centre and scale matter here).
    sums = 128.0 + 20.0 * rng.normal(size=(NUM_IDS, 192))
    targets = face_targets.standardise(sums, np.ones(NUM_IDS, np.int64), pool=8)
    return config, nets, state, targets


def _train(config, nets, state, targets, mode, steps):
    dp = parallel.DataParallel(
        lambda axis: train_step.make_gan_step(config, nets, axis, targets), mode
    )
    trained = dp.put_state(state)
    history = []
    for _ in range(steps):
        trained, metrics = dp(trained, dp.put_batch(make_batch()))
        history.append(dp.get_metrics(metrics))
    return jax.device_get(dp.get_state(trained)), history


@pytest.mark.slow
def test_g_draws_its_coarse_part_from_the_map_and_training_never_changes_the_map():
    """...and G's mean-face term holds its network's own cell means to the map's."""
    config, nets, state, targets = _fitted()
    kernel, bias = state.generator["coarse"]["kernel"], state.generator["coarse"]["bias"]
    rng = np.random.default_rng(3)

    # G's face is the network's face with its coarse part swapped for the map's.
    plain = models.Networks(tiny_config().model, NUM_IDS).generator
    net_params = {k: v for k, v in state.generator.items() if k != "coarse"}
    emb = models.unit(jnp.asarray(rng.normal(size=(5, 16)), jnp.float32))
    network_face = plain.apply({"params": net_params}, emb)
    want = models.with_coarse_face(network_face, emb @ kernel + bias, 8)
    got, got_network_face = nets.generator.apply({"params": state.generator}, emb, True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got_network_face, network_face, atol=1e-6)
    np.testing.assert_array_equal(nets.generator.apply({"params": state.generator}, emb), got)

    trained, history = _train(config, nets, state, targets, "jit", steps=10)
    first, last = history[0], history[-1]
    assert first["g_loss"] == pytest.approx(
        first["g_adv"] + first["g_id"] + 5.0 * first["g_face_loss"], rel=1e-5
    )
    assert last["g_face_loss"] < 0.5 * first["g_face_loss"], (first, last)
    np.testing.assert_array_equal(trained.generator["coarse"]["kernel"], kernel)
    np.testing.assert_array_equal(trained.generator["coarse"]["bias"], bias)
    assert not np.array_equal(
        trained.generator["deconv0"]["kernel"], state.generator["deconv0"]["kernel"]
    )


@pytest.mark.slow
def test_the_coarse_step_on_four_devices_equals_one():
    config, nets, state, targets = _fitted()
    one, one_history = _train(config, nets, state, targets, "jit", steps=2)
    four, four_history = _train(config, nets, state, targets, "pmap", steps=2)
    assert four_history[-1]["g_face_loss"] == pytest.approx(one_history[-1]["g_face_loss"], 1e-4)
    for a, b in zip(
        jax.tree_util.tree_leaves(four.generator), jax.tree_util.tree_leaves(one.generator)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_fit_reads_each_training_speakers_voices_and_mean_face(tiny_records_dir):
    records = manifest.Records.open(tiny_records_dir)
    config = _coarse_config(f"--config.model.num_ids={records.num_train_ids}")
    config = train.resolve_config(config, records)
    nets = models.Networks(config.model, records.num_train_ids)
    embedder = jax.device_get(state_lib.init_embedder(nets, jax.random.PRNGKey(0)))

    # The mean faces, over 8-pixel cells, in G's units.
    faces, labels, _ = reader.load_faces(records, "train")
    cell_faces, has_face = coarse_face.identity_faces(records, 8)
    k = records.num_train_ids
    means = np.stack([faces[labels == i].astype(np.float64).mean(0) for i in range(k)])
    want = means.reshape(k, 8, 8, 8, 8, 3).mean((2, 4)).reshape(k, -1) / 127.5 - 1.0
    assert has_face.all()
    np.testing.assert_allclose(cell_faces, want, atol=1e-9)

    # The embeddings: each identity's first utterance alone, with a cap of one.
    first = {}
    for mel, label, _ in reader.make_eval_voices(records, "train"):
        first.setdefault(label, mel)
    emb, has_voice = coarse_face.identity_embeddings(config, embedder, records, per_identity=1)
    alone = generate.embed_voices(config, embedder, [first[i] for i in range(k)])
    assert has_voice.all()
    np.testing.assert_allclose(emb, alone, atol=1e-5)

    # The map: the ridge regression of the second on the first, as G's float32 parameters.
    kernel, bias = coarse_face.fit(config, embedder, records)
    emb, _ = coarse_face.identity_embeddings(config, embedder, records)
    want_kernel, want_bias = coarse_face.ridge_map(emb, cell_faces)
    assert kernel.dtype == bias.dtype == np.float32 and kernel.shape == (16, 192)
    np.testing.assert_allclose(kernel, want_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, want_bias, rtol=1e-5, atol=1e-6)


def test_a_bad_cell_or_no_records_to_fit_the_map_on_is_refused_with_the_way_out():
    for cell in (1, 3, -8):  # a cell must divide 64 and leave G some detail to draw
        with pytest.raises(config_lib.ConfigError, match=f"config.model.coarse_cell={cell}"):
            config_checks.check(tiny_config(f"--config.model.coarse_cell={cell}"))
    config = _coarse_config(f"--config.model.num_ids={NUM_IDS}")
    nets = models.Networks(config.model, NUM_IDS)
    with pytest.raises(config_lib.ConfigError, match="coarse_cell=0"):
        train.create_state(config, nets, records=None)
