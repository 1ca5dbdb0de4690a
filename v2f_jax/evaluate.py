"""`v2f eval`: how well generated faces match their speakers, on identities never seen in training.

Every face (generated or real) is embedded by a separate face embedder trained on the TRAIN
split's real faces only (`face_embedder.py`); scores are cosine similarities of its unit
embeddings. Faces generated from TEST voices are scored against TEST faces:

- `matching_1v2` (Wen et al. 2019): a generated face, a real face of its speaker and a real face
  of another identity; correct when the speaker's face is closer. Computed exactly, as the
  expectation over every (true face, impostor face) pair with the impostor identity uniform and
  its face uniform (ties count half), not by sampling. `matching_1v2_gender` draws impostors of
  the speaker's gender only.
- `recall_at_{1,5,10}` (SF2F): each identity's gallery embedding is the (renormalised) mean of
  its faces; a generated face ranks a gallery of N identities, its own and N - 1 others. The
  probability that its own is in the top K is exact over every choice of the N - 1 others
  (hypergeometric), so again nothing is sampled. N is `config.eval.gallery_size` (<= 0: all).
- `id_top1`, `id_top5`: faces generated from TRAIN voices, classified over the training
  identities by the face embedder's classifier.

Each figure is averaged per identity (over its utterances, then over identities), so an identity
with many utterances weighs no more than one with few, and a generator that draws one face for
every voice scores exactly 50% on 1:2 matching.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from v2f_jax import export, face_embedder
from v2f_jax import generate as generate_lib

CHANCE_1V2 = 0.5
RECALL_KS = (1, 5, 10)


# --------------------------------------------------------------------------------- the metrics


# The headline figures of eval.json (fractions in [0, 1]), for scripts.
METRICS = (
    "matching_1v2",
    "matching_1v2_gender",
    "recall_at_1",
    "recall_at_5",
    "recall_at_10",
    "id_top1",
    "id_top5",
)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _per_identity_mean(values: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Mean over identities of each identity's mean; and the number of identities."""
    if values.size == 0:
        return float("nan"), 0
    ids = np.unique(labels)
    return float(np.mean([values[labels == i].mean() for i in ids])), int(ids.size)


def _per_identity_stderr(values: np.ndarray, labels: np.ndarray) -> float:
    """Standard error of `_per_identity_mean` over identities (how far chance may wander)."""
    ids = np.unique(labels)
    if ids.size < 2:
        return float("nan")
    means = np.array([values[labels == i].mean() for i in ids])
    return float(means.std(ddof=1) / np.sqrt(ids.size))


def _weighted_win_rate(s_true, w_true, s_imp, w_imp) -> float:
    """sum_{t,i} w_t w_i (1[s_t > s_i] + 0.5 * 1[s_t == s_i]) / (sum w_t * sum w_i)."""
    order = np.argsort(s_imp, kind="stable")
    s_sorted, w_sorted = s_imp[order], w_imp[order]
    cum = np.concatenate([[0.0], np.cumsum(w_sorted)])
    below = cum[np.searchsorted(s_sorted, s_true, side="left")]
    upto = cum[np.searchsorted(s_sorted, s_true, side="right")]
    wins = below + 0.5 * (upto - below)
    return float(np.clip(np.sum(w_true * wins) / (np.sum(w_true) * cum[-1]), 0.0, 1.0))


def matching_1v2(
    gen_emb: np.ndarray,
    gen_labels: np.ndarray,
    face_emb: np.ndarray,
    face_labels: np.ndarray,
    gen_genders: np.ndarray | None = None,
    face_genders: np.ndarray | None = None,
    same_gender: bool = False,
) -> dict:
    """1:2 matching accuracy of generated faces against real ones (cosine).

    Args:
      gen_emb: `[V, D]` embeddings of the faces generated from V voices; gen_labels `[V]`.
      face_emb: `[F, D]` embeddings of real faces; face_labels `[F]`.
      gen_genders, face_genders: `[V]`, `[F]` (0 male, 1 female, -1 unknown); needed for
        `same_gender`, where impostors share the speaker's gender.

    Returns:
      `{"accuracy": per-identity mean, "stderr": its standard error over identities,
      "accuracy_per_utterance", "voices", "identities", "skipped_voices"}`; a voice is skipped
      when it has no real face of its own identity or no impostor (or, with same_gender, no
      known gender).
    """
    gen_emb, face_emb = _unit(gen_emb), _unit(face_emb)
    gen_labels, face_labels = np.asarray(gen_labels), np.asarray(face_labels)
    if same_gender and (gen_genders is None or face_genders is None):
        raise ValueError("same_gender needs the genders of voices and faces")
    # Each identity's faces weigh 1 in total: the impostor identity is uniform, then its face.
    ids, counts = np.unique(face_labels, return_counts=True)
    weight = 1.0 / counts[np.searchsorted(ids, face_labels)]
    sims = gen_emb @ face_emb.T
    scores, kept = [], []
    for v in range(gen_emb.shape[0]):
        own = face_labels == gen_labels[v]
        imp = ~own
        if same_gender:
            g = gen_genders[v]
            imp &= (face_genders == g) & (g >= 0)
        if not own.any() or not imp.any():
            continue
        scores.append(_weighted_win_rate(sims[v, own], weight[own], sims[v, imp], weight[imp]))
        kept.append(v)
    scores, kept = np.asarray(scores), np.asarray(kept, int)
    kept_labels = gen_labels[kept] if kept.size else kept
    acc, n_ids = _per_identity_mean(scores, kept_labels)
    return {
        "accuracy": acc,
        "stderr": _per_identity_stderr(scores, kept_labels) if kept.size else float("nan"),
        "accuracy_per_utterance": float(scores.mean()) if scores.size else float("nan"),
        "voices": int(kept.size),
        "identities": n_ids,
        "skipped_voices": int(gen_emb.shape[0] - kept.size),
    }


def identity_gallery(
    face_emb: np.ndarray, face_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """SF2F's gallery: per identity the renormalised mean of its unit face embeddings."""
    face_emb, face_labels = _unit(face_emb), np.asarray(face_labels)
    ids = np.unique(face_labels)
    return ids, _unit(np.stack([face_emb[face_labels == i].mean(0) for i in ids]))


def _p_in_top_k(n_better: int, n_others: int, draws: int, k: int) -> float:
    """P(fewer than k of `draws` others, drawn without replacement from `n_others` of which
    `n_better` outscore the true identity, are better) = P(true identity in the top k)."""
    total = math.comb(n_others, draws)
    hits = sum(
        math.comb(n_better, x) * math.comb(n_others - n_better, draws - x)
        for x in range(min(k, draws + 1, n_better + 1))
    )
    return hits / total


def retrieval_recall(
    gen_emb: np.ndarray,
    gen_labels: np.ndarray,
    face_emb: np.ndarray,
    face_labels: np.ndarray,
    gallery_size: int = 0,
    ks: Sequence[int] = RECALL_KS,
) -> dict:
    """Recall@k of each generated face over galleries of `gallery_size` identities (SF2F).

    The expectation over every gallery that holds the true identity and `gallery_size - 1` others
    of the test identities; `gallery_size <= 0` or more than there are: all test identities.

    Returns:
      `{"recall_at_<k>": per-identity mean, ..., "gallery_size": N used, "voices", "identities"}`.
    """
    ids, gallery = identity_gallery(face_emb, face_labels)
    gen_labels = np.asarray(gen_labels)
    n_ids = ids.size
    size = n_ids if gallery_size <= 0 else min(int(gallery_size), n_ids)
    keep = np.isin(gen_labels, ids)
    sims = _unit(gen_emb[keep]) @ gallery.T
    labels = gen_labels[keep]
    true_sim = sims[np.arange(len(labels)), np.searchsorted(ids, labels)]
    n_better = np.sum(sims > true_sim[:, None], axis=1)
    cache: dict[tuple[int, int], float] = {}
    out = {"gallery_size": int(size), "voices": int(keep.sum())}
    for k in ks:
        p = np.array(
            [
                cache.setdefault((int(b), k), _p_in_top_k(int(b), n_ids - 1, size - 1, k))
                for b in n_better
            ]
        )
        out[f"recall_at_{k}"], out["identities"] = _per_identity_mean(p, labels)
    return out


def identity_accuracy(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict:
    """Top-k accuracy of identity logits `[N, K]`, per-identity mean. Keys `top<k>`."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    true = logits[np.arange(len(labels)), labels]
    rank = np.sum(logits > true[:, None], axis=1)  # 0 = best
    out = {"voices": int(len(labels))}
    for k in ks:
        out[f"top{k}"], out["identities"] = _per_identity_mean((rank < k).astype(float), labels)
    return out


# ------------------------------------------------------------------------------- the pipeline


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _generated_embeddings(
    records_dir,
    split: str,
    embed: Callable,
    per_identity: int | None = None,
    keep_faces: int = 0,
    chunk: int = 256,
):
    """Streams a split's utterances through E, G and the face embedder, `chunk` at a time, so
    memory holds embeddings, not log-mels.

    Args:
      embed: `list of [T, 64] log-mels -> (faces [N, 64, 64, 3], face embeddings [N, D])`.
      per_identity: use at most this many utterances of each identity (the first ones).
      keep_faces: keep the generated faces of each identity's first `keep_faces` utterances.

    Returns:
      `(embeddings [N, D], labels [N], genders [N], {label: [faces]})`.
    """
    from input_pipeline import reader  # noqa: PLC0415

    mels, labels, genders, embs = [], [], [], []
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

    for mel, label, gender in reader.make_eval_voices(records_dir, split):
        if per_identity is not None and counts[label] >= per_identity:
            continue
        counts[label] += 1
        mels.append(mel)
        labels.append(label)
        genders.append(gender)
        if len(mels) == chunk:
            flush()
    flush()
    emb = np.concatenate(embs) if embs else np.zeros([0, 0], np.float32)
    return emb, np.asarray(labels, np.int64), np.asarray(genders, np.int64), dict(kept)


def evaluate(
    model: export.Model,
    records_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    face_embedder_steps: int | None = None,
    gallery_size: int | None = None,
    max_train_voices: int = 2000,
    face_embedder_path: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Scores `model` on the records' TEST split (and TRAIN voices for identity accuracy).

    Writes `eval.json`, `eval.md`, `eval.png` (generated vs real faces of test identities) and
    `face_embedder.safetensors` into `out_dir`.

    Args:
      model: E and G (`export.load_any`).
      records_dir: a `v2f prepare` output.
      out_dir: created if missing.
      face_embedder_steps: default `model.config.eval.face_embedder_steps`.
      gallery_size: default `model.config.eval.gallery_size`.
      max_train_voices: about this many TRAIN utterances (the first of each identity, the same
        number of each) are generated for identity accuracy; <= 0: all.
      face_embedder_path: score with this embedder file instead of the cached/trained one (it
        must have been trained on these records' TRAIN identities for `id_top*`).

    Returns:
      The `eval.json` dict.

    Raises:
      generate.FrontendMismatchError: the records' features come from another front end.
    """
    from input_pipeline import reader  # noqa: PLC0415

    records_dir, out_dir = os.fspath(records_dir), os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    manifest = reader.read_manifest(records_dir)
    records_frontend = (manifest.get("frontend") or {}).get("name")
    if records_frontend is not None and records_frontend != model.frontend_name:
        raise generate_lib.FrontendMismatchError(
            f"the records in {records_dir} hold '{records_frontend}' features, the model was "
            f"trained on '{model.frontend_name}' ones; evaluate on records prepared with "
            f"--frontend {model.frontend_name}"
        )
    eval_cfg = model.config.get("eval", {})
    steps = int(
        face_embedder_steps
        if face_embedder_steps is not None
        else eval_cfg.get("face_embedder_steps", 2000)
    )
    gallery_size = int(
        gallery_size if gallery_size is not None else eval_cfg.get("gallery_size", 0)
    )

    if face_embedder_path is not None:
        fe, fe_path = face_embedder.load(face_embedder_path), os.fspath(face_embedder_path)
        fe_copy = os.path.join(out_dir, "face_embedder.safetensors")
        if os.path.abspath(fe_copy) != os.path.abspath(fe_path):
            face_embedder.save(fe, fe_copy)
        fe_path = fe_copy
    else:
        fe, fe_path = face_embedder.get_or_train(records_dir, steps, out_dir, log=log)

    embed_fn, generate_fn = generate_lib.make_embed_fn(model), generate_lib.make_generate_fn(model)

    def embed(mels):
        faces = generate_lib.generate_faces(
            model,
            generate_lib.embed_voices(model, mels, embed_fn=embed_fn),
            generate_fn=generate_fn,
        )
        return faces, fe.embed(np.clip(faces, -1.0, 1.0))

    # Test split: generated faces of unseen speakers against their real faces.
    log("eval: test split")
    t_emb, t_labels, t_genders, t_faces = _generated_embeddings(
        records_dir, "test", embed, keep_faces=2
    )
    f_imgs, f_labels, f_genders = reader.load_faces(records_dir, "test")
    if not len(t_labels) or not len(f_imgs):
        raise ValueError(f"{records_dir}: the test split has no voices or no faces to evaluate")
    f_emb = fe.embed(face_embedder.to_float(f_imgs))
    m_all = matching_1v2(t_emb, t_labels, f_emb, f_labels)
    m_gender = matching_1v2(
        t_emb, t_labels, f_emb, f_labels, t_genders, f_genders, same_gender=True
    )
    recall = retrieval_recall(t_emb, t_labels, f_emb, f_labels, gallery_size)

    # Train split: is the generated face recognisably the (seen) speaker?
    log("eval: identity accuracy on training voices")
    num_train_ids = int(manifest["splits"]["train"]["num_identities"])
    quota = -(-max_train_voices // max(1, num_train_ids)) if max_train_voices > 0 else None
    tr_emb, tr_labels, _, _ = _generated_embeddings(records_dir, "train", embed, quota)
    ident = identity_accuracy(fe.logits(tr_emb), tr_labels)

    names = {v["label"]: k for k, v in manifest["splits"]["test"]["identities"].items()}
    result = {
        "matching_1v2": m_all["accuracy"],
        "matching_1v2_gender": m_gender["accuracy"],
        **{f"recall_at_{k}": recall[f"recall_at_{k}"] for k in RECALL_KS},
        "id_top1": ident["top1"],
        "id_top5": ident["top5"],
        "chance": {
            "matching_1v2": CHANCE_1V2,
            "matching_1v2_gender": CHANCE_1V2,
            **{f"recall_at_{k}": min(1.0, k / max(1, recall["gallery_size"])) for k in RECALL_KS},
            "id_top1": min(1.0, 1 / num_train_ids),
            "id_top5": min(1.0, 5 / num_train_ids),
        },
        "counts": {
            "test_identities": int(np.unique(t_labels).size),
            "test_voices": int(len(t_labels)),
            "test_faces": int(len(f_imgs)),
            "matching_voices": m_all["voices"],
            "matching_gender_voices": m_gender["voices"],
            "matching_gender_identities": m_gender["identities"],
            "gallery_size": recall["gallery_size"],
            "train_identities": num_train_ids,
            "train_voices": int(len(tr_labels)),
        },
        "stderr": {
            "matching_1v2": m_all["stderr"],
            "matching_1v2_gender": m_gender["stderr"],
        },
        "per_utterance": {
            "matching_1v2": m_all["accuracy_per_utterance"],
            "matching_1v2_gender": m_gender["accuracy_per_utterance"],
        },
        "model": {
            "source": model.source,
            "frontend": model.frontend_name,
            "arch": model.config.model.arch,
        },
        "records": {
            "dir": os.path.abspath(records_dir),
            "manifest_sha256": _sha256(os.path.join(records_dir, "manifest.json")),
        },
        "face_embedder": {
            "file": os.path.basename(fe_path),
            "steps": fe.settings["steps"],
            **fe.info,
        },
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    picture = os.path.join(out_dir, "eval.png")
    generate_lib.write_png(picture, _picture(t_faces, f_imgs, f_labels, names))
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "eval.md"), "w") as f:
        f.write(report_markdown(result))
    return result


def _picture(gen_faces: dict, real_faces, real_labels, names, n_ids: int = 8) -> np.ndarray:
    """Columns: test identities. Rows: faces generated from two of their voices, a real face.

    `gen_faces`: label -> generated faces (float, [-1, 1]) of its first utterances.
    """
    ids = [i for i in sorted(gen_faces) if np.any(real_labels == i)][:n_ids]
    rows = [[], [], []]
    captions = [[], [], []]
    for i in ids:
        gen = gen_faces[i]
        rows[0].append(generate_lib.to_uint8(gen[0]))
        rows[1].append(generate_lib.to_uint8(gen[min(1, len(gen) - 1)]))
        rows[2].append(real_faces[np.flatnonzero(real_labels == i)[0]])
        captions[0].append("")
        captions[1].append("")
        captions[2].append(names.get(int(i), str(i)).replace("_", " "))
    images = np.stack(rows[0] + rows[1] + rows[2])
    return generate_lib.contact_sheet(images, sum(captions, []), cols=len(ids))


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _pm(stderr) -> str:
    return "" if stderr is None or math.isnan(stderr) else f" ± {100 * stderr:.1f}"


def report_markdown(r: dict) -> str:
    """`eval.md`: the figures against chance, what they were computed on, and the picture."""
    c, ch, stderr = r["counts"], r["chance"], r.get("stderr", {})
    g = c["gallery_size"]
    src = r["model"]["source"]
    where = src.get("workdir") or src.get("torch_generator") or src.get("file") or "model"
    step = f", step {src['step']}" if "step" in src else ""
    fe = r["face_embedder"]
    rows = [
        (
            "1:2 matching",
            "matching_1v2",
            f"{c['matching_voices']} voices of {c['test_identities']} identities",
        ),
        (
            "1:2 matching, same-gender impostor",
            "matching_1v2_gender",
            f"{c['matching_gender_voices']} voices of {c['matching_gender_identities']} identities",
        ),
        *[
            (
                f"retrieval recall@{k}" + (" (trivial: gallery <= k)" if g <= k else ""),
                f"recall_at_{k}",
                f"gallery of {g} test identities",
            )
            for k in RECALL_KS
        ],
        (
            "identity top-1 (training identities)",
            "id_top1",
            f"{c['train_voices']} voices of {c['train_identities']} identities",
        ),
        ("identity top-5 (training identities)", "id_top5", ""),
    ]
    lines = [
        "# v2f eval",
        "",
        f"Model: `{where}`{step}, {r['model']['arch']}, front end `{r['model']['frontend']}`.  ",
        f"Records: `{r['records']['dir']}` "
        f"(manifest sha256 `{r['records']['manifest_sha256'][:12]}`).  ",
        f"Test split (identities never seen in training): {c['test_identities']} identities, "
        f"{c['test_voices']} voices, {c['test_faces']} faces.",
        "",
        "| metric | value | chance | on |",
        "|---|---:|---:|---|",
        *[
            f"| {name} | {_pct(r[key])}{_pm(stderr.get(key))} | {_pct(ch[key])} | {on} |"
            for name, key, on in rows
        ],
        "",
        "Scores are cosine similarities of a face embedder trained on the training split's real "
        f"faces only (`{fe['file']}`, {fe['steps']} steps, top-1 {_pct(fe.get('train_top1'))} on "
        "its training faces), never the GAN's critics. Each figure is a mean over identities of "
        "the mean over their utterances (± one standard error over identities). 1:2 matching and "
        "recall are exact expectations over all impostor faces / galleries, not samples.",
        "",
        "![generated and real faces](eval.png)",
        "",
        "Columns: test identities. Rows 1-2: faces generated from two of their voices; row 3: a "
        "real face.",
        "",
    ]
    return "\n".join(lines)
