"""`v2f eval`: the metrics on rigged embeddings, the face embedder, and the pipeline on records."""

import json

import numpy as np
import pytest

from v2f_jax.evaluation import evaluate, face_embedder, metrics


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
    from v2f_jax.input_pipeline import prepare, synthetic

    root = tmp_path_factory.mktemp("eval")
    corpus = synthetic.make_corpus(root / "corpus", identities=10, utterances=2, faces=3, seed=1)
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
    assert (out / "eval.png").stat().st_size > 0
    fe = face_embedder.load(out / "face_embedder.safetensors")
    assert fe.settings["steps"] == 20 and fe.settings["num_ids"] == c["train_identities"]

    # A second evaluation on the same records reuses the cached embedder: the same numbers.
    assert cli.main(argv[:-3] + ["--out", str(tmp_path / "again"), argv[-1]]) == 0
    assert "cached" in capsys.readouterr().err
    again = json.loads((tmp_path / "again" / "eval.json").read_text())
    assert {k: again[k] for k in result if k.startswith(("matching", "recall", "id_"))} == {
        k: result[k] for k in result if k.startswith(("matching", "recall", "id_"))
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
