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

from v2f_jax.inference import generate, images
from v2f_jax.input_pipeline import manifest as manifest_lib


@dataclasses.dataclass
class SampleSet:
    """The fixed voices and faces of the grid.

    Attributes:
      voices: float32 `[T_i, n_mels]` log-mels, one per identity.
      faces: uint8 `[N, 64, 64, 3]` RGB, the same identities in the same order.
      names: identity names.
    """

    voices: list[np.ndarray]
    faces: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def make_sample_set(records: manifest_lib.Records, count: int = 8) -> SampleSet | None:
    """Up to `count` identities of the test split (or, if it has none, the train split) with a
    voice and a face; None if there is no such identity."""
    from v2f_jax.input_pipeline import reader  # imports TensorFlow: only when a grid is made

    for split in ("test", "train"):
        info = records.split(split) if records.has_split(split) else None
        if not info or not info.get("num_identities"):
            continue
        names_by_label = {label: name for name, label in info["label_map"].items()}
        faces, face_labels, _ = reader.load_faces(records, split)
        first_face = {}
        for i, label in enumerate(face_labels.tolist()):
            first_face.setdefault(label, i)
        voice = {}
        for mel, label, _ in reader.make_eval_voices(records, split):
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
            )
    return None


class SampleWriter:
    """Draws and writes the grid for a run of `config`."""

    def __init__(self, config: ml_collections.ConfigDict, sample_set: SampleSet):
        self.sample_set = sample_set
        self._config = config

    def render(self, embedder, generator) -> np.ndarray:
        """The grid: real faces (top row), G's faces (bottom row).

        Args:
          embedder: E's `{"params", "batch_stats"}` (host arrays).
          generator: G's params.

        Returns:
          uint8 RGB `[H, W, 3]` (`images.contact_sheet` of 2 rows).
        """
        emb = generate.embed_voices(self._config, embedder, self.sample_set.voices)
        fake = generate.generate_faces(self._config, generator, emb)
        n = len(self.sample_set)
        faces = np.concatenate([self.sample_set.faces, images.to_uint8(fake)])
        captions = list(self.sample_set.names) + ["generated"] * n
        return images.contact_sheet(faces, captions, cols=n)

    def write(self, path: str | os.PathLike, embedder, generator) -> np.ndarray:
        """Renders the grid, writes it to `path` (a PNG) and returns it."""
        grid = self.render(embedder, generator)
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        images.write_png(path, grid)
        return grid
