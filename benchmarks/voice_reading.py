"""What a pretrained voice embedder E hears of the face, on a `v2f demo` directory.

Without training a GAN, this asks how far faces drawn from E's embedding could get: a linear map
(ridge regression) from each training identity's mean unit embedding to its mean training face
gives a face for every held-out voice, scored as `v2f eval` scores (the demo's face embedder,
1:2 matching), and the mean face of the training speaker nearest in E's embedding (a lookup,
not a map). Beside them, the same map from what the synthetic corpus knows of each person
(`identities.json`: gender, age, vocal tract or body height, build or region, complexion), the
ceiling of a linear reader, and from chosen subsets of it; and how much of each attribute of a
held-out voice a ridge probe on E's embedding recovers (R^2, 1 = all, <= 0 = nothing).

    python benchmarks/voice_reading.py DEMO [--embedder DEMO/embedder] [--out reading.json]

DEMO is a `v2f demo --out DEMO` directory (corpus a or b); `--embedder` another E's workdir
(`v2f train --config configs/embedder.py:tiny ...`) to compare pretraining settings.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from v2f_jax import checkpointing, models
from v2f_jax.evaluation import baselines, face_embedder, metrics
from v2f_jax.inference import generate
from v2f_jax.input_pipeline import manifest, reader
from v2f_jax.training import coarse_face

# Attributes shared by voice and face, per corpus (identities.json keys; gender is added).
SHARED = {"a": ("age", "vtl_cm", "region"), "b": ("age", "vtl_cm", "build", "complexion")}


def ridge(x: np.ndarray, y: np.ndarray):
    """`x [N, D] -> prediction`: ridge regression of `y [N, ...]` on standardised `x`, with an
    unpenalised mean (`coarse_face.ridge_map`, the map G's coarse face is drawn by)."""
    kernel, bias = coarse_face.ridge_map(x, y.reshape(len(y), -1))
    return lambda q: (q @ kernel + bias).reshape((len(q),) + y.shape[1:])


def attributes(people: dict, names: dict, keys) -> tuple[np.ndarray, list[list[int]]]:
    """Per label (`names`: label -> id): female, then `keys`; a region one-hot. Returns the
    `[len(names), C]` matrix and, per attribute (female first), its column indices."""
    regions = sorted({p.get("region", "") for p in people.values()})
    rows = []
    for label in range(len(names)):
        p = people[names[label]]
        row = [float(p["gender"] == "f")]
        for key in keys:
            row += [float(p[key] == r) for r in regions] if key == "region" else [p[key]]
        rows.append(row)
    widths = [1] + [len(regions) if key == "region" else 1 for key in keys]
    starts = np.cumsum([0] + widths)
    return np.asarray(rows, np.float64), [list(range(a, b)) for a, b in zip(starts, starts[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=pathlib.Path)
    parser.add_argument("--embedder", type=pathlib.Path, help="default DEMO/embedder")
    parser.add_argument("--out", default="reading.json")
    args = parser.parse_args()
    demo = args.demo
    config, state = checkpointing.restore_for_inference(args.embedder or demo / "embedder")
    records = manifest.Records.open(demo / "records")
    fe = face_embedder.load(demo / "eval" / "face_embedder.safetensors")
    listed = json.loads((demo / "corpus/identities.json").read_text())
    people = {key: p for p in listed for key in (p["voxceleb_id"], p["name"])}
    corpus = next(iter(people.values())).get("corpus", "a")
    keys = SHARED[corpus]

    def voices(split):
        mels, labels = zip(*[(m, lab) for m, lab, _ in reader.make_eval_voices(records, split)])
        emb = generate.embed_voices(config, state.embedder, list(mels))
        return models.unit(np.asarray(emb, np.float64)), np.asarray(labels)

    tr_emb, tr_lab = voices("train")
    te_emb, te_lab = voices("test")
    k = records.num_train_ids
    faces, face_lab, _ = reader.load_faces(records, "train")
    mean_faces = face_embedder.to_float(baselines.identity_means(faces, face_lab, k)[0])
    test_faces, test_face_lab, test_face_gender = reader.load_faces(records, "test")
    real = fe.embed(face_embedder.to_float(test_faces))
    te_gender = np.asarray([test_face_gender[test_face_lab == lab][0] for lab in te_lab])

    def matching(drawn: np.ndarray) -> dict:
        emb = fe.embed(np.clip(drawn, -1.0, 1.0).astype(np.float32))
        m = metrics.matching_1v2(emb, te_lab, real, test_face_lab)
        g = metrics.matching_1v2(
            emb, te_lab, real, test_face_lab, te_gender, test_face_gender, same_gender=True
        )
        return {"matching_1v2": m["accuracy"], "stderr": m["stderr"], "same_gender": g["accuracy"]}

    def names(split):
        return {v["label"]: key for key, v in records.identities(split).items()}

    tr_attr, groups = attributes(people, names("train"), keys)
    te_attr, _ = attributes(people, names("test"), keys)
    id_emb = models.unit(baselines.identity_means(tr_emb, tr_lab, k)[0])
    results = {"corpus": corpus, "from_embedding": matching(ridge(id_emb, mean_faces)(te_emb))}
    # A lookup instead of a map: the mean face of the training speaker whose mean embedding is
    # nearest (cosine), what a G that memorised its speakers would draw.
    nearest = np.argmax(te_emb @ id_emb.T, axis=1)
    results["nearest_speaker_by_embedding"] = matching(mean_faces[nearest])
    columns = ["female", *keys]
    for n in range(1, len(columns) + 1):
        cols = sum(groups[:n], [])
        name = "from_attributes: " + ", ".join(columns[:n])
        results[name] = matching(ridge(tr_attr[:, cols], mean_faces)(te_attr[te_lab][:, cols]))
    pred = ridge(tr_emb, tr_attr[tr_lab])(te_emb)
    truth = te_attr[te_lab]
    r2 = 1 - ((pred - truth) ** 2).sum(0) / np.maximum(((truth - truth.mean(0)) ** 2).sum(0), 1e-12)
    # A one-hot attribute's R^2: the mean over its columns.
    results["r2_from_embedding"] = {
        c: round(float(np.mean(r2[g])), 3) for c, g in zip(columns, groups)
    }
    for name, value in results.items():
        if isinstance(value, dict) and "matching_1v2" in value:
            print(
                f"{name}: 1:2 {100 * value['matching_1v2']:.1f}% ± {100 * value['stderr']:.1f}"
                f", same gender {100 * value['same_gender']:.1f}%"
            )
    print("R^2 of held-out voices' attributes from E:", results["r2_from_embedding"])
    pathlib.Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
