"""Voices to faces: batched embedding of whole utterances, G, and the `v2f generate` pipeline.

`embed_voices` takes whole utterances of any length. As the reference's `voice2face`, an utterance
shorter than 1000 frames is repeated to 1000; it is then cut to a multiple of 32 frames (E halves
the time axis five times), which lets utterances of different lengths share a padded batch with
results equal to running each alone: with every layer's length even, no valid output reads the
padding, and the time mean is taken over the valid outputs only. So few shapes are compiled.

`embed_voices` and `generate_faces` need only a config and parameter trees (the training loop's
sample grid calls them with its live parameters); the `Model` type is only named in annotations.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from v2f_jax import models
from v2f_jax.inference import images
from v2f_jax.input_pipeline import audio, errors

if TYPE_CHECKING:
    from v2f_jax.inference.model import Model

PyTree = Any

MIN_FRAMES = 1000  # the reference's voice2face repeats shorter utterances to this length
_TIME_STRIDE = 32  # 2**5: E's five stride-2 convs
_BATCH = 16


class FrontendMismatchError(ValueError):
    """Asked for features the model was not trained on."""


def check_frontend(model: Model, requested: str | None) -> str:
    """The model's front end; an error if `requested` (e.g. `--frontend`) names another.

    Raises:
      FrontendMismatchError: `requested` is not the model's front end.
    """
    trained = model.frontend_name
    if requested is not None and requested != trained:
        raise FrontendMismatchError(
            f"this model was trained on '{trained}' features; --frontend {requested} would give "
            f"it features it has never seen (the front ends correlate only ~0.7-0.8). Drop "
            f"--frontend, or use a model trained on records prepared with --frontend {requested}."
        )
    return trained


# -------------------------------------------------------------------------------------- voices


def prepare_voice(mel: np.ndarray) -> np.ndarray:
    """float32 `[T, n_mels]` -> `[L, n_mels]`: repeated to >= 1000 frames, cut to L % 32 == 0."""
    mel = np.asarray(mel, np.float32)
    if mel.ndim != 2 or mel.shape[0] == 0:
        raise ValueError(f"a voice is [T, n_mels] with T > 0, got shape {mel.shape}")
    t = mel.shape[0]
    if t < MIN_FRAMES:
        mel = np.tile(mel, (-(-MIN_FRAMES // t), 1))[:MIN_FRAMES]
    return mel[: mel.shape[0] - mel.shape[0] % _TIME_STRIDE]


def _bucket(length: int) -> int:
    """Padded lengths grow by ~1.25x: a handful of compiled shapes, at most ~25% padding."""
    size = 1024
    while size < length:
        size = int(np.ceil(size * 1.25 / _TIME_STRIDE)) * _TIME_STRIDE
    return size


def embed_voices(
    config: ml_collections.ConfigDict,
    embedder: PyTree,
    voices: Sequence[np.ndarray],
    batch_size: int = _BATCH,
) -> np.ndarray:
    """Unit voice embeddings of whole utterances.

    Args:
      config: the model's config (`config.model` builds E).
      embedder: E's `{"params", "batch_stats"}`.
      voices: N log-mels, each float32 `[T_i, n_mels]`, any T_i > 0.
      batch_size: utterances per call of the jitted E.

    Returns:
      float32 `[N, embed_dim]`, unit norm.
    """
    dim = int(config.model.embed_dim)
    if not len(voices):
        return np.zeros([0, dim], np.float32)
    embed_fn = _jitted("embed", config.model)
    variables = {"params": embedder["params"], "batch_stats": embedder["batch_stats"]}
    prepared = [prepare_voice(v) for v in voices]
    n_mels = prepared[0].shape[1]
    out = np.zeros([len(prepared), dim], np.float32)
    # Similar lengths share a batch, so each is padded little.
    order = sorted(range(len(prepared)), key=lambda i: prepared[i].shape[0])
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        pad_to = _bucket(max(prepared[i].shape[0] for i in idx))
        batch = np.zeros([batch_size, pad_to, n_mels], np.float32)
        valid = np.full([batch_size], _TIME_STRIDE, np.int32)
        for row, i in enumerate(idx):
            batch[row, : prepared[i].shape[0]] = prepared[i]
            valid[row] = prepared[i].shape[0]
        out[idx] = np.asarray(embed_fn(variables, batch, valid))[: len(idx)]
    return out


def generate_faces(
    config: ml_collections.ConfigDict,
    generator: PyTree,
    embeddings: np.ndarray,
    batch_size: int = 64,
) -> np.ndarray:
    """G's faces from embeddings.

    Args:
      config: the model's config (`config.model` builds G).
      generator: G's params.
      embeddings: float32 `[N, embed_dim]`.
      batch_size: faces per call of the jitted G.

    Returns:
      float32 `[N, 64, 64, 3]`, nominally in [-1, 1] (not clipped).
    """
    generate_fn = _jitted("generate", config.model)
    embeddings = np.asarray(embeddings, np.float32)
    n = embeddings.shape[0]
    batch_size = max(1, min(batch_size, n))
    chunks = []
    for start in range(0, n, batch_size):
        chunk = embeddings[start : start + batch_size]
        padded = np.zeros([batch_size, chunk.shape[1]], np.float32)
        padded[: len(chunk)] = chunk
        chunks.append(np.asarray(generate_fn(generator, padded))[: len(chunk)])
    if not chunks:
        size = int(config.data.image_size)
        return np.zeros([0, size, size, 3], np.float32)
    return np.concatenate(chunks)


# One jitted E and G per architecture: a second model (or the training loop's next sample grid)
# of the same config reuses their compilations.
_JITTED: dict[tuple[str, str], Callable] = {}


def _jitted(kind: str, model_config: ml_collections.ConfigDict) -> Callable:
    """`"embed"`: `(embedder_vars, mel [B, P, n_mels], valid [B]) -> unit embeddings [B, D]`,
    where `valid` is each row's number of real frames (a multiple of 32), the rest padding.
    `"generate"`: `(generator_params, embeddings [B, D]) -> faces [B, 64, 64, 3]`."""
    key = (kind, json.dumps(model_config.to_dict(), sort_keys=True, default=list))
    if key not in _JITTED:
        nets = models.Networks(model_config, 1)  # E and G only: the critics' size is moot
        _JITTED[key] = _build_embed_fn(nets) if kind == "embed" else _build_generate_fn(nets)
    return _JITTED[key]


def _build_embed_fn(nets: models.Networks) -> Callable:
    last = f"conv{len(nets.embedder.channels)}"

    @jax.jit
    def embed(variables, mel, valid):
        _, inter = nets.embedder.apply(
            variables,
            mel,
            capture_intermediates=lambda mdl, _: mdl.name == last,
            mutable=["intermediates"],
        )
        out = inter["intermediates"][last]["__call__"][0].astype(jnp.float32)  # [B, P/32, D]
        steps = jnp.arange(out.shape[1])[None, :]
        n = valid // _TIME_STRIDE
        mask = (steps < n[:, None]).astype(jnp.float32)[..., None]
        raw = jnp.sum(out * mask, axis=1) / jnp.maximum(n, 1)[:, None]
        return models.unit(raw)

    return embed


def _build_generate_fn(nets: models.Networks) -> Callable:
    return jax.jit(lambda params, emb: nets.generator.apply({"params": params}, emb))


# ---------------------------------------------------------------------------- `v2f generate`


def printable(path: str | os.PathLike) -> str:
    """A path as text that any terminal and JSON parser takes: bytes of a name that are not
    valid UTF-8 (Python hands them over as surrogates) shown as `\\xNN`."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def png_stem(path: str | os.PathLike) -> str:
    """The output name for an input: its stem, with bytes that are not UTF-8 as `_`."""
    stem = os.fsencode(pathlib.Path(path).stem).decode("utf-8", "replace")
    return stem.replace("\ufffd", "_")


@dataclasses.dataclass
class GenerateResult:
    """What `generate` wrote: per input `{"path", "png", "frames"}` or `{"path", "reason"}`."""

    items: list[dict]
    contact_sheet: str | None
    summary: str

    @property
    def n_failed(self) -> int:
        return sum("reason" in item for item in self.items)


def generate(
    model: Model,
    audio_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    frontend: str | None = None,
    min_seconds: float = 0.5,
) -> GenerateResult:
    """VAD, log-mel (the model's front end), E, G: `<stem>.png` per voice and `contact_sheet.png`.

    A file that cannot be used (unreadable, no speech) is recorded with its reason and skipped.
    `generate.json` in `out_dir` lists every input.

    Raises:
      FrontendMismatchError: `frontend` names another front end than the model's.
    """
    frontend = check_frontend(model, frontend)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items, voices, used = [], [], set()
    for path in audio_paths:
        shown = printable(path)
        try:
            mel = audio.voice_features(path, frontend=frontend, min_seconds=min_seconds)
        except errors.BadInputError as err:
            items.append({"path": shown, "reason": err.reason})
            continue
        stem, k = png_stem(path), 1
        name = stem
        while name in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        items.append({"path": shown, "png": f"{name}.png", "frames": int(mel.shape[0])})
        voices.append(mel)
    ok = [item for item in items if "png" in item]
    sheet_path = None
    try:
        if voices:
            emb = embed_voices(model.config, model.embedder, voices)
            faces = images.to_uint8(generate_faces(model.config, model.generator, emb))
            for item, face in zip(ok, faces):
                images.write_png(out / item["png"], face)
            captions = [pathlib.Path(item["png"]).stem for item in ok]
            images.write_png(out / "contact_sheet.png", images.contact_sheet(faces, captions))
            sheet_path = os.fspath(out / "contact_sheet.png")
    finally:  # the list of inputs, also when drawing or writing a picture failed
        report = {
            "frontend": model.frontend,
            "model": model.source,
            "items": items,
            "contact_sheet": "contact_sheet.png" if sheet_path else None,
        }
        (out / "generate.json").write_text(json.dumps(report, indent=2) + "\n")
    summary = f"{len(ok)} face(s) from {len(items)} voice(s) in {printable(out)}"
    if sheet_path:
        summary += f"; contact sheet {printable(sheet_path)}"
    return GenerateResult(items=items, contact_sheet=sheet_path, summary=summary)
