"""The built-in synthetic corpora: test and demo data in the VoxCeleb1 / VGGFace layouts.

- `common`: what both corpora share: utterance lengths, drawing people and their names, each
  file's generator, signal helpers.
- `corpus_a`: corpus "a" (the default): its identities, source-filter voices, OpenCV faces.
- `corpus_b`: corpus "b", made otherwise (FOF voices, shaded per-pixel faces, other voice-face
  links), to confirm on what was tuned on "a".
- `writer`: `make_corpus`, a corpus of either kind written to disk (`v2f synth`).

A corpus module imports only `common`; `writer` imports both corpora.
"""
