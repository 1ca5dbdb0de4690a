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

import contextlib
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

from v2f_jax import files, models
from v2f_jax.inference import images
from v2f_jax.input_pipeline import audio, errors

if TYPE_CHECKING:
    from v2f_jax.inference.model import Model

PyTree = Any

MIN_FRAMES = 1000  # the reference's voice2face repeats shorter utterances to this length
_TIME_STRIDE = 32  # 2**5: E's five stride-2 convs
_BATCH = 16
# Padded frames per call of E at most (16 utterances of 41 s): a longer utterance shares its
# batch with fewer others, so memory does not grow with an utterance's length times 16.
_FRAME_BUDGET = _BATCH * 4096


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
    start = 0
    while start < len(order):
        pad_to = _bucket(prepared[order[min(start + batch_size, len(order)) - 1]].shape[0])
        # Long utterances go fewer to a batch: E's activations stay bounded (_FRAME_BUDGET).
        rows = max(1, min(batch_size, _FRAME_BUDGET // pad_to))
        idx = order[start : start + rows]
        start += rows
        pad_to = _bucket(max(prepared[i].shape[0] for i in idx))
        batch = np.zeros([rows, pad_to, n_mels], np.float32)
        valid = np.full([rows], _TIME_STRIDE, np.int32)
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


def fuse_voices(embeddings: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """One speaker's voice embedding from several clips: the unit mean of their unit embeddings.

    E's embedding of one clip carries that clip's noise (what was said, how, the room); G draws
    from a point of the unit sphere, so the clips' mean direction is the speaker's estimate, as
    SF2F fuses its segments.

    Args:
      embeddings: float `[N, D]`, N >= 1 clips of one speaker (unit or not: each is normalised).
      weights: optional `[N]` non-negative weights of the clips (default equal).

    Returns:
      float32 `[D]`, unit norm.
    """
    emb = models.unit(np.asarray(embeddings, np.float64))
    if emb.ndim != 2 or not emb.shape[0]:
        raise ValueError(f"fuse_voices: need [N, D] embeddings with N >= 1, got {emb.shape}")
    w = np.ones(emb.shape[0]) if weights is None else np.asarray(weights, np.float64)
    return models.unit((w[:, None] * emb).sum(0)).astype(np.float32)


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
    """What `generate` wrote: per input `{"path", "png", "frames"}` or `{"path", "reason"}`
    (`generate_per_speaker`: per speaker, with its `clips` and `skipped` clips)."""

    items: list[dict]
    contact_sheet: str | None
    summary: str

    @property
    def n_failed(self) -> int:
        """Inputs not drawn: files (or speakers) with a reason, and skipped clips."""
        return sum(("reason" in item) + len(item.get("skipped", ())) for item in self.items)


# Voices featurised, embedded and drawn at a time (at most so many frames of log-mel): memory
# holds one chunk, however many files there are.
CHUNK_VOICES = 64
CHUNK_FRAMES = 200_000
# Faces on the contact sheet: the first ones (every voice still gets its PNG).
SHEET_MAX = 64


def generate(
    model: Model,
    audio_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    frontend: str | None = None,
    min_seconds: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> GenerateResult:
    """VAD, log-mel (the model's front end), E, G: `<stem>.png` per voice and `contact_sheet.png`
    (of the first `SHEET_MAX` faces).

    A file that cannot be used (unreadable, no speech, longer than `audio.MAX_SECONDS`) is
    recorded with its reason and skipped. Voices go through in chunks (`CHUNK_VOICES`,
    `CHUNK_FRAMES`), each drawn and written before the next is read, so memory does not grow
    with the number of files; `progress(done, total)` is called after each chunk. Every file is
    written whole or not at all; `generate.json` in `out_dir` lists every input (also when a
    write failed: then the voices not drawn carry the reason).

    Raises:
      FrontendMismatchError: `frontend` names another front end than the model's.
      files.WriteError: a PNG could not be written (a full disk), naming it.
    """
    frontend = check_frontend(model, frontend)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items: list[dict] = []
    used: set[str] = set()
    chunk: list[tuple[dict, np.ndarray]] = []
    sheet: list[tuple[str, np.ndarray]] = []
    total = len(audio_paths)

    def draw() -> None:
        if not chunk:
            return
        emb = embed_voices(model.config, model.embedder, [mel for _, mel in chunk])
        faces = images.to_uint8(generate_faces(model.config, model.generator, emb))
        for face in faces:
            item, _ = chunk[0]
            images.write_png(out / item["png"], face)
            del chunk[0]  # drawn: what is left in `chunk` was not
            if len(sheet) < SHEET_MAX:
                sheet.append((pathlib.Path(item["png"]).stem, face))

    def write_report(sheet_path: str | None) -> None:
        report = {
            "frontend": model.frontend,
            "model": model.source,
            "items": items,
            "contact_sheet": "contact_sheet.png" if sheet_path else None,
        }
        files.write_text(out / "generate.json", json.dumps(report, indent=2) + "\n")

    sheet_path = None
    try:
        for n, path in enumerate(audio_paths, 1):
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
            chunk.append((items[-1], mel))
            if len(chunk) >= CHUNK_VOICES or sum(m.shape[0] for _, m in chunk) >= CHUNK_FRAMES:
                draw()
                if progress is not None:
                    progress(n, total)
        draw()
        if progress is not None and total:
            progress(total, total)
        if sheet:
            captions, faces = zip(*sheet)
            images.write_png(
                out / "contact_sheet.png", images.contact_sheet(np.stack(faces), captions)
            )
            sheet_path = os.fspath(out / "contact_sheet.png")
    except BaseException as err:
        for item, _ in chunk:  # read, but never drawn
            del item["png"]
            item["reason"] = f"not drawn: the command stopped ({err or type(err).__name__})"
        with contextlib.suppress(OSError):  # the list of inputs; the first failure is reported
            write_report(None)
        raise
    write_report(sheet_path)
    ok = [item for item in items if "png" in item]
    summary = f"{len(ok)} face(s) from {len(items)} voice(s) in {printable(out)}"
    if sheet_path:
        summary += f"; contact sheet {printable(sheet_path)}"
    return GenerateResult(items=items, contact_sheet=sheet_path, summary=summary)


# ---------------------------------------------------------------- `v2f generate --per-speaker`

FUSION = "the unit mean of the clips' unit voice embeddings"


def speaker_groups(specs: Sequence[str | os.PathLike]) -> dict[str, list[str]]:
    """`v2f generate --per-speaker`'s inputs -> `{speaker: [clips]}`, speakers in the order
    first named.

    Each spec is a folder (its audio files, searched recursively, are one speaker's, named
    after the folder), `NAME=FILE[,FILE...]` (that speaker's clips), or an audio file (a clip of
    the speaker named after its folder). Specs that name the same speaker add to its clips; a
    clip named twice counts once. A folder with no audio file is a speaker with no clips.
    """
    from v2f_jax.input_pipeline import prepare  # its list of audio extensions

    groups: dict[str, list[str]] = {}
    for spec in specs:
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            name = pathlib.Path(os.path.abspath(spec)).name or "speaker"
            clips = sorted(
                os.path.join(root, f)
                for root, _, names in os.walk(spec)
                for f in names
                if os.path.splitext(f)[1].lower() in prepare.AUDIO_EXTS
            )
        elif "=" in spec and not os.path.exists(spec):
            name, _, listed = spec.partition("=")
            clips = [c for c in listed.split(",") if c]
        else:
            name = pathlib.Path(os.path.abspath(spec)).parent.name or "speaker"
            clips = [spec]
        have = groups.setdefault(name, [])
        have.extend(c for c in clips if c not in have)
    return groups


def _speaker_png(name: str, used: set[str]) -> str:
    """A file name for a speaker's face: its name with path separators, control characters and
    bytes that are not UTF-8 as `_`, made unique among `used`."""
    stem = os.fsencode(name).decode("utf-8", "replace")
    stem = "".join("_" if c in "/\\\ufffd" or not c.isprintable() else c for c in stem)
    stem = stem.strip(". ") or "speaker"
    out, k = stem, 1
    while out in used:
        k += 1
        out = f"{stem}_{k}"
    used.add(out)
    return f"{out}.png"


def generate_per_speaker(
    model: Model,
    groups: dict[str, Sequence[str | os.PathLike]],
    out_dir: str | os.PathLike,
    frontend: str | None = None,
    min_seconds: float = 0.5,
) -> GenerateResult:
    """One face per speaker from all of its clips: VAD and log-mel of each clip, E, the clips'
    embeddings fused (`fuse_voices`), G. `<speaker>.png` per speaker and `contact_sheet.png`.

    A clip that cannot be used is listed under its speaker's `skipped` and left out; a speaker
    with no usable clip gets a `reason` and no face. `generate.json` in `out_dir` lists every
    speaker: `{"speaker", "png", "clips": [{"path", "frames"}], "skipped": [{"path", "reason"}]}`.

    Args:
      groups: `{speaker: [clips]}` (`speaker_groups`).

    Raises:
      FrontendMismatchError: `frontend` names another front end than the model's.
    """
    frontend = check_frontend(model, frontend)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items, voices, owner, used = [], [], [], set()
    for name, clips in groups.items():
        item: dict[str, Any] = {"speaker": printable(name), "clips": [], "skipped": []}
        for path in clips:
            try:
                mel = audio.voice_features(path, frontend=frontend, min_seconds=min_seconds)
            except errors.BadInputError as err:
                item["skipped"].append({"path": printable(path), "reason": err.reason})
                continue
            item["clips"].append({"path": printable(path), "frames": int(mel.shape[0])})
            voices.append(mel)
            owner.append(len(items))
        if item["clips"]:
            item["png"] = _speaker_png(name, used)
        else:
            item["reason"] = "no usable clip" if clips else "no audio file"
        items.append(item)
    drawn = [i for i, item in enumerate(items) if "png" in item]
    sheet_path = None
    try:
        if drawn:
            emb = embed_voices(model.config, model.embedder, voices)
            owner_arr = np.asarray(owner)
            fused = np.stack([fuse_voices(emb[owner_arr == i]) for i in drawn])
            faces = images.to_uint8(generate_faces(model.config, model.generator, fused))
            for i, face in zip(drawn, faces):
                images.write_png(out / items[i]["png"], face)
            captions = [pathlib.Path(items[i]["png"]).stem for i in drawn]
            images.write_png(out / "contact_sheet.png", images.contact_sheet(faces, captions))
            sheet_path = os.fspath(out / "contact_sheet.png")
    finally:  # the list of inputs, also when drawing or writing a picture failed
        report = {
            "frontend": model.frontend,
            "model": model.source,
            "per_speaker": True,
            "fusion": FUSION,
            "items": items,
            "contact_sheet": "contact_sheet.png" if sheet_path else None,
        }
        files.write_text(out / "generate.json", json.dumps(report, indent=2) + "\n")
    n_clips = sum(len(item["clips"]) for item in items)
    summary = (
        f"{len(drawn)} face(s) of {len(items)} speaker(s) from {n_clips} clip(s) in "
        f"{printable(out)}"
    )
    if sheet_path:
        summary += f"; contact sheet {printable(sheet_path)}"
    return GenerateResult(items=items, contact_sheet=sheet_path, summary=summary)
