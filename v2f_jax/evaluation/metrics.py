"""The metrics of `v2f eval`, on face embeddings; pure numpy.

Scores are cosine similarities of unit embeddings. Faces generated from TEST voices are scored
against TEST faces:

- `matching_1v2` (Wen et al. 2019): a generated face, a real face of its speaker and a real face
  of another identity; correct when the speaker's face is closer. Computed exactly, as the
  expectation over every (true face, impostor face) pair with the impostor identity uniform and
  its face uniform (ties count half), not by sampling. `matching_1v2_gender` draws impostors of
  the speaker's gender only.
- `recall_at_{1,5,10}` (SF2F): each identity's gallery embedding is the (renormalised) mean of
  its faces; a generated face ranks a gallery of N identities, its own and N - 1 others. The
  probability that its own is in the top K is exact over every choice of the N - 1 others
  (hypergeometric), so again nothing is sampled.
- `id_top1`, `id_top5`: top-k accuracy of identity logits (faces generated from TRAIN voices,
  classified over the training identities).
- `real_photo_matching`: 1:2 matching with a real photo of the speaker in place of the
  generated face: what the scorer can give at best, so a report says how much of the gap to 100%
  is the generator's and how much the scorer's.
- `gender_from_face`: the gender a reader sees in the generated face is the speaker's. The reader
  is a linear probe on the scorer's embedding, fitted to the training identities' real faces
  (`attribute_reader`). Chance is what one face drawn for every voice scores: the larger
  gender's share of the test identities.

Each figure is averaged per identity (over its utterances, then over identities), so an identity
with many utterances weighs no more than one with few, and a generator that draws one face for
every voice scores exactly 50% on 1:2 matching.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from v2f_jax import models

CHANCE_1V2 = 0.5
RECALL_KS = (1, 5, 10)

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
    gen_emb, face_emb = models.unit(np.asarray(gen_emb)), models.unit(np.asarray(face_emb))
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


def real_photo_matching(
    face_emb: np.ndarray, face_labels: np.ndarray, face_genders: np.ndarray
) -> dict:
    """1:2 matching (both impostor rules) of each identity's first real face, as the probe,
    against the rest of the real faces: the scorer's ceiling for `matching_1v2`.

    Args:
      face_emb: `[F, D]` real faces' embeddings; face_labels, face_genders `[F]`.

    Returns:
      `{"matching_1v2", "matching_1v2_gender", "stderr": {both}, "probes"}`; an identity with
      one face has no photo left to match and is left out.
    """
    face_labels, face_genders = np.asarray(face_labels), np.asarray(face_genders)
    probe = np.zeros(len(face_labels), bool)
    probe[np.unique(face_labels, return_index=True)[1]] = True
    args = (face_emb[probe], face_labels[probe], face_emb[~probe], face_labels[~probe])
    genders = (face_genders[probe], face_genders[~probe])
    m_all = matching_1v2(*args)
    m_gender = matching_1v2(*args, *genders, same_gender=True)
    return {
        "matching_1v2": m_all["accuracy"],
        "matching_1v2_gender": m_gender["accuracy"],
        "stderr": {"matching_1v2": m_all["stderr"], "matching_1v2_gender": m_gender["stderr"]},
        "probes": m_all["voices"],
    }


# The probe's ridge penalty (with faces weighted to a mean weight of 1): small enough to fit a
# 64-dim embedding from ~100 identities, large enough to keep the solve well-posed.
PROBE_RIDGE = 0.1


def attribute_reader(
    face_emb: np.ndarray, face_labels: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """A linear probe reading a face attribute (e.g. gender) from real faces' embeddings.

    Ridge regression of the classes' one-hot codes (+-1) on the unit embeddings and a bias,
    each identity's faces weighing as much in total as any other's: a least-squares linear
    discriminant, which can use directions that a nearest-mean rule blurs with identity.

    Args:
      face_emb: `[F, D]` embeddings of real faces; face_labels `[F]` their identities.
      values: `[F]` the attribute of each face, integers; < 0 unknown (left out).

    Returns:
      `(classes [C], weights [D + 1, C])` for `read_attribute`; None if fewer than two classes
      are known.
    """
    values = np.asarray(values)
    known = values >= 0
    classes = np.unique(values[known])
    if classes.size < 2:
        return None
    x = _with_bias(np.asarray(face_emb)[known])
    labels = np.asarray(face_labels)[known]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weight = 1.0 / counts[inverse]
    weight *= weight.size / weight.sum()
    targets = 2.0 * (values[known][:, None] == classes[None, :]) - 1.0
    gram = (x * weight[:, None]).T @ x + PROBE_RIDGE * np.eye(x.shape[1])
    return classes, np.linalg.solve(gram, (x * weight[:, None]).T @ targets)


def _with_bias(emb: np.ndarray) -> np.ndarray:
    """`[N, D + 1]`: unit embeddings and a constant 1."""
    unit = models.unit(np.asarray(emb, np.float64))
    return np.hstack([unit, np.ones((unit.shape[0], 1))])


def read_attribute(emb: np.ndarray, reader: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """`[N]` the class `attribute_reader`'s probe scores highest for each embedding."""
    classes, weights = reader
    return classes[np.argmax(_with_bias(emb) @ weights, axis=1)]


def attribute_agreement(
    emb: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    reader: tuple[np.ndarray, np.ndarray] | None,
) -> dict:
    """How often the attribute read from faces (`read_attribute`) is the known one.

    Args:
      emb: `[N]` face embeddings (generated or real); values `[N]` the true attribute (< 0
        unknown: left out); labels `[N]` identities, for the per-identity mean.

    Returns:
      `{"accuracy", "stderr", "voices" (faces scored), "chance"}`: per-identity mean of the
      agreement; chance the larger class's share of the scored identities. NaN where there is
      no reader or nothing to score.
    """
    values, labels = np.asarray(values), np.asarray(labels)
    known = values >= 0
    if reader is None or not known.any():
        nan = float("nan")
        return {"accuracy": nan, "stderr": nan, "voices": 0, "chance": nan}
    right = (read_attribute(np.asarray(emb)[known], reader) == values[known]).astype(float)
    acc, _ = _per_identity_mean(right, labels[known])
    ids, first = np.unique(labels[known], return_index=True)
    shares = np.unique(values[known][first], return_counts=True)[1] / ids.size
    return {
        "accuracy": acc,
        "stderr": _per_identity_stderr(right, labels[known]),
        "voices": int(known.sum()),
        "chance": float(shares.max()),
    }


def identity_gallery(
    face_emb: np.ndarray, face_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """SF2F's gallery: per identity the renormalised mean of its unit face embeddings."""
    face_emb, face_labels = models.unit(np.asarray(face_emb)), np.asarray(face_labels)
    ids = np.unique(face_labels)
    return ids, models.unit(np.stack([face_emb[face_labels == i].mean(0) for i in ids]))


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
    sims = models.unit(np.asarray(gen_emb[keep])) @ gallery.T
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
