"""Voices to faces with a trained model: batched embedding of whole utterances, G, PNGs.

`embed_voices` takes whole utterances of any length. As the reference's `voice2face`, an utterance
shorter than 1000 frames is repeated to 1000; it is then cut to a multiple of 32 frames (E halves
the time axis five times), which lets utterances of different lengths share a padded batch with
results equal to running each alone: with every layer's length even, no valid output reads the
padding, and the time mean is taken over the valid outputs only. So few shapes are compiled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from v2f_jax import export

MIN_FRAMES = 1000  # the reference's voice2face repeats shorter utterances to this length
_TIME_STRIDE = 32  # 2**5: E's five stride-2 convs
_BATCH = 16


class FrontendMismatchError(ValueError):
    """Asked for features the model was not trained on."""


def check_frontend(model: export.Model, requested: str | None) -> str:
    """The model's front end; an error if `requested` (e.g. `--frontend`) names another."""
    trained = model.frontend_name
    if requested is not None and requested != trained:
        raise FrontendMismatchError(
            f"this model was trained on '{trained}' features; --frontend {requested} would give "
            f"it features it has never seen (the front ends correlate only ~0.7-0.8). Drop "
            f"--frontend, or use a model trained on records prepared with --frontend {requested}."
        )
    return trained


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


def _model_key(model: export.Model) -> str:
    """Models with equal keys have the same networks: their jitted functions are shared."""
    return json.dumps(model.config.model.to_dict(), sort_keys=True, default=list)


def make_embed_fn(model: export.Model) -> Callable:
    """`(embedder_vars, mel [B, P, n_mels], valid [B]) -> unit embeddings [B, D]`, jitted.

    `valid` is each row's number of real frames (a multiple of 32); the rest is padding. One
    function per architecture: a second model of the same config reuses its compilations.
    """
    return _cached(("embed", _model_key(model)), lambda: _build_embed_fn(model))


_FNS: dict[tuple[str, str], Callable] = {}


def _cached(key: tuple[str, str], build: Callable[[], Callable]) -> Callable:
    if key not in _FNS:
        _FNS[key] = build()
    return _FNS[key]


def _build_embed_fn(model: export.Model) -> Callable:
    nets = model.networks()
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
        return raw / jnp.maximum(jnp.linalg.norm(raw, axis=-1, keepdims=True), 1e-12)

    return embed


def embed_voices(
    model: export.Model,
    voices: Sequence[np.ndarray],
    batch_size: int = _BATCH,
    embed_fn: Callable | None = None,
) -> np.ndarray:
    """Unit voice embeddings `[N, D]` of whole utterances (each float32 `[T, n_mels]`)."""
    dim = int(model.config.model.embed_dim)
    if not len(voices):
        return np.zeros([0, dim], np.float32)
    embed_fn = embed_fn or make_embed_fn(model)
    variables = {"params": model.embedder["params"], "batch_stats": model.embedder["batch_stats"]}
    prepared = [prepare_voice(v) for v in voices]
    n_mels = prepared[0].shape[1]
    out = np.zeros([len(prepared), dim], np.float32)
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


def make_generate_fn(model: export.Model) -> Callable:
    """`(generator_params, unit embeddings [B, D]) -> faces [B, 64, 64, 3]`, jitted (one per
    architecture, as `make_embed_fn`)."""
    return _cached(("generate", _model_key(model)), lambda: _build_generate_fn(model))


def _build_generate_fn(model: export.Model) -> Callable:
    nets = model.networks()
    return jax.jit(lambda params, emb: nets.generator.apply({"params": params}, emb))


def generate_faces(
    model: export.Model,
    embeddings: np.ndarray,
    batch_size: int = 64,
    generate_fn: Callable | None = None,
) -> np.ndarray:
    """G's faces float32 `[N, 64, 64, 3]`, nominally in [-1, 1] (not clipped)."""
    generate_fn = generate_fn or make_generate_fn(model)
    embeddings = np.asarray(embeddings, np.float32)
    n = embeddings.shape[0]
    batch_size = max(1, min(batch_size, n))
    chunks = []
    for start in range(0, n, batch_size):
        chunk = embeddings[start : start + batch_size]
        padded = np.zeros([batch_size, chunk.shape[1]], np.float32)
        padded[: len(chunk)] = chunk
        chunks.append(np.asarray(generate_fn(model.generator, padded))[: len(chunk)])
    if not chunks:
        size = int(model.config.data.image_size)
        return np.zeros([0, size, size, 3], np.float32)
    return np.concatenate(chunks)


def to_uint8(faces: np.ndarray) -> np.ndarray:
    """Faces in [-1, 1] (clipped, as the reference clamps) -> uint8 RGB."""
    return np.round((np.clip(faces, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def contact_sheet(
    images: np.ndarray,
    captions: Sequence[str] | None = None,
    cols: int | None = None,
    scale: int = 2,
    rows_first: bool = True,
) -> np.ndarray:
    """A grid of uint8 RGB `[N, H, W, 3]` images, each enlarged `scale`x, with a caption under it.

    Returns uint8 RGB `[rows * (scale*H + caption), cols * (scale*W + gap), 3]` on white.
    """
    import cv2  # noqa: PLC0415

    images = np.asarray(images)
    n = len(images)
    cols = cols or max(1, min(n, 8))
    rows = max(1, -(-n // cols))
    h, w = images.shape[1] * scale, images.shape[2] * scale
    gap, cap = 4, (14 if captions else 0)
    sheet = np.full([rows * (h + cap + gap) + gap, cols * (w + gap) + gap, 3], 255, np.uint8)
    for k in range(n):
        r, c = (k // cols, k % cols) if rows_first else (k % rows, k // rows)
        y, x = gap + r * (h + cap + gap), gap + c * (w + gap)
        sheet[y : y + h, x : x + w] = cv2.resize(images[k], (w, h), interpolation=cv2.INTER_NEAREST)
        if captions:
            text = str(captions[k])
            while len(text) > 3 and cv2.getTextSize(text, cv2.FONT_HERSHEY_PLAIN, 0.8, 1)[0][0] > w:
                text = text[:-1]
            cv2.putText(
                sheet, text, (x, y + h + cap - 3), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 0, 0), 1
            )
    return sheet


def write_png(path: str | os.PathLike, image_rgb: np.ndarray) -> None:
    import cv2  # noqa: PLC0415

    if not cv2.imwrite(os.fspath(path), np.ascontiguousarray(image_rgb[..., ::-1])):
        raise OSError(f"{path}: could not write the PNG")


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
    model: export.Model,
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
    from input_pipeline import audio, errors  # noqa: PLC0415

    frontend = check_frontend(model, frontend)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items, voices, used = [], [], set()
    for path in audio_paths:
        try:
            mel = audio.voice_features(path, frontend=frontend, min_seconds=min_seconds)
        except errors.BadInputError as err:
            items.append({"path": os.fspath(path), "reason": err.reason})
            continue
        stem, k = pathlib.Path(path).stem, 1
        name = stem
        while name in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        items.append({"path": os.fspath(path), "png": f"{name}.png", "frames": int(mel.shape[0])})
        voices.append(mel)
    ok = [item for item in items if "png" in item]
    sheet_path = None
    if voices:
        faces = to_uint8(generate_faces(model, embed_voices(model, voices)))
        for item, face in zip(ok, faces):
            write_png(out / item["png"], face)
        sheet_path = os.fspath(out / "contact_sheet.png")
        captions = [pathlib.Path(item["png"]).stem for item in ok]
        write_png(sheet_path, contact_sheet(faces, captions))
    (out / "generate.json").write_text(
        json.dumps(
            {
                "frontend": model.frontend,
                "model": model.source,
                "items": items,
                "contact_sheet": "contact_sheet.png" if sheet_path else None,
            },
            indent=2,
        )
        + "\n"
    )
    summary = f"{len(ok)} face(s) from {len(items)} voice(s) in {out}"
    if sheet_path:
        summary += f"; contact sheet {sheet_path}"
    return GenerateResult(items=items, contact_sheet=sheet_path, summary=summary)
