"""E's pretraining face targets (`face_targets.py`) and the step that regresses them."""

import jax
import numpy as np
import pytest
from test_train_step import NUM_IDS, make_batch, tiny_config

from v2f_jax import config_lib, models, parallel, train, train_step
from v2f_jax import state as state_lib
from v2f_jax.input_pipeline import manifest, reader
from v2f_jax.training import face_targets


def _faces(colours):
    """One uint8 face per row of `colours` `[n, 3]`, the whole face that colour."""
    return np.broadcast_to(
        np.asarray(colours, np.uint8)[:, None, None, :], (len(colours), 64, 64, 3)
    )


def test_targets_are_pooled_identity_means_centred_and_scaled_with_faceless_identities_masked():
    # Identity 0: grey 100 and 200 (mean 150); identity 1: grey 50; identity 2: no face.
    batches = [(_faces([[100] * 3, [50] * 3]), [0, 1]), (_faces([[200] * 3]), [0])]
    sums, counts = face_targets.pooled_sums(batches, num_ids=3, pool=16)
    assert sums.shape == (3, 48) and counts.tolist() == [2, 1, 0]
    np.testing.assert_allclose(sums[0], 300.0)
    result = face_targets.standardise(sums, counts, pool=16)
    targets, present = result.values, result.present
    assert present.tolist() == [True, True, False]
    # Means 150 and 50, centred to +-50, divided by their standard deviation (50): +-1.
    np.testing.assert_allclose(targets[0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(targets[1], -1.0, rtol=1e-6)
    np.testing.assert_array_equal(targets[2], 0.0)
    assert targets.dtype == np.float32


def test_a_cell_is_the_mean_of_its_pixels():
    face = np.zeros((1, 64, 64, 3), np.uint8)
    face[0, :, 32:, 0] = 255  # red right half
    face[0, :32, :, 2] = 40  # blue top half
    sums, _ = face_targets.pooled_sums([(face, [0])], num_ids=1, pool=32)
    cells = sums.reshape(2, 2, 3)  # [row, column, channel]
    np.testing.assert_allclose(cells[:, 0, 0], 0.0)
    np.testing.assert_allclose(cells[:, 1, 0], 255.0)
    np.testing.assert_allclose(cells[0, :, 2], 40.0)
    np.testing.assert_allclose(cells[1, :, 2], 0.0)
    assert face_targets.target_dim(32) == 12 and face_targets.target_dim(1) == 64 * 64 * 3


def test_no_faces_or_a_label_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="no training identity has a face"):
        face_targets.standardise(*face_targets.pooled_sums([], num_ids=4, pool=16), pool=16)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        face_targets.pooled_sums([(_faces([[1] * 3]), [2])], num_ids=2, pool=16)


def test_targets_from_records_are_those_of_the_training_faces(tiny_records_dir):
    records = manifest.Records.open(tiny_records_dir)
    faces, labels, _ = reader.load_faces(records, "train")
    result = face_targets.from_records(records, pool=8)
    targets, present = result.values, result.present
    means = np.stack(
        [faces[labels == k].astype(np.float64).mean(0) for k in range(records.num_train_ids)]
    )
    small = means.reshape(-1, 8, 8, 8, 8, 3).mean((2, 4)).reshape(len(means), -1)
    small -= small.mean(0)
    np.testing.assert_allclose(targets, small / small.std(), rtol=1e-5, atol=1e-5)
    assert present.all() and targets.shape == (records.num_train_ids, 192)
    # A face in the targets' space: each identity's own mean face meets its target.
    np.testing.assert_allclose(result.of_faces(means / 127.5 - 1.0), targets, atol=1e-4)


def _pretrain(mode, weight, steps, present=None):
    config = tiny_config(
        "--config.train.task=embedder",
        "--config.optim.lr=1e-3",
        f"--config.train.face_target_weight={weight}",
    )
    nets = models.Networks(config.model, NUM_IDS)
    # A face target that follows a voice quality: the level of the voice's band 7 * id.
    values = np.outer(np.linspace(-1.0, 1.0, NUM_IDS), np.ones(48)).astype(np.float32)
    present = np.ones(NUM_IDS, bool) if present is None else present
    targets = face_targets.FaceTargets(values, present, np.full(48, 128, np.float32), 50.0, 16)
    batch = make_batch()
    batch["voice"] = batch["voice"] + 2.0 * np.eye(64)[batch["voice_id"] * 7][:, None, :]
    dp = parallel.DataParallel(
        lambda axis: train_step.make_embedder_step(config, nets, NUM_IDS, axis, targets),
        mode,
    )
    state = dp.put_state(state_lib.create_embedder_state(config, nets, NUM_IDS))
    history = []
    for _ in range(steps):
        state, metrics = dp(state, dp.put_batch(batch))
        history.append(dp.get_metrics(metrics))
    return dp.get_state(state), history


def test_e_learns_its_speakers_face_target_and_any_device_count_agrees():
    state, history = _pretrain("jit", 10.0, 40)
    assert history[-1]["e_face_loss"] < 0.6 * history[0]["e_face_loss"]
    assert set(state.head) == {"fc", "face_fc"}
    # Four devices (pmap) average the face loss over the global batch as one device does,
    # also when only some identities have faces (the count of voices with a target is global).
    some = np.arange(NUM_IDS) % 2 == 0
    one, one_hist = _pretrain("jit", 10.0, 2, some)
    four, four_hist = _pretrain("pmap", 10.0, 2, some)
    np.testing.assert_allclose(four_hist[-1]["e_face_loss"], one_hist[-1]["e_face_loss"], rtol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(four.head), jax.tree_util.tree_leaves(one.head)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_without_a_face_weight_the_head_and_step_are_speaker_classification_alone():
    state, history = _pretrain("jit", 0.0, 1)
    assert set(state.head) == {"fc"} and "e_face_loss" not in history[0]


def test_face_targets_without_records_are_refused_with_the_way_out(tmp_path):
    config = config_lib.load_config("configs/embedder.py:tiny", ["--config.model.num_ids=3"])
    assert config.train.face_target_weight > 0
    with pytest.raises(config_lib.ConfigError, match="face_target_weight=0"):
        train.load_face_targets(config, None)


@pytest.mark.slow
def test_g_learns_to_draw_its_speakers_pooled_mean_face():
    """In a GAN run, G's loss gets weight x the error of its pooled face to its speaker's target,
    and G's faces move to the target (4 x 4 cells here)."""
    batch = make_batch()
    # Targets: identity k's mean face is grey at level 200 + 4 k (pixel units), far brighter
    # than an untrained G's faces (about 127): G's first updates brighten them.
    sums = np.repeat(200.0 + 4.0 * np.arange(NUM_IDS)[:, None], 48, axis=1)
    targets = face_targets.standardise(sums, np.ones(NUM_IDS, np.int64), pool=16)
    config = tiny_config("--config.train.face_target_weight=2.0", "--config.optim.lr=1e-3")
    nets = models.Networks(config.model, NUM_IDS)
    dp = parallel.DataParallel(
        lambda axis: train_step.make_gan_step(config, nets, axis, targets), "jit"
    )
    state = dp.put_state(state_lib.create_gan_state(config, nets))
    history = []
    for _ in range(10):
        state, metrics = dp(state, dp.put_batch(batch))
        history.append(dp.get_metrics(metrics))
    first, last = history[0], history[-1]
    assert first["g_loss"] == pytest.approx(
        first["g_adv"] + first["g_id"] + 2.0 * first["g_face_loss"], rel=1e-5
    )
    assert last["g_face_loss"] < 0.5 * first["g_face_loss"]
