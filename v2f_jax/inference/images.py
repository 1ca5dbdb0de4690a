"""Faces as pictures: G's float output as uint8, captioned grids, PNG files.

Needs numpy and OpenCV only: the training loop's sample grid uses it too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from v2f_jax import files

_SCALE = 2  # 64x64 faces are small on a screen; nearest-neighbour keeps their pixels visible


def to_uint8(faces: np.ndarray) -> np.ndarray:
    """Faces float `[..., H, W, 3]` in [-1, 1] (clipped, as the reference clamps) -> uint8 RGB."""
    return np.round((np.clip(faces, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def contact_sheet(
    images: np.ndarray,
    captions: Sequence[str] | None = None,
    cols: int | None = None,
) -> np.ndarray:
    """A grid of images, filled row by row, each enlarged 2x, with a caption under it.

    Args:
      images: uint8 RGB `[N, H, W, 3]`.
      captions: N strings, cut to the image's width; None: no caption row.
      cols: columns (default min(N, 8)).

    Returns:
      uint8 RGB `[rows * (2H + caption + gap) + gap, cols * (2W + gap) + gap, 3]` on white.
    """
    images = np.asarray(images)
    n = len(images)
    cols = cols or max(1, min(n, 8))
    rows = max(1, -(-n // cols))
    h, w = images.shape[1] * _SCALE, images.shape[2] * _SCALE
    gap, cap = 4, (14 if captions else 0)
    sheet = np.full([rows * (h + cap + gap) + gap, cols * (w + gap) + gap, 3], 255, np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        y, x = gap + r * (h + cap + gap), gap + c * (w + gap)
        sheet[y : y + h, x : x + w] = cv2.resize(images[k], (w, h), interpolation=cv2.INTER_NEAREST)
        if captions:
            text = ascii_text(captions[k])
            while len(text) > 3 and cv2.getTextSize(text, cv2.FONT_HERSHEY_PLAIN, 0.8, 1)[0][0] > w:
                text = text[:-1]
            cv2.putText(
                sheet, text, (x, y + h + cap - 3), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 0, 0), 1
            )
    return sheet


def ascii_text(text) -> str:
    """What OpenCV can draw: ASCII, anything else `?` (a file name that is not valid UTF-8
    reaches us with surrogates, which OpenCV's string conversion does not survive)."""
    return str(text).encode("ascii", "replace").decode("ascii")


def encode_png(image_rgb: np.ndarray) -> bytes:
    """uint8 RGB `[H, W, 3]` as the bytes of a PNG file (OpenCV stores BGR, hence the flip)."""
    # zlib's own default level: half the size of OpenCV's fast default, in milliseconds.
    params = [cv2.IMWRITE_PNG_COMPRESSION, 6]
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image_rgb[..., ::-1]), params)
    if not ok:
        raise ValueError("could not encode the PNG")
    return data.tobytes()


def write_png(path: str | os.PathLike, image_rgb: np.ndarray) -> None:
    """Writes uint8 RGB `[H, W, 3]` as a PNG, whole or not at all (`files.write_bytes`).

    Encoded in memory and written by Python: any path the OS takes works, and a failed write
    is an OSError with its errno that names the path (a full disk says so).

    Raises:
      files.WriteError: the file could not be written.
    """
    files.write_bytes(path, encode_png(image_rgb), sync=False)
