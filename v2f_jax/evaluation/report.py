"""The report of `v2f eval`: `eval.md` (the figures against chance) and its picture."""

from __future__ import annotations

import math

import numpy as np

from v2f_jax.evaluation.metrics import RECALL_KS
from v2f_jax.inference import images

_PICTURE_IDS = 8


def picture(
    gen_faces: dict[int, list[np.ndarray]],
    real_faces: np.ndarray,
    real_labels: np.ndarray,
    names: dict[int, str],
) -> np.ndarray:
    """`eval.png`: columns are test identities (up to 8); rows are faces generated from two of
    their voices, then a real face captioned with the name.

    Args:
      gen_faces: label -> generated faces float `[64, 64, 3]` in [-1, 1] of its first utterances.
      real_faces: uint8 `[F, 64, 64, 3]`; real_labels: `[F]`.
      names: label -> identity name.

    Returns:
      uint8 RGB `[H, W, 3]`.
    """
    ids = [i for i in sorted(gen_faces) if np.any(real_labels == i)][:_PICTURE_IDS]
    rows = [[], [], []]
    captions = [[], [], []]
    for i in ids:
        gen = gen_faces[i]
        rows[0].append(images.to_uint8(gen[0]))
        rows[1].append(images.to_uint8(gen[min(1, len(gen) - 1)]))
        rows[2].append(real_faces[np.flatnonzero(real_labels == i)[0]])
        captions[0].append("")
        captions[1].append("")
        captions[2].append(names.get(int(i), str(i)).replace("_", " "))
    grid = np.stack(rows[0] + rows[1] + rows[2])
    return images.contact_sheet(grid, sum(captions, []), cols=len(ids))


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _pm(stderr) -> str:
    return "" if stderr is None or math.isnan(stderr) else f" ± {100 * stderr:.1f}"


def report_markdown(r: dict) -> str:
    """`eval.md`: the figures against chance, what they were computed on, and the picture.

    Args:
      r: the `eval.json` dict (`evaluate.evaluate`'s result).
    """
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
