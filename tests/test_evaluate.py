"""`v2f eval`: the metrics on rigged embeddings, the face embedder, and the pipeline on records."""

import json
import re

import numpy as np
import pytest

from v2f_jax.evaluation import evaluate, face_embedder, metrics, picture


def _clusters(n_ids=12, per_id=5, dim=16, spread=0.05, seed=0):
    """Unit embeddings in tight per-identity clusters; genders alternate."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    labels = np.repeat(np.arange(n_ids), per_id)
    emb = centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True)
    emb = emb + spread * rng.normal(size=emb.shape)
    genders = labels % 2
    return emb, labels, genders, centres


def test_a_perfect_generator_scores_100_percent():
    faces, f_labels, f_genders, centres = _clusters()
    g_labels = np.repeat(np.arange(12), 3)
    g_genders = g_labels % 2
    # Generated faces land in their speaker's cluster.
    gen = centres[g_labels] + 0.05 * np.random.default_rng(2).normal(size=(36, 16))
    m = metrics.matching_1v2(gen, g_labels, faces, f_labels)
    mg = metrics.matching_1v2(gen, g_labels, faces, f_labels, g_genders, f_genders, True)
    r = metrics.retrieval_recall(gen, g_labels, faces, f_labels, gallery_size=0)
    assert m["accuracy"] == 1.0 and mg["accuracy"] == 1.0
    assert r["recall_at_1"] == 1.0 and r["gallery_size"] == 12
    assert m["voices"] == len(g_labels) and m["identities"] == 12


def test_a_constant_generator_scores_chance():
    faces, f_labels, f_genders, _ = _clusters(n_ids=20)
    rng = np.random.default_rng(3)
    g_labels = np.repeat(np.arange(20), rng.integers(1, 9, 20))  # unequal utterance counts
    gen = np.tile(rng.normal(size=(1, 16)), (len(g_labels), 1))
    g_genders = g_labels % 2
    m = metrics.matching_1v2(gen, g_labels, faces, f_labels)
    mg = metrics.matching_1v2(gen, g_labels, faces, f_labels, g_genders, f_genders, True)
    # Averaged per identity, one face for every voice is exactly chance.
    assert m["accuracy"] == pytest.approx(0.5, abs=1e-9)
    assert mg["accuracy"] == pytest.approx(0.5, abs=1e-9)
    r = metrics.retrieval_recall(gen, g_labels, faces, f_labels, gallery_size=10)
    assert r["recall_at_1"] == pytest.approx(0.1, abs=1e-9)
    assert r["recall_at_5"] == pytest.approx(0.5, abs=1e-9)
    assert r["recall_at_10"] == 1.0  # a gallery of 10 always holds the true one in its top 10


def test_random_generator_is_near_chance_and_ties_count_half():
    faces, f_labels, _, _ = _clusters(n_ids=30)
    rng = np.random.default_rng(4)
    g_labels = np.repeat(np.arange(30), 20)
    m = metrics.matching_1v2(rng.normal(size=(600, 16)), g_labels, faces, f_labels)
    assert abs(m["accuracy"] - 0.5) < 0.05
    # All similarities equal: every trial is a tie.
    flat = metrics.matching_1v2(np.ones((4, 2)), [0, 0, 1, 1], np.ones((4, 2)), [0, 1, 0, 1])
    assert flat["accuracy"] == 0.5


def test_matching_equals_brute_force_over_trials():
    rng = np.random.default_rng(5)
    faces, f_labels = rng.normal(size=(9, 4)), np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    gen, g_labels = rng.normal(size=(3, 4)), np.array([0, 1, 2])
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    s = unit(gen) @ unit(faces).T
    expected = []
    for v, y in enumerate(g_labels):
        acc = []
        for j in set(f_labels) - {y}:  # impostor identity uniform, then its face
            acc.append(
                np.mean(
                    [
                        [float(s[v, t] > s[v, i]) for i in np.flatnonzero(f_labels == j)]
                        for t in np.flatnonzero(f_labels == y)
                    ]
                )
            )
        expected.append(np.mean(acc))
    m = metrics.matching_1v2(gen, g_labels, faces, f_labels)
    assert m["accuracy"] == pytest.approx(np.mean(expected))


def test_recall_matches_enumerating_every_gallery():
    import itertools

    rng = np.random.default_rng(6)
    faces, f_labels = rng.normal(size=(12, 4)), np.repeat(np.arange(6), 2)
    gen, g_labels = rng.normal(size=(6, 4)), np.arange(6)
    r = metrics.retrieval_recall(gen, g_labels, faces, f_labels, gallery_size=3, ks=(1, 2))
    ids, gallery = metrics.identity_gallery(faces, f_labels)
    unit = gen / np.linalg.norm(gen, axis=1, keepdims=True)
    hits = {1: [], 2: []}
    for v, y in enumerate(g_labels):
        s = gallery @ unit[v]
        for others in itertools.combinations([i for i in ids if i != y], 2):
            rank = sum(s[o] > s[y] for o in others)
            for k in hits:
                hits[k].append(rank < k)
    assert r["recall_at_1"] == pytest.approx(np.mean(hits[1]))
    assert r["recall_at_2"] == pytest.approx(np.mean(hits[2]))


def test_a_real_photo_ceiling_is_perfect_for_a_perfect_scorer_and_chance_for_a_blind_one():
    faces, labels, genders, _ = _clusters(n_ids=10, per_id=4)
    sharp = metrics.real_photo_matching(faces, labels, genders)
    assert sharp["matching_1v2"] == pytest.approx(1.0) == sharp["matching_1v2_gender"]
    assert sharp["probes"] == 10
    blind = np.random.default_rng(5).normal(size=(4000, 16))
    many = np.repeat(np.arange(40), 100)
    noisy = metrics.real_photo_matching(blind, many, many % 2)
    assert (
        abs(noisy["matching_1v2"] - 0.5) < 0.05 and abs(noisy["matching_1v2_gender"] - 0.5) < 0.05
    )
    # An identity with a single photo has nothing to be matched against.
    one_more = metrics.real_photo_matching(
        np.vstack([faces, faces[:1]]), np.append(labels, 99), np.append(genders, 0)
    )
    assert one_more["probes"] == 10


def test_gender_is_read_from_faces_by_a_probe_fitted_to_the_training_faces():
    """Gender is one direction of the embedding, identity the rest: faces drawn in the speaker's
    cluster read as the speaker's gender; one face for every voice scores one gender's share of
    the identities (at most chance); unknown genders are left out."""
    rng = np.random.default_rng(5)
    n_ids, dim = 12, 16
    genders = np.array([1] * 7 + [0] * 5)  # unequal: chance is 7/12
    centres = rng.normal(size=(n_ids, dim))
    centres[:, 0] = 4.0 * (2 * genders - 1)
    labels = np.repeat(np.arange(n_ids), 4)
    real = centres[labels] + 0.3 * rng.normal(size=(len(labels), dim))
    known = genders[labels].copy()
    known[:4] = -1  # one identity's gender unknown: not in the fit
    reader = metrics.attribute_reader(real, labels, known)
    assert reader is not None and list(reader[0]) == [0, 1]
    g_labels = np.repeat(np.arange(n_ids), 3)
    drawn = centres[g_labels] + 0.3 * rng.normal(size=(len(g_labels), dim))
    right = metrics.attribute_agreement(drawn, genders[g_labels], g_labels, reader)
    assert right["accuracy"] == 1.0 and right["voices"] == 36
    assert right["chance"] == pytest.approx(7 / 12)
    constant = np.tile(drawn[:1], (len(g_labels), 1))
    one_face = metrics.attribute_agreement(constant, genders[g_labels], g_labels, reader)
    assert one_face["accuracy"] == pytest.approx(7 / 12)  # drawn[0] is of gender 1 (7 of 12)
    # Voices of unknown gender are not scored; one known gender gives no reader.
    g_unknown = np.where(g_labels < 2, -1, genders[g_labels])
    assert metrics.attribute_agreement(drawn, g_unknown, g_labels, reader)["voices"] == 30
    assert metrics.attribute_reader(real, labels, np.ones_like(labels)) is None
    missing = metrics.attribute_agreement(drawn, genders[g_labels], g_labels, None)
    assert np.isnan(missing["accuracy"]) and missing["voices"] == 0


def test_the_gender_probe_reads_a_weak_direction_that_identity_blurs():
    """Gender a small shift along axis 0, identity a large spread along axes 0 + 1 together: a
    nearest-mean rule reads axis 0 and is fooled by identity; the probe reads axis 0 - axis 1."""
    rng = np.random.default_rng(6)
    n_ids, dim = 60, 8
    genders = np.arange(n_ids) % 2
    centres = 0.05 * rng.normal(size=(n_ids, dim))
    centres[:, 0] += 0.5 * (2 * genders - 1)
    spread = 3.0 * rng.normal(size=n_ids)
    centres[:, 0] += spread
    centres[:, 1] += spread
    centres[:, 2] += 10.0  # every face points the same way, as a scorer's embeddings do
    labels = np.repeat(np.arange(n_ids), 4)
    faces = centres[labels] + 0.05 * rng.normal(size=(len(labels), dim))
    train, test = labels < 40, labels >= 40
    reader = metrics.attribute_reader(faces[train], labels[train], genders[labels][train])
    probe = metrics.attribute_agreement(faces[test], genders[labels][test], labels[test], reader)
    assert probe["accuracy"] > 0.9
    # The nearest-mean reading of the same faces: well below.
    means = [faces[train][genders[labels][train] == g].mean(0) for g in (0, 1)]
    nearest = np.argmin([np.linalg.norm(faces[test] - m, axis=1) for m in means], axis=0)
    assert np.mean(nearest == genders[labels][test]) < 0.8


def test_identity_accuracy():
    logits = np.array([[3.0, 1, 0, 0, 0, 0], [0, 1, 3, 2, 0, 0], [0, 0, 0, 0, 1, 2]])
    out = metrics.identity_accuracy(logits, np.array([0, 3, 4]), ks=(1, 2))
    assert out["top1"] == pytest.approx(1 / 3) and out["top2"] == pytest.approx(1.0)


def test_face_embedder_is_deterministic_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    # Four "identities": flat colours with noise; any embedder separates them.
    colours = rng.integers(0, 255, (4, 3))
    labels = np.repeat(np.arange(4), 6)
    faces = np.clip(colours[labels][:, None, None, :] + rng.normal(0, 20, (24, 64, 64, 3)), 0, 255)
    faces = faces.astype(np.uint8)
    kw = dict(channels=(4, 8, 8, 8), out_dim=8, batch_size=8, lr=5e-3)
    a = face_embedder.train(faces, labels, 4, steps=60, **kw)
    b = face_embedder.train(faces, labels, 4, steps=60, **kw)
    emb_a = a.embed(face_embedder.to_float(faces))
    np.testing.assert_array_equal(emb_a, b.embed(face_embedder.to_float(faces)))
    np.testing.assert_allclose(np.linalg.norm(emb_a, axis=1), 1.0, rtol=1e-5)
    assert a.info["train_top1"] > 0.9
    path = face_embedder.save(a, tmp_path / "fe.safetensors")
    c = face_embedder.load(path)
    np.testing.assert_allclose(c.embed(face_embedder.to_float(faces)), emb_a, atol=1e-6)
    assert c.settings == a.settings
    np.testing.assert_allclose(c.logits(emb_a), a.logits(emb_a), atol=1e-5)


# ------------------------------------------------------------------- the pipeline, on real records


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from v2f_jax.input_pipeline import prepare
    from v2f_jax.synthetic import writer

    root = tmp_path_factory.mktemp("eval")
    corpus = writer.make_corpus(root / "corpus", identities=10, utterances=2, faces=3, seed=1)
    prepare.prepare(
        corpus["voices_dir"],
        corpus["faces_dir"],
        corpus["meta"],
        root / "records",
        workers=1,
        progress=False,
    )
    return root / "records"


@pytest.fixture(scope="module")
def untrained_model_file(records, tmp_path_factory):
    from v2f_jax import config_lib
    from v2f_jax.inference import model_files
    from v2f_jax.inference.model import init_model
    from v2f_jax.input_pipeline import manifest

    config = config_lib.load_config("configs/tiny.py")
    config.model.num_ids = manifest.Records.open(records).num_train_ids
    path = tmp_path_factory.mktemp("model") / "untrained.safetensors"
    return model_files.save_model(init_model(config), path)


def test_eval_command_writes_the_report(records, untrained_model_file, tmp_path, capsys):
    from v2f_jax import cli

    out = tmp_path / "eval"
    argv = [
        "eval",
        "--model",
        untrained_model_file,
        "--records",
        str(records),
        "--out",
        str(out),
        "--config.eval.face_embedder_steps=20",
    ]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "training on" in captured.err
    assert captured.out.strip().splitlines()[-2:] == [
        f"report: {out / 'eval.md'}",
        f"picture: {out / 'eval.png'}",
    ]
    result = json.loads((out / "eval.json").read_text())
    for key in (
        "matching_1v2",
        "matching_1v2_gender",
        "recall_at_1",
        "recall_at_5",
        "recall_at_10",
        "id_top1",
        "id_top5",
    ):
        assert 0.0 <= result[key] <= 1.0, key
    c = result["counts"]
    assert c["test_identities"] >= 2 and c["test_voices"] == 2 * c["test_identities"]
    assert c["test_faces"] == 3 * c["test_identities"] and c["train_voices"] > 0
    # An untrained generator draws (nearly) one face for every voice: chance.
    assert abs(result["matching_1v2"] - 0.5) < 0.1
    md = (out / "eval.md").read_text()
    assert "| 1:2 matching |" in md and "![generated and real faces](eval.png)" in md
    # The nearest-identity baseline, on the same voices and faces, in both reports.
    nearest = result["baselines"]["nearest_identity"]
    for key in metrics.METRICS:
        assert 0.0 <= nearest[key] <= 1.0, key
    assert set(nearest["stderr"]) == {"matching_1v2", "matching_1v2_gender", "gender_from_face"}
    # Gender read from the faces, beside the reader's own accuracy on real test faces.
    assert 0.0 <= result["gender_from_face"] <= 1.0 and 0.0 <= nearest["gender_from_face"] <= 1.0
    assert 0.5 <= result["chance"]["gender_from_face"] <= 1.0
    assert result["gender_reader_on_real_test_faces"] > 0.5
    assert "| gender read from the face is the speaker's |" in md
    # The scorer's ceiling: a real photo of each test speaker in place of the generated face.
    real = result["real_photo"]
    assert real["probes"] == c["test_identities"]
    assert real["matching_1v2"] > result["matching_1v2"] and real["matching_1v2"] > 0.6
    assert f"scores {100 * real['matching_1v2']:.1f}%" in md
    assert nearest["counts"]["candidate_identities"] == c["train_identities"]
    assert "| metric | model | nearest-identity baseline | chance | on |" in md
    assert f"| {100 * nearest['id_top1']:.1f}% | {100 / c['train_identities']:.1f}% |" in md
    assert (out / "eval.png").stat().st_size > 0
    # One face per speaker from all its voices, beside the per-voice rows.
    speakers = result["per_speaker"]
    assert speakers["speakers"] == c["test_identities"] and speakers["clips"] == c["test_voices"]
    for key in ("matching_1v2", "matching_1v2_gender", "recall_at_1"):
        assert 0.0 <= speakers[key] <= 1.0, key
    assert "| 1:2 matching, one face per speaker |" in md
    # What the faces look like: checkerboard against real faces, Fréchet distance with its floor.
    looks = result["picture"]
    assert looks["checkerboard"]["ratio"] > 0 and looks["checkerboard"]["real"] > 0
    assert looks["checkerboard"]["generated_faces"] == c["test_voices"]
    assert looks["checkerboard"]["real_faces"] == c["test_faces"]
    assert looks["frechet"]["generated"] > 0 and looks["frechet"]["real_split"] >= 0
    assert looks["frechet"]["generated_faces"] == c["test_voices"]
    assert "| checkerboard: period-2 share of high-frequency energy |" in md
    assert "| Fréchet distance to real test faces (scorer's embedding) |" in md
    fe = face_embedder.load(out / "face_embedder.safetensors")
    assert fe.settings["steps"] == 20 and fe.settings["num_ids"] == c["train_identities"]

    # A second evaluation on the same records reuses the cached embedder: the same numbers.
    assert cli.main(argv[:-3] + ["--out", str(tmp_path / "again"), argv[-1]]) == 0
    assert "cached" in capsys.readouterr().err
    again = json.loads((tmp_path / "again" / "eval.json").read_text())
    assert {k: again[k] for k in result if k.startswith(("matching", "recall", "id_"))} == {
        k: result[k] for k in result if k.startswith(("matching", "recall", "id_"))
    }
    again_nearest = again["baselines"]["nearest_identity"]
    assert {k: again_nearest[k] for k in metrics.METRICS} == {
        k: nearest[k] for k in metrics.METRICS
    }


def test_eval_refuses_records_of_another_front_end(records, untrained_model_file, tmp_path):
    from v2f_jax.inference import generate, model_files
    from v2f_jax.input_pipeline import audio, manifest

    model = model_files.load_model(untrained_model_file)
    model.frontend = audio.frontend_params("librosa")
    with pytest.raises(generate.FrontendMismatchError, match="'wen2019' features"):
        evaluate.evaluate(
            model, manifest.Records.open(records), tmp_path / "eval", face_embedder_steps=20
        )


# ------------------------------------------------------------- the nearest-identity baseline


def test_nearest_identity_faces_on_a_hand_made_case():
    from v2f_jax.evaluation import baselines

    # Three training identities; dimension 1 is constant (standardising must not divide by 0).
    train_voices = np.array([[0.0, 5.0, 0.0], [10.0, 5.0, 0.0], [0.0, 5.0, 10.0]])
    train_faces = np.arange(3 * 2 * 2 * 3, dtype=np.float32).reshape(3, 2, 2, 3)
    # Standardised by the training identities' means (10/3, 5, 10/3) and deviations (4.7, none,
    # 4.7), the identities point along (-1, 0, -1), (2, 0, -1) and (-1, 0, 2); cosine compares
    # directions only, so the last voice, far out along dimension 0, is identity 1's.
    voices = np.array([[9.0, 5.0, 1.0], [1.0, 7.0, 30.0], [-5.0, 5.0, -5.0], [100.0, 0.0, 0.0]])
    picks = baselines.nearest_identity(voices, train_voices)
    np.testing.assert_array_equal(picks, [1, 2, 0, 1])
    faces = baselines.nearest_identity_faces(voices, train_voices, train_faces)
    assert faces.shape == (4, 2, 2, 3) and faces.dtype == np.float32
    np.testing.assert_array_equal(faces, train_faces[[1, 2, 0, 1]])
    # An identity's own mean is always its nearest.
    np.testing.assert_array_equal(baselines.nearest_identity(train_voices, train_voices), [0, 1, 2])


def test_identity_means_of_uint8_faces_and_missing_identities():
    from v2f_jax.evaluation import baselines

    faces = np.array([[250], [255], [0], [7]], np.uint8)[:, :, None]  # [4, 1, 1]
    means, present = baselines.identity_means(faces, np.array([2, 2, 0, 2]), 4)
    assert means.shape == (4, 1, 1) and means.dtype == np.float64
    np.testing.assert_allclose(means[:, 0, 0], [0.0, 0.0, (250 + 255 + 7) / 3, 0.0])
    np.testing.assert_array_equal(present, [True, False, True, False])


def test_the_baseline_scores_high_when_voices_point_at_look_alikes_and_chance_when_not():
    """Scored by the metrics as `v2f eval` scores it: a test voice that sounds like a training
    identity whose faces look like the speaker's scores high; shuffled links score no better than
    chance."""
    from v2f_jax.evaluation import baselines

    rng = np.random.default_rng(0)
    k, dim = 10, 8
    looks = rng.normal(size=(k, dim))  # face "embeddings" of ten look-alike families
    sounds = rng.normal(size=(k, 64))  # and their voices' mean log-mel
    train_voices = sounds + 0.1 * rng.normal(size=(k, 64))
    train_faces = looks + 0.1 * rng.normal(size=(k, dim))
    test_labels = np.repeat(np.arange(k), 3)
    real, real_labels = looks[np.repeat(np.arange(k), 4)], np.repeat(np.arange(k), 4)
    real = real + 0.2 * rng.normal(size=real.shape)
    for links, low, high in ((np.arange(k), 0.95, 1.0), (np.roll(np.arange(k), 3), 0.35, 0.65)):
        voices = sounds[links[test_labels]] + 0.3 * rng.normal(size=(3 * k, 64))
        faces = baselines.nearest_identity_faces(voices, train_voices, train_faces)
        score = metrics.matching_1v2(faces, test_labels, real, real_labels)["accuracy"]
        assert low <= score <= high, (links, score)


_COLOURS = np.array(
    [[220, 40, 40], [40, 200, 40], [40, 40, 220], [230, 220, 40], [40, 210, 220], [200, 40, 210]]
)


def _look_alike_records(root, sounds_like):
    """Six training people (`Mo_i`: flat faces of colour i, voices of mean log-mel i) and six test
    people (`Al_i`: faces of colour i, voices of mean log-mel `sounds_like[i]`), as records."""
    import cv2

    from v2f_jax.input_pipeline import manifest, prepare

    rng = np.random.default_rng(0)
    sounds = 3.0 * rng.normal(size=(len(_COLOURS), 64))
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    people = [(f"Mo_{i}", i, i) for i in range(len(_COLOURS))]
    people += [(f"Al_{i}", i, s) for i, s in enumerate(sounds_like)]
    for n, (name, look, sound) in enumerate(people):
        vid = f"id{10001 + n}"
        meta.append(f"{vid}\t{name}\t{'mf'[look % 2]}\tUK\tdev")
        (root / "fbank" / vid / "v").mkdir(parents=True)
        (root / "faces" / name).mkdir(parents=True)
        for u in range(2):
            mel = sounds[sound] + rng.normal(size=(60, 64))
            np.save(root / "fbank" / vid / "v" / f"{u}.npy", mel.astype(np.float32))
            img = np.clip(_COLOURS[look] + rng.normal(0, 15, (72, 72, 3)), 0, 255)
            cv2.imwrite(str(root / "faces" / name / f"{u}.png"), img.astype(np.uint8))
    (root / "meta.csv").write_text("\n".join(meta) + "\n")
    prepare.prepare(
        root / "fbank",
        root / "faces",
        root / "meta.csv",
        root / "records",
        workers=1,
        progress=False,
    )
    return manifest.Records.open(root / "records")


def test_eval_scores_the_nearest_identity_baseline_on_the_same_voices_and_faces(
    untrained_model_file, tmp_path
):
    """Through `evaluate`: the baseline's faces come from the right training people, and are
    scored against the right test people, only if voices, faces and labels are wired right."""
    from v2f_jax.inference import model_files

    model = model_files.load_model(untrained_model_file)  # E and G only: any records will do
    linked = _look_alike_records(tmp_path / "linked", range(6))
    r = evaluate.evaluate(
        model, linked, tmp_path / "linked" / "eval", face_embedder_steps=30, log=lambda _: None
    )
    nearest = r["baselines"]["nearest_identity"]
    # Each test voice sounds like the training person who looks like the speaker.
    for key in metrics.METRICS:
        assert nearest[key] == 1.0, (key, nearest)
    assert nearest["counts"] == {
        "candidate_identities": 6,
        "identities_drawn_for_test_voices": 6,
        "train_voices_nearest_own": 1.0,
    }
    assert abs(r["matching_1v2"] - 0.5) < 0.1  # the untrained generator, beside it: chance
    md = (tmp_path / "linked" / "eval" / "eval.md").read_text()
    assert "| metric | model | nearest-identity baseline | chance | on |" in md
    assert re.search(r"\| 1:2 matching \| [\d.]+%( ± [\d.]+)? \| 100\.0% ± 0\.0 \| 50\.0% \|", md)

    # The same people, each test voice now sounding like another's look-alike: no better than
    # chance, and never first in retrieval (the face it draws is an impostor's).
    shuffled = _look_alike_records(tmp_path / "shuffled", np.roll(np.arange(6), 1))
    fe = tmp_path / "linked" / "eval" / "face_embedder.safetensors"  # same training people
    r = evaluate.evaluate(
        model, shuffled, tmp_path / "shuffled" / "eval", face_embedder_path=fe, log=lambda _: None
    )
    nearest = r["baselines"]["nearest_identity"]
    assert nearest["matching_1v2"] < 0.5 and nearest["recall_at_1"] == 0.0, nearest
    assert nearest["id_top1"] == 1.0  # training voices still find their own people


# ------------------------------------------------------------ what the faces look like


def _smooth_faces(n=6, size=64, seed=0):
    """Faces made of a few low frequencies (periods of 16 pixels or more) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    faces = np.zeros([n, size, size, 3])
    for k in range(n):
        for c in range(3):
            for fu, fv in ((1, 0), (0, 2), (2, 3), (4, 1)):
                phase = rng.uniform(0, 2 * np.pi)
                faces[k, :, :, c] += 0.2 * np.cos(2 * np.pi * (fu * i + fv * j) / size + phase)
    return faces


def test_checkerboard_share_of_known_images():
    i, j = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    board = np.broadcast_to(((-1.0) ** (i + j))[None, :, :, None], (2, 64, 64, 3))
    stripes = np.broadcast_to(((-1.0) ** i)[None, :, :, None], (2, 64, 64, 3))
    # All of a pure checkerboard's (or period-2 stripes') energy is at a period-2 frequency.
    assert picture.period2_share(board) == pytest.approx(1.0)
    assert picture.period2_share(stripes) == pytest.approx(1.0)
    # Smooth faces have next to no high-frequency energy, and none at period 2: with faint
    # noise on them, they score what the noise does.
    smooth = _smooth_faces()
    sums = picture.SpectrumSums()
    sums.add(smooth)
    assert np.all(sums.high < 1e-12 * np.sum(smooth**2))
    rng = np.random.default_rng(1)
    textured = smooth + 1e-3 * rng.normal(size=smooth.shape)
    assert picture.period2_share(textured) == pytest.approx(27 / 3072, rel=0.3)
    # White noise spreads its energy evenly: 27 period-2 bins of 64 * 64 - 32 * 32 high ones.
    noise = np.random.default_rng(2).normal(size=(200, 64, 64, 3))
    assert picture.period2_share(noise) == pytest.approx(27 / 3072, rel=0.1)
    # A border row or column of odd pixels (a padded conv's edge) is not a checkerboard: the
    # window is 0 there (and 0.0024 on the last row and column).
    edged = textured.copy()
    edged[:, 0], edged[:, :, 0] = 1.0, -1.0
    assert picture.period2_share(edged) == pytest.approx(picture.period2_share(textured), rel=0.05)
    # A faint checkerboard over textured faces is what the measure sees, per channel.
    marked = textured.copy()
    marked[..., 0] += 0.05 * board[0, ..., 0]
    sums = picture.SpectrumSums()
    for chunk in (marked[:2], marked[2:]):  # streamed in chunks: the same sums
        sums.add(chunk)
    shares = sums.shares()
    assert shares[0] > 0.99 and shares[1] < 0.02 and shares[2] < 0.02


def test_checkerboard_ratio_is_one_for_the_same_faces_and_large_for_a_marked_copy():
    rng = np.random.default_rng(0)
    real = np.clip(_smooth_faces(8) + 0.05 * rng.normal(size=(8, 64, 64, 3)), -1, 1)
    a, b = picture.SpectrumSums(), picture.SpectrumSums()
    a.add(real)
    b.add(real)
    same = picture.checkerboard(a, b)
    assert same["ratio"] == pytest.approx(1.0) and same["ratio_per_channel"] == pytest.approx(
        [1] * 3
    )
    assert same["generated_faces"] == same["real_faces"] == 8
    i, j = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    marked = picture.SpectrumSums()
    marked.add(real + 0.05 * ((-1.0) ** (i + j))[None, :, :, None])
    assert picture.checkerboard(marked, b)["ratio"] > 5
    with pytest.raises(ValueError, match="even"):
        picture.SpectrumSums().add(np.zeros([1, 63, 64, 3]))


def test_frechet_distance_of_known_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    a -= a.mean(0)
    assert picture.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # A shift by d adds |d|^2; a scaled copy (S_b = 4 S_a) adds tr(S_a) (tr(S + 4S - 2 * 2S)).
    d = np.arange(8) / 10
    assert picture.frechet_distance(a, a + d) == pytest.approx(d @ d, rel=1e-6)
    trace = np.trace(np.cov(a, rowvar=False))
    assert picture.frechet_distance(a, 2 * a) == pytest.approx(trace, rel=1e-6)
    # Two samples of one Gaussian: small sets are far apart (the bias `real_split` shows), large
    # ones close.
    small = picture.frechet_distance(rng.normal(size=(50, 8)), rng.normal(size=(50, 8)))
    large = picture.frechet_distance(rng.normal(size=(5000, 8)), rng.normal(size=(5000, 8)))
    assert large < 0.05 < small
    assert np.isnan(picture.frechet_distance(a[:1], a))


def test_frechet_figures_split_real_faces_by_identity():
    emb, labels, _, _ = _clusters(n_ids=10, per_id=6, dim=8, spread=0.2)
    first, second = picture.split_real(labels)
    assert not set(first) & set(second) and len(first) + len(second) == len(labels)
    assert all((labels[first] == k).sum() == 3 == (labels[second] == k).sum() for k in range(10))
    # Faces that are real photos of the right people reach the real-vs-real floor; one face
    # drawn for every voice is far from it.
    gen = emb[first]
    figures = picture.frechet_figures(gen, emb, labels)
    assert figures["generated"] == pytest.approx(figures["real_split"])
    assert figures["generated_faces"] == figures["split_faces"] == 30
    assert figures["reference_faces"] == 30
    constant = picture.frechet_figures(np.repeat(emb[:1], 30, axis=0), emb, labels)
    assert constant["generated"] > 3 * figures["real_split"]
    # Fewer generated faces than half the real ones: the floor uses as many, one per identity
    # in turn.
    few = picture.frechet_figures(emb[first][:5], emb, labels)
    assert few["split_faces"] == 5
