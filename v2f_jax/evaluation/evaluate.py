"""`v2f eval`: how well generated faces match their speakers, on identities never seen in training.

Every face (generated or real) is embedded by a separate face embedder trained on the TRAIN
split's real faces only (`face_embedder.py`). Faces generated from TEST voices are scored against
TEST faces (1:2 matching, retrieval recall over galleries of `config.eval.gallery_size` test
identities, <= 0: all); faces generated from TRAIN voices are classified over the training
identities (identity accuracy). `metrics.py` defines the figures, `report.py` writes them up.
The same voices, faces and scorer also score a trivial model (`baselines.py`: the nearest training
identity's mean face), so the report shows how far the model is above one. Each test speaker is
also drawn once from all of its voices (their embeddings fused as `v2f generate --per-speaker`
does) and scored the same way, and `picture.py` measures what the generated faces look like
beside the real test faces: a checkerboard ratio and a Fréchet distance in the scorer's
embedding, with a real-vs-real floor.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import math
import os
import time
from collections.abc import Callable

import numpy as np

from v2f_jax import config_checks, files
from v2f_jax.evaluation import baselines, face_embedder, metrics, picture, report
from v2f_jax.inference import generate, images
from v2f_jax.inference.model import Model
from v2f_jax.input_pipeline import constants
from v2f_jax.input_pipeline import manifest as manifest_lib


@dataclasses.dataclass
class _Generated:
    """What `_generated_embeddings` streamed: the generated faces' embeddings, and the voices'
    mean log-mels (the nearest-identity baseline's features), read in the same pass."""

    emb: np.ndarray  # [N, D] face embeddings of the N voices generated from
    labels: np.ndarray  # [N]
    genders: np.ndarray  # [N]
    faces: dict  # {label: [faces]} the kept generated faces
    mel_means: np.ndarray  # [N, 64] mean log-mel over frames of each voice generated from
    all_mel_means: np.ndarray  # [M, 64] the same of every utterance read (M >= N)
    all_labels: np.ndarray  # [M]


def _generated_embeddings(
    records: manifest_lib.Records,
    split: str,
    embed: Callable,
    per_identity: int | None = None,
    keep_faces: int = 0,
    chunk: int = 256,
) -> _Generated:
    """Streams a split's utterances through E, G and the face embedder, `chunk` at a time, so
    memory holds embeddings, not log-mels.

    Args:
      embed: `list of [T, 64] log-mels -> (faces [N, 64, 64, 3], face embeddings [N, D])`.
      per_identity: use at most this many utterances of each identity (the first ones); the
        mean log-mel of every utterance is kept all the same.
      keep_faces: keep the generated faces of each identity's first `keep_faces` utterances.
    """
    from v2f_jax.input_pipeline import reader  # imports TensorFlow

    mels, labels, genders, embs, used = [], [], [], [], []
    all_means, all_labels = [], []
    counts: collections.Counter = collections.Counter()
    kept: dict[int, list] = collections.defaultdict(list)

    def flush():
        if not mels:
            return
        faces, emb = embed(mels)
        embs.append(emb)
        for face, label in zip(faces, labels[len(labels) - len(mels) :]):
            if len(kept[label]) < keep_faces:
                kept[label].append(face)
        mels.clear()

    for mel, label, gender in reader.make_eval_voices(records, split):
        all_means.append(mel.mean(0))
        all_labels.append(label)
        if per_identity is not None and counts[label] >= per_identity:
            continue
        counts[label] += 1
        used.append(len(all_means) - 1)
        mels.append(mel)
        labels.append(label)
        genders.append(gender)
        if len(mels) == chunk:
            flush()
    flush()
    n_mels = constants.N_MELS
    all_means = np.stack(all_means) if all_means else np.zeros([0, n_mels], np.float32)
    return _Generated(
        emb=np.concatenate(embs) if embs else np.zeros([0, 0], np.float32),
        labels=np.asarray(labels, np.int64),
        genders=np.asarray(genders, np.int64),
        faces=dict(kept),
        mel_means=all_means[np.asarray(used, np.int64)],
        all_mel_means=all_means,
        all_labels=np.asarray(all_labels, np.int64),
    )


# Faces per training identity that the gender reader is fitted to.
READER_FACES_PER_IDENTITY = 8


def _first_per_identity(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of the first `count` entries of each label, in order."""
    seen: dict[int, int] = {}
    keep = []
    for i, label in enumerate(np.asarray(labels).tolist()):
        if seen.get(label, 0) < count:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    return np.asarray(keep, int)


def _nearest_identity_baseline(
    fe: face_embedder.FaceEmbedder,
    test: _Generated,
    train: _Generated,
    face_means: tuple[np.ndarray, np.ndarray],
    score: Callable[[np.ndarray, np.ndarray], tuple[dict, dict]],
) -> dict | None:
    """`baselines.NEAREST_IDENTITY` on the voices the model was evaluated on, scored by `score`
    (`(test embeddings, train embeddings) -> (figures, counts)`, the model's own scoring).

    Args:
      face_means: `(mean faces float [K, 64, 64, 3] in [-1, 1], present bool [K])` of the
        training identities.

    Each candidate identity's mean face is embedded once; a voice's face embedding is its
    nearest identity's, exactly what embedding `baselines.nearest_identity_faces` would give.

    Returns:
      Its figures, or None when no training identity has both voices and faces.
    """
    faces, has_face = face_means
    voice_means, has_voice = baselines.identity_means(
        train.all_mel_means, train.all_labels, len(has_face)
    )
    candidates = np.flatnonzero(has_voice & has_face)
    if not candidates.size:
        return None
    cand_emb = fe.embed(faces[candidates])
    keys = voice_means[candidates]
    test_pick = baselines.nearest_identity(test.mel_means, keys)
    train_pick = baselines.nearest_identity(train.mel_means, keys)
    out, _ = score(cand_emb[test_pick], cand_emb[train_pick])  # counts: the model's
    out["counts"] = {
        "candidate_identities": int(candidates.size),
        "identities_drawn_for_test_voices": int(np.unique(test_pick).size),
        # How often a training voice's nearest identity is its own (the lookup's accuracy on
        # voices it has seen): a ceiling on its id_top1.
        "train_voices_nearest_own": float(np.mean(candidates[train_pick] == train.labels))
        if train.labels.size
        else float("nan"),
    }
    out["definition"] = baselines.DEFINITIONS[baselines.NEAREST_IDENTITY]
    return out


def _per_speaker(
    model: Model,
    fe: face_embedder.FaceEmbedder,
    voice_emb: np.ndarray,
    test: _Generated,
    real: tuple[np.ndarray, np.ndarray, np.ndarray],
    gallery_size: int,
) -> dict:
    """One face per test speaker from all of its voices (`generate.fuse_voices` of their unit
    embeddings, as `v2f generate --per-speaker`), scored as the per-voice faces are.

    Args:
      voice_emb: `[N, D]` unit voice embeddings of the test voices, in `test`'s order.
      real: `(embeddings [F, D], labels [F], genders [F])` of the real test faces.

    Returns:
      `{"matching_1v2", "matching_1v2_gender", "recall_at_<k>", "stderr", "speakers", "clips",
      "fusion"}`: each speaker counts once.
    """
    f_emb, f_labels, f_genders = real
    ids = np.unique(test.labels)
    if not ids.size:
        return {}
    fused = np.stack([generate.fuse_voices(voice_emb[test.labels == i]) for i in ids])
    faces = np.clip(generate.generate_faces(model.config, model.generator, fused), -1.0, 1.0)
    emb = fe.embed(faces)
    genders = np.array([test.genders[test.labels == i][0] for i in ids])
    m_all = metrics.matching_1v2(emb, ids, f_emb, f_labels)
    m_gender = metrics.matching_1v2(emb, ids, f_emb, f_labels, genders, f_genders, same_gender=True)
    recall = metrics.retrieval_recall(emb, ids, f_emb, f_labels, gallery_size)
    return {
        "matching_1v2": m_all["accuracy"],
        "matching_1v2_gender": m_gender["accuracy"],
        **{f"recall_at_{k}": recall[f"recall_at_{k}"] for k in metrics.RECALL_KS},
        "stderr": {
            "matching_1v2": m_all["stderr"],
            "matching_1v2_gender": m_gender["stderr"],
        },
        "speakers": int(ids.size),
        "clips": int(len(test.labels)),
        "fusion": generate.FUSION,
    }


def evaluate(
    model: Model,
    records: manifest_lib.Records,
    out_dir: str | os.PathLike,
    *,
    face_embedder_steps: int | None = None,
    gallery_size: int | None = None,
    max_train_voices: int = 2000,
    face_embedder_path: str | os.PathLike | None = None,
    baseline: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Scores `model` on the records' TEST split (and TRAIN voices for identity accuracy).

    Writes `eval.json`, `eval.md`, `eval.png` (generated vs real faces of test identities) and
    `face_embedder.safetensors` into `out_dir`.

    Args:
      model: E and G (`inference.sources.load_any`).
      records: a `v2f prepare` output (`manifest.Records.open(dir)`).
      out_dir: created if missing.
      face_embedder_steps: default `model.config.eval.face_embedder_steps`.
      gallery_size: default `model.config.eval.gallery_size`.
      max_train_voices: about this many TRAIN utterances (the first of each identity, the same
        number of each) are generated for identity accuracy; <= 0: all.
      face_embedder_path: score with this embedder file instead of the cached/trained one (it
        must have been trained on these records' TRAIN identities for `id_top*`).
      baseline: also score the nearest-identity baseline (`baselines.py`) on the same voices,
        faces and scorer: `result["baselines"]["nearest_identity"]`, a column of `eval.md`.

    Returns:
      The `eval.json` dict.

    Raises:
      inference.generate.FrontendMismatchError: the records' features come from another front end.
    """
    from v2f_jax.input_pipeline import reader  # imports TensorFlow

    out_dir = os.fspath(out_dir)
    check_evaluable(records)
    os.makedirs(out_dir, exist_ok=True)
    records_frontend = config_checks.records_frontend(records)
    if records_frontend != model.frontend_name:
        raise generate.FrontendMismatchError(
            f"the records in {records.root} hold '{records_frontend}' features, the model was "
            f"trained on '{model.frontend_name}' ones; evaluate on records prepared with "
            f"--frontend {model.frontend_name}"
        )
    eval_cfg = model.config.eval
    steps = int(
        face_embedder_steps if face_embedder_steps is not None else eval_cfg.face_embedder_steps
    )
    gallery_size = int(gallery_size if gallery_size is not None else eval_cfg.gallery_size)

    # The training faces are read once, for the nearest-identity baseline's mean faces, the
    # gender reader's fit and, when it is not cached, the face embedder's training.
    start = time.perf_counter()
    face_means = None
    *train_faces, train_genders = reader.load_faces(records, "train")
    if baseline:
        means, present = baselines.identity_means(*train_faces, records.num_train_ids)
        face_means = (face_embedder.to_float(means), present)
    baseline_seconds = time.perf_counter() - start
    if face_embedder_path is not None:
        fe, fe_path = face_embedder.load(face_embedder_path), os.fspath(face_embedder_path)
        fe_copy = os.path.join(out_dir, "face_embedder.safetensors")
        if os.path.abspath(fe_copy) != os.path.abspath(fe_path):
            face_embedder.save(fe, fe_copy)
        fe_path = fe_copy
    else:
        fe, fe_path = face_embedder.get_or_train(
            records, steps, out_dir, log=log, train_faces=train_faces
        )
    reader_faces = _first_per_identity(train_faces[1], READER_FACES_PER_IDENTITY)
    gender_reader = metrics.attribute_reader(
        fe.embed(face_embedder.to_float(train_faces[0][reader_faces])),
        train_faces[1][reader_faces],
        train_genders[reader_faces],
    )
    del train_faces, train_genders

    def embed(mels):
        voices = generate.embed_voices(model.config, model.embedder, mels)
        faces = generate.generate_faces(model.config, model.generator, voices)
        return faces, fe.embed(np.clip(faces, -1.0, 1.0))

    # The test voices' embeddings (for one face per speaker) and their faces' spectra (the
    # checkerboard measure), gathered as the test split streams through.
    test_voices, test_spectra = [], picture.SpectrumSums()

    def embed_test(mels):
        voices = generate.embed_voices(model.config, model.embedder, mels)
        faces = np.clip(generate.generate_faces(model.config, model.generator, voices), -1.0, 1.0)
        test_voices.append(voices)
        test_spectra.add(faces)
        return faces, fe.embed(faces)

    # Test split: generated faces of unseen speakers against their real faces.
    log("eval: test split")
    test = _generated_embeddings(records, "test", embed_test, keep_faces=2)
    t_labels, t_genders = test.labels, test.genders
    f_imgs, f_labels, f_genders = reader.load_faces(records, "test")
    if not len(t_labels) or not len(f_imgs):
        raise ValueError(f"{records.root}: the test split has no voices or no faces to evaluate")
    f_emb = fe.embed(face_embedder.to_float(f_imgs))
    real_spectra = picture.SpectrumSums()
    for start in range(0, len(f_imgs), 256):
        real_spectra.add(face_embedder.to_float(f_imgs[start : start + 256]))
    looks = {
        "checkerboard": picture.checkerboard(test_spectra, real_spectra),
        "frechet": picture.frechet_figures(test.emb, f_emb, f_labels),
    }
    speakers = _per_speaker(
        model, fe, np.concatenate(test_voices), test, (f_emb, f_labels, f_genders), gallery_size
    )

    # Train split: is the generated face recognisably the (seen) speaker?
    log("eval: identity accuracy on training voices")
    num_train_ids = records.num_train_ids
    quota = -(-max_train_voices // max(1, num_train_ids)) if max_train_voices > 0 else None
    train = _generated_embeddings(records, "train", embed, quota)
    tr_labels = train.labels

    def score(t_emb, tr_emb) -> tuple[dict, dict]:
        """The figures of faces drawn for the test voices (`t_emb`) and the training voices
        (`tr_emb`), and what they were computed on: the model's, and every baseline's, on the
        same voices and faces."""
        m_all = metrics.matching_1v2(t_emb, t_labels, f_emb, f_labels)
        m_gender = metrics.matching_1v2(
            t_emb, t_labels, f_emb, f_labels, t_genders, f_genders, same_gender=True
        )
        recall = metrics.retrieval_recall(t_emb, t_labels, f_emb, f_labels, gallery_size)
        ident = metrics.identity_accuracy(fe.logits(tr_emb), tr_labels)
        gender = metrics.attribute_agreement(t_emb, t_genders, t_labels, gender_reader)
        return {
            "matching_1v2": m_all["accuracy"],
            "matching_1v2_gender": m_gender["accuracy"],
            **{f"recall_at_{k}": recall[f"recall_at_{k}"] for k in metrics.RECALL_KS},
            "id_top1": ident["top1"],
            "id_top5": ident["top5"],
            "gender_from_face": gender["accuracy"],
            "stderr": {
                "matching_1v2": m_all["stderr"],
                "matching_1v2_gender": m_gender["stderr"],
                "gender_from_face": gender["stderr"],
            },
            "per_utterance": {
                "matching_1v2": m_all["accuracy_per_utterance"],
                "matching_1v2_gender": m_gender["accuracy_per_utterance"],
            },
        }, {
            "matching_voices": m_all["voices"],
            "matching_gender_voices": m_gender["voices"],
            "matching_gender_identities": m_gender["identities"],
            "gallery_size": recall["gallery_size"],
            "gender_voices": gender["voices"],
            "gender_chance": gender["chance"],
        }

    figures, counts = score(test.emb, train.emb)
    baseline_results = {}
    if baseline:
        start = time.perf_counter()
        nearest = _nearest_identity_baseline(fe, test, train, face_means, score)
        # Reading the training faces counts: a cached face embedder does not need them.
        baseline_seconds += time.perf_counter() - start
        if nearest is None:
            log(
                "eval: no training identity has both voices and faces: no nearest-identity baseline"
            )
        else:
            nearest["seconds"] = round(baseline_seconds, 2)
            baseline_results[baselines.NEAREST_IDENTITY] = nearest
            log(
                "eval: nearest-identity baseline: 1:2 matching "
                f"{100 * nearest['matching_1v2']:.1f}% (model {100 * figures['matching_1v2']:.1f}%)"
                f", {baseline_seconds:.1f} s"
            )

    names = {v["label"]: k for k, v in records.identities("test").items()}
    real_gender = metrics.attribute_agreement(f_emb, f_genders, f_labels, gender_reader)
    result = {
        **{k: figures[k] for k in metrics.METRICS},
        "gender_from_face": figures["gender_from_face"],
        "gender_reader_on_real_test_faces": real_gender["accuracy"],
        "real_photo": metrics.real_photo_matching(f_emb, f_labels, f_genders),
        "per_speaker": speakers,
        "picture": looks,
        "chance": {
            "gender_from_face": counts.pop("gender_chance"),
            "matching_1v2": metrics.CHANCE_1V2,
            "matching_1v2_gender": metrics.CHANCE_1V2,
            **{
                f"recall_at_{k}": min(1.0, k / max(1, counts["gallery_size"]))
                for k in metrics.RECALL_KS
            },
            "id_top1": min(1.0, 1 / num_train_ids),
            "id_top5": min(1.0, 5 / num_train_ids),
        },
        "counts": {
            "test_identities": int(np.unique(t_labels).size),
            "test_voices": int(len(t_labels)),
            "test_faces": int(len(f_imgs)),
            **counts,
            "train_identities": num_train_ids,
            "train_voices": int(len(tr_labels)),
        },
        "stderr": figures["stderr"],
        "per_utterance": figures["per_utterance"],
        "baselines": baseline_results,
        "model": {
            "source": model.source,
            "frontend": model.frontend_name,
            "arch": model.config.model.arch,
        },
        "records": {
            "dir": records.root,
            "manifest_sha256": records.manifest_sha256,
        },
        "face_embedder": {
            "file": os.path.basename(fe_path),
            "steps": fe.settings["steps"],
            **fe.info,
        },
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    grid = report.picture(test.faces, f_imgs, f_labels, names)
    # The three together or none: a full disk leaves the previous report whole.
    files.write_all(
        {
            os.path.join(out_dir, "eval.png"): images.encode_png(grid),
            os.path.join(out_dir, "eval.json"): (
                json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n"
            ).encode(),
            os.path.join(out_dir, "eval.md"): report.report_markdown(result).encode(),
        }
    )
    return result


MIN_TEST_IDENTITIES = 2  # 1:2 matching sets a speaker's face against another's


def check_evaluable(records: manifest_lib.Records) -> None:
    """Refuses records that cannot be scored, before anything is trained or written: no test
    split, fewer than `MIN_TEST_IDENTITIES` test identities with both voices and faces (1:2
    matching and retrieval would be `nan`), or no training face (the face embedder learns
    from them).

    Raises:
      ValueError: naming the manifest and the reason.
    """
    where = records.manifest_path
    if not records.has_split("test"):
        raise ValueError(
            f"{where}: no test split to evaluate on (records prepared without held-out "
            "people); prepare records with test identities (`v2f prepare` holds out names A-E, "
            "or follows the Set column with --split meta)"
        )
    usable = [
        name
        for name, info in records.identities("test").items()
        if info.get("voices", 0) > 0 and info.get("faces", 0) > 0
    ]
    if len(usable) < MIN_TEST_IDENTITIES:
        raise ValueError(
            f"{where}: {len(usable)} test identit{'y' if len(usable) == 1 else 'ies'} with both "
            f"voices and faces; evaluation needs at least {MIN_TEST_IDENTITIES} (1:2 matching "
            "sets each speaker's face against another's): prepare records with more test people"
        )
    if not records.split("train")["num_faces"]:
        raise ValueError(f"{where}: no training faces for the face embedder to learn from")


def json_safe(tree):
    """`tree` with NaN and infinities as None (`null`): a figure with nothing to measure (no
    same-gender impostor, say) stays valid JSON; bare `NaN` is not JSON."""
    if isinstance(tree, dict):
        return {k: json_safe(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [json_safe(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree
