"""The face embedder that scores `v2f eval`: trained on real faces only, never the GAN's critics.

A small conv net (the reference's face-trunk architecture, narrower) with a cosine classifier over
the TRAIN split's identities (NormFace: logits = scale * cos(embedding, class weight)), so its
unit embeddings are made for cosine scoring. Training is deterministic: a fixed seed, numpy batch
sampling, flips and +-2 pixel shifts. The result depends only on the records (their manifest) and
the settings, so it is cached under that key and every run evaluated on the same records is
scored by the same embedder; `v2f eval` also copies it next to its report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from safetensors import numpy as st_numpy
from safetensors import safe_open

from v2f_jax import files, models, ops
from v2f_jax.input_pipeline import manifest as manifest_lib

PyTree = Any

FORMAT = "v2f-face-embedder"
FORMAT_VERSION = 1
DEFAULTS = {
    "pool": 2,  # faces are average-pooled 2x2 first (see `_pool`)
    "channels": (16, 32, 64, 64),
    "out_dim": 64,
    "scale": 16.0,
    "batch_size": 32,
    "lr": 2e-3,
    "seed": 0,
}


@dataclasses.dataclass
class FaceEmbedder:
    """Parameters `{"trunk", "classes"}`, the settings that built them and training facts."""

    params: PyTree
    settings: dict
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self._embed = _embed_fn(self.settings)

    def embed(self, faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Unit embeddings float32 `[N, out_dim]` of faces float `[N, 64, 64, 3]` in [-1, 1].

        Every call runs `batch_size` faces at a time, the last batch padded, even when N is
        smaller: one compiled shape serves an evaluation's every call (generated chunks, real
        faces, a baseline's few faces) instead of a compilation per distinct N.
        """
        faces = np.asarray(faces, np.float32)
        out = np.zeros([faces.shape[0], self.settings["out_dim"]], np.float32)
        batch_size = max(1, batch_size)
        for start in range(0, faces.shape[0], batch_size):
            chunk = faces[start : start + batch_size]
            padded = np.zeros((batch_size,) + faces.shape[1:], np.float32)
            padded[: len(chunk)] = chunk
            out[start : start + len(chunk)] = np.asarray(self._embed(self.params, padded))[
                : len(chunk)
            ]
        return out

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """Identity logits `[N, num_ids]` over the TRAIN split from unit embeddings `[N, D]`."""
        w = models.unit(jnp.asarray(self.params["classes"]).T).T
        return np.asarray(self.settings["scale"] * jnp.asarray(embeddings) @ w)


_EMBED_FNS: dict[str, Any] = {}


def _embed_fn(settings: dict):
    """The jitted `(params, faces) -> unit embeddings` of an architecture, shared by instances."""
    key = json.dumps({k: settings.get(k) for k in ("channels", "out_dim", "pool")}, default=list)
    if key not in _EMBED_FNS:
        trunk, pool = _trunk(settings), settings.get("pool", 1)
        _EMBED_FNS[key] = jax.jit(
            lambda params, faces: models.unit(
                trunk.apply({"params": params["trunk"]}, _pool(faces, pool))
            )
        )
    return _EMBED_FNS[key]


def _trunk(settings: dict) -> models.FaceTrunk:
    return models.FaceTrunk(
        channels=tuple(settings["channels"]),
        out_dim=settings["out_dim"],
        kernel=4,
        convs=ops.conv.XLA,
    )


def _pool(faces, k: int):
    """k x k average pooling: `[B, H, W, 3]` -> `[B, H/k, W/k, 3]`.

    The scorer compares faces at half resolution. A stride-2 transposed-convolution generator
    leaves period-2 checkerboard artifacts while it trains; a 2x2 mean cancels them exactly, so
    an embedder trained on clean real faces does not score texture it has never seen.
    """
    if k <= 1:
        return faces
    b, h, w, c = faces.shape
    return faces.reshape(b, h // k, k, w // k, k, c).mean(axis=(2, 4))


def to_float(faces_uint8: np.ndarray) -> np.ndarray:
    """uint8 faces -> float32 in [-1, 1], as the training reader: (x - 127.5) / 127.5."""
    return (np.asarray(faces_uint8, np.float32) - 127.5) / 127.5


def _augment(rng: np.random.Generator, faces: np.ndarray) -> np.ndarray:
    """Random left-right flips and shifts of up to 2 pixels (edge-padded). uint8 `[B, H, W, 3]`."""
    b, h, w, _ = faces.shape
    flip = rng.random(b) < 0.5
    faces = np.where(flip[:, None, None, None], faces[:, :, ::-1], faces)
    padded = np.pad(faces, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 5, b), rng.integers(0, 5, b)
    return np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def train(
    faces_uint8: np.ndarray, labels: np.ndarray, num_ids: int, steps: int, **overrides
) -> FaceEmbedder:
    """Identity classification on real faces; deterministic for given inputs and settings.

    Args:
      faces_uint8: `[N, 64, 64, 3]` uint8 real faces of the training identities.
      labels: int `[N]` in `[0, num_ids)`.
      num_ids: number of identities.
      steps: Adam steps (cosine-decayed learning rate).
      **overrides: any of `DEFAULTS`.
    """
    settings = dict(DEFAULTS, **overrides, num_ids=int(num_ids), steps=int(steps))
    settings["channels"] = tuple(int(c) for c in settings["channels"])
    faces_uint8, labels = np.asarray(faces_uint8), np.asarray(labels, np.int32)
    if faces_uint8.shape[0] == 0 or num_ids < 2:
        raise ValueError("the face embedder needs faces of at least two training identities")
    trunk = _trunk(settings)
    k_trunk, k_cls = jax.random.split(jax.random.PRNGKey(settings["seed"]))
    size = faces_uint8.shape[1] // max(1, settings["pool"])
    params = {
        "trunk": trunk.init(k_trunk, jnp.zeros((1, size, size, 3)))["params"],
        "classes": jax.random.normal(k_cls, (settings["out_dim"], num_ids)) * 0.1,
    }
    schedule = optax.cosine_decay_schedule(settings["lr"], max(1, steps))
    optimizer = optax.adam(schedule)
    opt_state = optimizer.init(params)

    def loss_fn(p, x, y):
        emb = models.unit(trunk.apply({"params": p["trunk"]}, _pool(x, settings["pool"])))
        logits = settings["scale"] * emb @ models.unit(p["classes"].T).T
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    @jax.jit
    def step(p, o, x, y):
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, x, y)
        updates, o = optimizer.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss, acc

    rng = np.random.default_rng(settings["seed"])
    batch = settings["batch_size"]
    losses, accs = [], []
    for _ in range(steps):
        idx = rng.integers(0, faces_uint8.shape[0], batch)
        x = to_float(_augment(rng, faces_uint8[idx]))
        params, opt_state, loss, acc = step(params, opt_state, x, labels[idx])
        losses.append(loss)
        accs.append(acc)
    params = jax.tree_util.tree_map(np.asarray, params)
    fe = FaceEmbedder(params=params, settings=settings)
    # Accuracy on the (un-augmented) training faces: how well it separates the identities it knows.
    emb = fe.embed(to_float(faces_uint8))
    tail = max(1, len(losses) // 10)
    fe.info = {
        "train_faces": int(faces_uint8.shape[0]),
        "final_loss": float(np.mean(losses[-tail:])) if losses else None,
        "train_top1": float(np.mean(np.argmax(fe.logits(emb), -1) == labels)),
    }
    return fe


# ------------------------------------------------------------------------------------ files


def save(fe: FaceEmbedder, path: str | os.PathLike) -> str:
    """A safetensors file: `trunk/...` and `classes` tensors; settings and info as metadata."""
    path = os.fspath(path)
    flat = traverse_util.flatten_dict(fe.params, sep="/")
    tensors = {k: np.asarray(v, np.float32) for k, v in flat.items()}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "settings": json.dumps(fe.settings, sort_keys=True),
        "info": json.dumps(fe.info, sort_keys=True),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_bytes(path, st_numpy.save(tensors, metadata=metadata))
    return path


def load(path: str | os.PathLike) -> FaceEmbedder:
    """Reads a file written by `save`.

    Raises:
      ValueError: not a v2f face embedder file.
    """
    path = os.fspath(path)
    with safe_open(path, framework="numpy") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a v2f face embedder")
    params = traverse_util.unflatten_dict(st_numpy.load_file(path), sep="/")
    settings = json.loads(meta["settings"])
    settings["channels"] = tuple(settings["channels"])
    return FaceEmbedder(
        params={"trunk": params["trunk"], "classes": params["classes"]},
        settings=settings,
        info=json.loads(meta.get("info") or "{}"),
    )


def cache_key(records: manifest_lib.Records, steps: int, **overrides) -> str:
    """sha256 of the records' manifest and the settings: equal keys, equal embedders."""
    settings = dict(DEFAULTS, **overrides, steps=int(steps), version=FORMAT_VERSION)
    h = hashlib.sha256(bytes.fromhex(records.manifest_sha256))
    h.update(json.dumps(settings, sort_keys=True, default=list).encode())
    return h.hexdigest()[:16]


def get_or_train(
    records: manifest_lib.Records,
    steps: int,
    out_dir: str | os.PathLike | None = None,
    log=print,
    train_faces: tuple[np.ndarray, np.ndarray] | None = None,
    **overrides,
) -> tuple[FaceEmbedder, str]:
    """The face embedder of these records: from the cache, else trained on the TRAIN split.

    The cache is `RECORDS/face_embedder/<key>.safetensors` (or `OUT/` when the records directory
    is read-only). A copy goes to `OUT/face_embedder.safetensors` when `out_dir` is given.
    `train_faces`: the TRAIN split's `(faces uint8 [N, 64, 64, 3], labels [N])` when the caller
    has read them already (else they are read here, if needed).

    Returns:
      `(embedder, path of the copy in out_dir, or the cached file)`.
    """
    from v2f_jax.input_pipeline import reader  # imports TensorFlow: only when training one

    key = cache_key(records, steps, **overrides)
    candidates = [os.path.join(records.root, "face_embedder", f"{key}.safetensors")]
    if out_dir is not None:
        candidates.append(os.path.join(os.fspath(out_dir), f"face_embedder-{key}.safetensors"))
    fe = None
    for path in candidates:
        if os.path.isfile(path):
            fe, cached = load(path), path
            log(f"face embedder: cached {path}")
            break
    if fe is None:
        if train_faces is None:
            train_faces = reader.load_faces(records, "train")[:2]
        faces, labels = train_faces
        num_ids = records.num_train_ids
        log(
            f"face embedder: training on {len(faces)} real faces of {num_ids} identities, "
            f"{steps} steps"
        )
        fe = train(faces, labels, num_ids, steps, **overrides)
        fe.info["cache_key"] = key
        cached = None
        for path in candidates:
            try:
                cached = save(fe, path)
                break
            except OSError:
                continue
    if out_dir is None:
        return fe, cached
    copy = os.path.join(os.fspath(out_dir), "face_embedder.safetensors")
    if cached and os.path.abspath(cached) != os.path.abspath(copy):
        with files.replacing(copy) as tmp:
            shutil.copyfile(cached, tmp)
    else:
        save(fe, copy)
    return fe, copy
