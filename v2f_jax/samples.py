"""The training run's face grid: faces G draws from fixed held-out voices, beside the real faces.

At start the run picks up to `count` identities of the held-out (test) split that have both a
voice and a face, and one utterance and one face of each (the first in shard order: the same
every run and every resume). Every `train.sample_every` steps `WORKDIR/samples/step_NNNNNN.png`
gets two rows: the real faces on top, the generated ones below, one column per identity, captioned
with its name. Voices are embedded whole, as `v2f generate` embeds them.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from v2f_jax import export, generate


@dataclasses.dataclass
class SampleSet:
    """The fixed voices and faces of the grid.

    Attributes:
      voices: float32 `[T_i, n_mels]` log-mels, one per identity.
      faces: uint8 `[N, 64, 64, 3]` RGB, the same identities in the same order.
      names: identity names.
      split: the records split they come from.
    """

    voices: list[np.ndarray]
    faces: np.ndarray
    names: list[str]
    split: str

    def __len__(self) -> int:
        return len(self.names)


def make_sample_set(records_dir: str | os.PathLike, count: int = 8) -> SampleSet | None:
    """Up to `count` identities of the test split (or, if it has none, the train split) with a
    voice and a face; None if there is no such identity."""
    from input_pipeline import reader  # noqa: PLC0415  (TensorFlow)

    manifest = reader.read_manifest(records_dir)
    for split in ("test", "train"):
        info = manifest["splits"].get(split)
        if not info or not info.get("num_identities"):
            continue
        names_by_label = {label: name for name, label in info["label_map"].items()}
        faces, face_labels, _ = reader.load_faces(records_dir, split)
        first_face = {}
        for i, label in enumerate(face_labels.tolist()):
            first_face.setdefault(label, i)
        voice = {}
        for mel, label, _ in reader.make_eval_voices(records_dir, split):
            if label in first_face and label not in voice:
                voice[label] = mel
                if len(voice) == count:
                    break  # a large split is not read to its end
        labels = sorted(voice)
        if labels:
            return SampleSet(
                voices=[voice[lab] for lab in labels],
                faces=faces[[first_face[lab] for lab in labels]],
                names=[names_by_label.get(lab, str(lab)) for lab in labels],
                split=split,
            )
    return None


class SampleWriter:
    """Draws and writes the grid for a run of `config`."""

    def __init__(self, config: ml_collections.ConfigDict, sample_set: SampleSet):
        self.sample_set = sample_set
        self._config = config
        self._embed_fn = None
        self._generate_fn = None

    def render(self, embedder, generator) -> np.ndarray:
        """uint8 RGB grid: real faces (top row), G's faces (bottom row). Host param trees."""
        model = export.Model(
            config=self._config,
            embedder=embedder,
            generator=generator,
            frontend={"name": self._config.data.get("frontend", "wen2019")},
        )
        if self._embed_fn is None:
            self._embed_fn = generate.make_embed_fn(model)
            self._generate_fn = generate.make_generate_fn(model)
        emb = generate.embed_voices(model, self.sample_set.voices, embed_fn=self._embed_fn)
        fake = generate.generate_faces(model, emb, generate_fn=self._generate_fn)
        n = len(self.sample_set)
        images = np.concatenate([self.sample_set.faces, generate.to_uint8(fake)])
        captions = list(self.sample_set.names) + ["generated"] * n
        return generate.contact_sheet(images, captions, cols=n)

    def write(self, path: str | os.PathLike, embedder, generator) -> np.ndarray:
        grid = self.render(embedder, generator)
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        generate.write_png(path, grid)
        return grid
