"""The 1:2 matching a perfect voice-to-face model could reach on the synthetic corpus.

For each held-out identity, the "generated" face is the mean of `--lookalikes` faces of people
who share what its voice carries (gender, and any of age, vocal-tract length and region), with
everything else drawn anew: the best guess from the voice. They are scored as `v2f eval` scores
(a face embedder trained on the training identities' faces, `face_embedder.train`, the demo's 300
steps). Prints one line per level of knowledge and writes JSON.

    python benchmarks/demo_ceiling.py [--identities 128 --faces 12 --seed 0 --out ceiling.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from v2f_jax.evaluation import face_embedder, metrics
from v2f_jax.input_pipeline import faces as facelib
from v2f_jax.synthetic import corpus_a

LEVELS = {
    "gender": (),
    "gender, age, vocal tract": ("age", "vtl_cm"),
    "gender, region": ("region",),
    "gender, age, vocal tract, region": ("age", "vtl_cm", "region"),
}


def photos(person: corpus_a.Identity, rngs) -> np.ndarray:
    """uint8 `[len(rngs), 64, 64, 3]` aligned faces, resized as `v2f prepare` loads the PNGs."""
    return np.stack([facelib.resize(corpus_a.render_face(person, rng)[0]) for rng in rngs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=128)
    parser.add_argument("--faces", type=int, default=12)
    parser.add_argument("--voices", type=int, default=4, help="best guesses per held-out identity")
    parser.add_argument("--lookalikes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300, help="face-embedder training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="ceiling.json")
    args = parser.parse_args()

    people = corpus_a.make_identities(args.identities, args.seed)
    train = [p for p in people if p.split == "dev"]
    test = [p for p in people if p.split == "test"]

    def own_photos(p):
        return photos(p, [np.random.default_rng([p.stream, 3, f]) for f in range(args.faces)])

    train_faces = np.concatenate([own_photos(p) for p in train])
    train_labels = np.repeat(np.arange(len(train)), args.faces)
    fe = face_embedder.train(train_faces, train_labels, len(train), args.steps)
    real = fe.embed(face_embedder.to_float(np.concatenate([own_photos(p) for p in test])))
    real_labels = np.repeat(np.arange(len(test)), args.faces)

    results = {}
    for level, shared in LEVELS.items():
        guesses, labels = [], []
        for i, person in enumerate(test):
            for v in range(args.voices):
                rng = np.random.default_rng([args.seed, 999, i, v])
                looks = [corpus_a.lookalike(person, rng, shared) for _ in range(args.lookalikes)]
                faces = [photos(x, [rng])[0].astype(np.float32) for x in looks]
                guesses.append(np.round(np.mean(faces, axis=0)).astype(np.uint8))
                labels.append(i)
        emb = fe.embed(face_embedder.to_float(np.stack(guesses)))
        r = metrics.matching_1v2(emb, np.array(labels), real, real_labels)
        results[level] = {"matching_1v2": r["accuracy"], "stderr": r["stderr"]}
        print(
            f"knowing {level:34s} 1:2 matching {100 * r['accuracy']:.1f}% ± {100 * r['stderr']:.1f}"
        )
    summary = {"settings": vars(args), "test_identities": len(test), "levels": results}
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
