"""Face images to aligned `[64, 64, 3]` uint8 RGB crops.

Two ways in, as in the reference:
- `load_aligned_face`: the image is already an aligned crop (the reference trained on
  VGG_ALL_FRONTAL, pre-aligned VGGFace crops) and is only resized, as its `load_face` did.
- `detect_and_align_face`: the paper's method for raw photos: OpenCV Haar cascades find the
  largest frontal face and two eyes inside it, and a similarity transform puts the eyes at the
  canonical spots `LEFT_EYE` / `RIGHT_EYE`.

Coordinates are OpenCV's: `(x, y)` in pixels, `(0, 0)` the centre of the top-left pixel. "Left" and
"right" mean the image's left and right (the subject's right eye is `LEFT_EYE`).

Every image that cannot be used raises `errors.BadInputError` with a reason a person understands.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import pathlib

import cv2
import numpy as np

from v2f_jax.input_pipeline import errors
from v2f_jax.input_pipeline.constants import IMAGE_SIZE

# Eye centres in the 64x64 output: where the Haar eye cascade finds them, on average, in the faces
# the reference generates (it learned VGG_ALL_FRONTAL's layout). Symmetric about the image centre.
LEFT_EYE = (22.0, 29.0)
RIGHT_EYE = (41.0, 29.0)
# Smaller images hold too little of a face to be worth upsampling to 64x64.
MIN_SIDE = 32
# The Haar cascades need room: their smallest window is 24x24 (face) and 20x20 (eye) pixels.
MIN_DETECT_SIDE = 48
MODES = ("aligned", "detect")

_FACE_CASCADE = "haarcascade_frontalface_default.xml"
_EYE_CASCADE = "haarcascade_eye.xml"
_EYE_SEARCH_FACE_WIDTH = 160
_IMAGE_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG
    b"BM",  # BMP
    b"GIF8",
    b"RIFF",  # WebP
    b"II*\x00",  # TIFF
    b"MM\x00*",
    b"P1", b"P2", b"P3", b"P4", b"P5", b"P6",  # PNM
)  # fmt: skip


def canonical_eyes(size: int = IMAGE_SIZE) -> tuple[tuple[float, float], tuple[float, float]]:
    """`(LEFT_EYE, RIGHT_EYE)` for a `size x size` output: the same spots, scaled with the image."""
    scale = size / IMAGE_SIZE
    return tuple(tuple((c + 0.5) * scale - 0.5 for c in eye) for eye in (LEFT_EYE, RIGHT_EYE))


def read_image(path: str | os.PathLike, min_side: int = MIN_SIDE) -> np.ndarray:
    """Decodes any image OpenCV reads (PNG, JPEG, BMP, WebP, TIFF, ...) to `[H, W, 3]` uint8 RGB.

    Grey images become three equal channels, alpha is dropped, 16-bit images are scaled to 8 bits.

    Raises:
      errors.BadInputError: missing, empty, truncated, undecodable, or smaller than `min_side`.
    """
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise errors.BadInputError(path, "file not found") from None
    except IsADirectoryError:
        raise errors.BadInputError(path, "is a directory, not an image file") from None
    except OSError as err:
        raise errors.BadInputError(path, f"cannot read file: {err.strerror or err}") from None
    if not data:
        raise errors.BadInputError(path, "empty file")
    if not data.startswith(_IMAGE_SIGNATURES):
        raise errors.BadInputError(path, "corrupt or unreadable image (not a known image format)")
    # libjpeg hands back a grey-filled image for a truncated JPEG, with only a warning.
    if (data.startswith(b"\xff\xd8") and b"\xff\xd9" not in data) or (
        data.startswith(b"\x89PNG") and b"IEND" not in data
    ):
        raise errors.BadInputError(path, "corrupt or unreadable image (truncated file)")
    if data.startswith(b"\xff\xd8"):
        _check_jpeg(path, data)
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    if bgr is None or bgr.size == 0:
        raise errors.BadInputError(path, "corrupt or unreadable image")
    height, width = bgr.shape[:2]
    if min(height, width) < min_side:
        raise errors.BadInputError(path, f"image too small: {width}x{height}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _check_jpeg(path: pathlib.Path, data: bytes) -> None:
    """libjpeg decodes a JPEG damaged inside its data into garbage pixels with only a warning on
    stderr (OpenCV passes no warning on); libjpeg-turbo through simplejpeg in strict mode turns
    those warnings into errors. The pixels still come from OpenCV, as before."""
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, strict=True)
    except ValueError as err:
        reason = " ".join(str(err).split())
        raise errors.BadInputError(path, f"corrupt or unreadable image ({reason})") from None


def resize(image_rgb: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Whole image to `[size, size, 3]` without cropping, as the reference's PIL `resize` did."""
    if image_rgb.shape[:2] == (size, size):
        return np.ascontiguousarray(image_rgb)
    return cv2.resize(image_rgb, (size, size), interpolation=cv2.INTER_AREA)


def load_aligned_face(path: str | os.PathLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """An already aligned face crop (VGG_ALL_FRONTAL style), resized.

    Returns:
      uint8 `[size, size, 3]` RGB in `[0, 255]`.

    Raises:
      errors.BadInputError: the file is missing, empty, corrupt, not an image, or smaller than
        `MIN_SIDE` pixels on a side.
    """
    return resize(read_image(path), size)


def similarity_matrix(
    left_eye: tuple[float, float],
    right_eye: tuple[float, float],
    size: int = IMAGE_SIZE,
) -> np.ndarray:
    """The `[2, 3]` rotation, uniform scale and translation taking the eyes to the canonical spots.

    Raises:
      ValueError: the two eyes are (nearly) the same point.
    """
    src_l, src_r = np.asarray(left_eye, np.float64), np.asarray(right_eye, np.float64)
    dst_l, dst_r = (np.asarray(e, np.float64) for e in canonical_eyes(size))
    src_d, dst_d = src_r - src_l, dst_r - dst_l
    norm = float(src_d @ src_d)
    if norm < 1e-6:
        raise ValueError(f"the eyes coincide: {left_eye}, {right_eye}")
    # As complex numbers, dst = z * src + t with z = dst_d / src_d.
    a = float(dst_d @ src_d) / norm
    b = float(src_d[0] * dst_d[1] - src_d[1] * dst_d[0]) / norm
    rot = np.array([[a, -b], [b, a]])
    shift = dst_l - rot @ src_l
    return np.concatenate([rot, shift[:, None]], axis=1)


def align_by_eyes(
    image_rgb: np.ndarray,
    left_eye: tuple[float, float],
    right_eye: tuple[float, float],
    size: int = IMAGE_SIZE,
) -> np.ndarray:
    """Warps a face so that its eye centres land on `canonical_eyes(size)`.

    Args:
      image_rgb: uint8 `[H, W, 3]`.
      left_eye, right_eye: eye centres `(x, y)` in pixels, image left and image right.
      size: output side.

    Returns:
      uint8 `[size, size, 3]`; outside the source, its border pixels are repeated.
    """
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    left_eye = np.asarray(left_eye, np.float64)
    right_eye = np.asarray(right_eye, np.float64)
    matrix = similarity_matrix(left_eye, right_eye, size)
    scale = math.hypot(matrix[0, 0], matrix[1, 0])
    # warpAffine samples bilinearly, which aliases when shrinking a lot: shrink with INTER_AREA
    # first, down to no less than twice the final scale.
    if scale < 0.5:
        factor = 2.0 * scale
        height, width = image.shape[:2]
        new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        factors = np.array([new_w / width, new_h / height])
        matrix = similarity_matrix(
            (left_eye + 0.5) * factors - 0.5, (right_eye + 0.5) * factors - 0.5, size
        )
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


# ---------------------------------------------------------------------------------------------
# Detection: Haar cascades, then the pure selection logic below.

Box = tuple[int, int, int, int]  # x, y, width, height


def largest_box(boxes) -> Box | None:
    """The box with the largest area (the first of equals), or None for no boxes."""
    boxes = [tuple(int(v) for v in b) for b in boxes]
    if not boxes:
        return None
    return max(boxes, key=lambda b: b[2] * b[3])


def choose_eye_pair(
    eye_boxes, face_box: Box
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Picks the best (left, right) pair of eye centres among the eye detections in a face.

    A pair must straddle the face's vertical midline, sit in the face's upper half, be 20-70% of
    the face width apart and tilt less than ~17 degrees; among those the pair closest to a typical
    face (level, eyes ~42% of the width apart, centred, similar sizes) wins.

    Args:
      eye_boxes: `(x, y, w, h)` detections in image coordinates.
      face_box: `(x, y, w, h)` of the face.

    Returns:
      `((x, y), (x, y))` eye centres, image left first; None when no pair is plausible.
    """
    fx, fy, fw, fh = face_box
    mid_x = fx + fw / 2.0
    eyes = []
    for x, y, w, h in eye_boxes:
        cx, cy = x + w / 2.0, y + h / 2.0
        if fy <= cy <= fy + 0.55 * fh and fx <= cx <= fx + fw:
            eyes.append((cx, cy, math.sqrt(w * h)))
    best, best_cost = None, math.inf
    for e1, e2 in itertools.combinations(eyes, 2):
        left, right = sorted((e1, e2))
        dx, dy = right[0] - left[0], right[1] - left[1]
        if not (left[0] < mid_x < right[0] and 0.2 * fw <= dx <= 0.7 * fw and abs(dy) < 0.3 * dx):
            continue
        cost = (
            abs(dy) / dx
            + abs(dx / fw - 0.42)
            + abs((left[0] + right[0]) / 2.0 - mid_x) / fw
            + 0.5 * abs(math.log(left[2] / right[2]))
        )
        if cost < best_cost:
            best = ((float(left[0]), float(left[1])), (float(right[0]), float(right[1])))
            best_cost = cost
    return best


@functools.cache
def _cascade(name: str) -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, name))
    if cascade.empty():
        raise RuntimeError(f"OpenCV's Haar cascade {name} is missing from {cv2.data.haarcascades}")
    return cascade


def detect_face_and_eyes(image_rgb: np.ndarray) -> tuple[Box | None, list[tuple[float, ...]]]:
    """Runs the cascades: the largest frontal face, and the eye boxes in its upper part.

    Returns:
      `(face, eyes)`: face `(x, y, w, h)` or None; eye boxes `(x, y, w, h)` in image pixels.
    """
    gray = cv2.equalizeHist(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY))
    min_face = max(24, min(gray.shape) // 8)
    faces = _cascade(_FACE_CASCADE).detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_face, min_face)
    )
    face = largest_box(faces)
    if face is None:
        return None, []
    x, y, w, h = face
    # Eye boxes centred just above the middle reach below it, so the band ends at 60% of the face.
    roi = gray[y : y + int(0.6 * h), x : x + w]
    # The eye cascade's 20x20 window misses the ~10 px eyes of a small face: enlarge it first.
    zoom = max(1.0, _EYE_SEARCH_FACE_WIDTH / w)
    if zoom > 1.0:
        roi = cv2.resize(roi, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
    min_eye = max(16, roi.shape[1] // 10)
    max_eye = roi.shape[1] // 2
    eyes = _cascade(_EYE_CASCADE).detectMultiScale(
        roi,
        scaleFactor=1.05,
        minNeighbors=3,
        minSize=(min_eye, min_eye),
        maxSize=(max_eye, max_eye),
    )
    # Back to image pixels, centre-preserving: centre_image = (centre_roi + 0.5) / zoom - 0.5.
    boxes = []
    for ex, ey, ew, eh in eyes:
        cx = (ex + ew / 2.0) / zoom + x
        cy = (ey + eh / 2.0) / zoom + y
        bw, bh = ew / zoom, eh / zoom
        boxes.append((cx - bw / 2.0, cy - bh / 2.0, bw, bh))
    return face, boxes


def detect_and_align_face(path: str | os.PathLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """The paper's method for a raw photo: Haar face, Haar eyes, eyes to the canonical spots.

    Returns:
      uint8 `[size, size, 3]` RGB.

    Raises:
      errors.BadInputError: unreadable image, "no face found", or "no eyes found in the face".
    """
    image = read_image(path, min_side=MIN_DETECT_SIDE)
    face, eyes = detect_face_and_eyes(image)
    if face is None:
        raise errors.BadInputError(path, "no face found")
    pair = choose_eye_pair(eyes, face)
    if pair is None:
        found = f"{len(eyes)} eye-like region" + ("s" if len(eyes) > 1 else "")
        detail = f" ({found}, no plausible left/right pair)" if eyes else ""
        raise errors.BadInputError(path, "no eyes found in the face" + detail)
    return align_by_eyes(image, pair[0], pair[1], size)


def load_face(path: str | os.PathLike, mode: str = "aligned", size: int = IMAGE_SIZE) -> np.ndarray:
    """`load_aligned_face` (mode "aligned") or `detect_and_align_face` (mode "detect")."""
    if mode == "aligned":
        return load_aligned_face(path, size)
    if mode == "detect":
        return detect_and_align_face(path, size)
    raise ValueError(f"unknown face mode {mode!r}; expected one of {MODES}")
