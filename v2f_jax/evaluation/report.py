"""The report of `v2f eval`: `eval.md` (the figures beside a baseline and chance), its picture."""

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
    """`eval.md`: the figures against the nearest-identity baseline (when `r` has it) and chance,
    what they were computed on, and the picture.

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
    if "gender_from_face" in r:
        rows.append(
            (
                "gender read from the face is the speaker's",
                "gender_from_face",
                f"{c.get('gender_voices', 0)} voices; the reader is right on "
                f"{_pct(r.get('gender_reader_on_real_test_faces'))} of real test faces",
            )
        )
    nearest = r.get("baselines", {}).get("nearest_identity")

    def cells(key: str) -> str:
        model = f"{_pct(r[key])}{_pm(stderr.get(key))}"
        if nearest is None:
            return f"{model} | {_pct(ch[key])}"
        base = f"{_pct(nearest.get(key))}{_pm(nearest.get('stderr', {}).get(key))}"
        return f"{model} | {base} | {_pct(ch[key])}"

    header = ["| metric | value | chance | on |", "|---|---:|---:|---|"]
    about_baseline = []
    if nearest is not None:
        header = [
            "| metric | model | nearest-identity baseline | chance | on |",
            "|---|---:|---:|---:|---|",
        ]
        nc = nearest.get("counts", {})
        about_baseline = [
            "",
            "The nearest-identity baseline has no generator: "
            f"{nearest.get('definition', 'the nearest training identity of each voice')}. "
            "It is scored on the same voices and faces by the same scorer; a model that does "
            "not beat it has learnt no more than a lookup of the most similar-sounding person "
            f"seen in training. It drew {nc.get('identities_drawn_for_test_voices', '?')} "
            f"distinct faces for the test voices, from {nc.get('candidate_identities', '?')} "
            "training identities. Its identity accuracy is a lookup of voices it has seen (a "
            "training voice's nearest identity is its own for "
            f"{_pct(nc.get('train_voices_nearest_own'))} of them), so only the test-split rows "
            "compare it with the model fairly.",
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
        *header,
        *[f"| {name} | {cells(key)} | {on} |" for name, key, on in rows],
        *_per_speaker_rows(r.get("per_speaker"), ch, nearest is not None),
        "",
        "Scores are cosine similarities of a face embedder trained on the training split's real "
        f"faces only (`{fe['file']}`, {fe['steps']} steps, top-1 {_pct(fe.get('train_top1'))} on "
        "its training faces), never the GAN's critics. Each figure is a mean over identities of "
        "the mean over their utterances (± one standard error over identities). 1:2 matching and "
        "recall are exact expectations over all impostor faces / galleries, not samples. The "
        "gender reader is a linear probe on the scorer's embedding (ridge regression), fitted "
        "to the training identities' real faces; its chance is the larger gender's share of the "
        "test identities (what one face for every voice scores).",
        *_about_real_photo(r.get("real_photo")),
        *_about_per_speaker(r.get("per_speaker")),
        *_picture_table(r.get("picture")),
        *about_baseline,
        "",
        "![generated and real faces](eval.png)",
        "",
        "Columns: test identities. Rows 1-2: faces generated from two of their voices; row 3: a "
        "real face.",
        "",
    ]
    return "\n".join(lines)


def _per_speaker_rows(ps: dict | None, chance: dict, has_baseline: bool) -> list[str]:
    """The table's rows for one face per speaker (reports older than them have none)."""
    if not ps:
        return []
    err = ps.get("stderr", {})
    on = f"{ps['speakers']} speakers, each from its voices"
    rows = [
        ("1:2 matching, one face per speaker", "matching_1v2", on),
        ("1:2 matching, same-gender impostor, one face per speaker", "matching_1v2_gender", on),
        ("retrieval recall@1, one face per speaker", "recall_at_1", ""),
    ]
    out = []
    for name, key, where in rows:
        model = f"{_pct(ps.get(key))}{_pm(err.get(key))}"
        base = " n/a |" if has_baseline else ""
        out.append(f"| {name} | {model} |{base} {_pct(chance[key])} | {where} |")
    return out


def _about_per_speaker(ps: dict | None) -> list[str]:
    if not ps:
        return []
    return [
        "",
        f"One face per speaker: each test speaker's face is drawn once from all of its "
        f"{ps['clips']} voices ({ps['speakers']} speakers; {ps.get('fusion', 'fused')}, as "
        "`v2f generate --per-speaker`), where the other rows score a face per voice.",
    ]


def _num(x, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _picture_table(p: dict | None) -> list[str]:
    """What the faces look like: the checkerboard measure and the Fréchet distance
    (`picture.py`), as a table of eval.md (reports older than them have none)."""
    if not p:
        return []
    cb, fd = p["checkerboard"], p["frechet"]
    return [
        "",
        "| what the faces look like | generated (test voices) | real test faces |",
        "|---|---:|---:|",
        f"| checkerboard: period-2 share of high-frequency energy | {_num(cb['generated'])} "
        f"(ratio {_num(cb['ratio'], 3)}) | {_num(cb['real'])} (ratio 1) |",
        f"| Fréchet distance to real test faces (scorer's embedding) | {_num(fd['generated'], 3)} "
        f"| {_num(fd['real_split'], 3)} (one half against the other) |",
        "",
        "Checkerboard: per colour channel, the energy of the faces' 2-D spectra (each face "
        "Hann-windowed, so that its borders do not count) at the three period-2 frequencies "
        "(rows, columns and diagonals alternating pixel by pixel) over their energy at every "
        "frequency of period 4 pixels or less, pooled over the faces and averaged over the "
        "channels; the ratio is the generated faces' figure over the real test faces' "
        "(1: as much pixel-scale checkerboard as photos have; a stride-2 transposed convolution "
        "draws more). Fréchet distance: between Gaussians fitted to the scorer's embeddings of "
        f"{fd['generated_faces']} generated faces and of {fd['reference_faces']} real test faces "
        f"(half of each identity's); beside it, {fd['split_faces']} faces of the other half "
        "against the same ones: the floor for faces as real as photos of the right people.",
    ]


def _about_real_photo(real: dict | None) -> list[str]:
    """The scorer's ceiling, as a paragraph of eval.md (reports older than it have none)."""
    if not real:
        return []
    err = real.get("stderr", {})
    return [
        "",
        "A real photo of the speaker in place of the generated face (each test identity's "
        f"first photo against its others, {real['probes']} probes) scores "
        f"{_pct(real['matching_1v2'])}{_pm(err.get('matching_1v2'))} on 1:2 matching and "
        f"{_pct(real['matching_1v2_gender'])}{_pm(err.get('matching_1v2_gender'))} against "
        "same-gender impostors: the most this scorer gives.",
    ]
