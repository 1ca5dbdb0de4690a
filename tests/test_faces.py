"""Face loading and alignment: canonical eyes, resizing, bad files, Haar detection."""

import math

import cv2
import numpy as np
import pytest

from v2f_jax.input_pipeline import errors, faces
from v2f_jax.synthetic import corpus_a

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CORRUPT = "corrupt or unreadable image"


def _write(path, image_rgb, params=()):
    ok, data = cv2.imencode(path.suffix, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), params)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def _similarity(angle_deg, scale, shift, centre):
    a = math.radians(angle_deg)
    rot = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = np.asarray(centre, float)
    return np.concatenate([rot, (centre + np.asarray(shift) - rot @ centre)[:, None]], axis=1)


def _centroid(image, channel):
    """Weighted centre of the pixels where `channel` dominates the other two."""
    img = image.astype(float)
    others = np.delete(img, channel, axis=2).max(axis=2)
    weight = np.clip(img[..., channel] - others - 40, 0, None)
    assert weight.sum() > 0, "colour not found"
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


def test_canonical_eyes_are_level_centred_and_scale():
    (lx, ly), (rx, ry) = faces.canonical_eyes(64)
    assert (lx, ly, rx, ry) == (*faces.LEFT_EYE, *faces.RIGHT_EYE)
    assert ly == ry and lx < rx and lx + rx == pytest.approx(63.0)  # about the image centre
    (lx2, _), (rx2, _) = faces.canonical_eyes(128)
    assert rx2 - lx2 == pytest.approx(2 * (rx - lx))


@pytest.mark.parametrize(
    "angle, eye_dist, shift, size",
    [(0, 60, (0, 0), 64), (17, 45, (30, -12), 64), (-25, 130, (-40, 25), 64), (9, 80, (5, 5), 128)],
)
def test_align_by_eyes_puts_eyes_on_the_canonical_spots(angle, eye_dist, shift, size):
    # A grey "photo" with a red left eye and a blue right eye, rotated, scaled, shifted.
    height, width = 300, 360
    image = np.full((height, width, 3), 128, np.uint8)
    centre = np.array([width / 2, height / 2])
    m = _similarity(angle, eye_dist / 19.0, shift, (31.5, 29.0))
    to_photo = lambda p: m[:, :2] @ np.asarray(p) + m[:, 2] + centre - (31.5, 29.0)
    left, right = to_photo(faces.LEFT_EYE), to_photo(faces.RIGHT_EYE)
    radius = int(round(0.15 * eye_dist))
    for eye, colour in ((left, (230, 20, 20)), (right, (20, 20, 230))):
        cv2.circle(image, tuple(int(v * 16) for v in eye), radius * 16, colour, -1, cv2.LINE_AA, 4)
    aligned = faces.align_by_eyes(image, left, right, size)
    assert aligned.shape == (size, size, 3) and aligned.dtype == np.uint8
    want_left, want_right = faces.canonical_eyes(size)
    np.testing.assert_allclose(_centroid(aligned, 0), want_left, atol=1.0 * size / 64)
    np.testing.assert_allclose(_centroid(aligned, 2), want_right, atol=1.0 * size / 64)


def test_align_by_eyes_shrinks_big_photos_without_losing_the_eyes():
    image = np.full((1600, 1500, 3), 128, np.uint8)
    left, right = np.array([500.0, 700.0]), np.array([1100.0, 760.0])
    for eye, colour in ((left, (230, 20, 20)), (right, (20, 20, 230))):
        cv2.circle(image, tuple(int(v) for v in eye), 80, colour, -1, cv2.LINE_AA)
    aligned = faces.align_by_eyes(image, left, right)
    np.testing.assert_allclose(_centroid(aligned, 0), faces.LEFT_EYE, atol=1.0)
    np.testing.assert_allclose(_centroid(aligned, 2), faces.RIGHT_EYE, atol=1.0)


def test_align_by_eyes_rejects_coincident_eyes():
    with pytest.raises(ValueError, match="coincide"):
        faces.align_by_eyes(np.zeros((80, 80, 3), np.uint8), (40, 40), (40, 40))


@pytest.mark.parametrize(
    "name, shape",
    [("a.png", (64, 64, 3)), ("b.png", (96, 96, 3)), ("c.jpg", (180, 250, 3)),
     ("d.jpeg", (500, 400, 3)), ("e.png", (120, 100)), ("f.png", (70, 70, 4)),
     ("g.bmp", (40, 48, 3))],
)  # fmt: skip
def test_load_aligned_face_gives_64x64_rgb(tmp_path, name, shape):
    rgb = np.zeros((*shape[:2], 3), np.uint8)
    rgb[:, : shape[1] // 2, 0] = 220  # left half red, right half blue
    rgb[:, shape[1] // 2 :, 2] = 220
    if len(shape) == 2:
        stored = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    else:
        stored = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA if shape[2] == 4 else cv2.COLOR_RGB2BGR)
    path = tmp_path / name
    path.write_bytes(cv2.imencode(path.suffix, stored)[1].tobytes())
    face = faces.load_aligned_face(path)
    assert face.shape == (64, 64, 3) and face.dtype == np.uint8
    if len(shape) == 3:  # channels come back in RGB order
        assert face[32, 5, 0] > 150 and face[32, 5, 2] < 60
        assert face[32, 58, 2] > 150 and face[32, 58, 0] < 60
    else:
        assert np.all(face[..., 0] == face[..., 1]) and np.all(face[..., 1] == face[..., 2])
    assert faces.load_face(path, "aligned", size=128).shape == (128, 128, 3)


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.png", b"", "empty file"),
        ("notes.jpg", b"this is not an image\n" * 20, CORRUPT),
        ("noise.png", PNG_SIGNATURE + bytes(range(256)) * 4 + b"IEND\xaeB`\x82", CORRUPT),
        ("random.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9", CORRUPT),
    ],
)  # fmt: skip
def test_bad_files_are_reported_with_path_and_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    for load in (faces.load_aligned_face, faces.detect_and_align_face):
        with pytest.raises(errors.BadInputError) as info:
            load(path)
        assert info.value.path == str(path)
        assert info.value.reason.startswith(reason)
        assert name in str(info.value)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_images_are_corrupt(tmp_path, suffix):
    image = np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8)
    data = _write(tmp_path / f"full{suffix}", image).read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.BadInputError, match="corrupt or unreadable image"):
        faces.load_aligned_face(path)


def test_missing_and_tiny_files(tmp_path):
    with pytest.raises(errors.BadInputError, match="file not found"):
        faces.load_aligned_face(tmp_path / "nope.png")
    with pytest.raises(errors.BadInputError, match="is a directory"):
        faces.load_aligned_face(tmp_path)
    path = _write(tmp_path / "tiny.png", np.zeros((18, 20, 3), np.uint8))
    with pytest.raises(errors.BadInputError, match="image too small: 20x18"):
        faces.load_aligned_face(path)


@pytest.mark.parametrize("kind", ["noise", "flat"])
def test_detect_without_a_face(tmp_path, kind):
    rng = np.random.default_rng(0)
    image = (
        rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        if kind == "noise"
        else np.full((240, 320, 3), (90, 140, 200), np.uint8)
    )
    path = _write(tmp_path / f"{kind}.png", image)
    with pytest.raises(errors.BadInputError) as info:
        faces.detect_and_align_face(path)
    assert info.value.reason == "no face found"


def test_largest_box():
    assert faces.largest_box([]) is None
    assert faces.largest_box([(0, 0, 10, 10), (5, 5, 30, 20), (1, 1, 20, 20)]) == (5, 5, 30, 20)


def test_choose_eye_pair_picks_the_plausible_pair():
    face = (100, 100, 200, 200)  # midline x = 200
    left, right = (140, 160, 40, 30), (225, 162, 40, 30)  # centres (160, 175), (245, 177)
    distractors = [
        (150, 110, 30, 20),  # an eyebrow-ish blob near the top left
        (240, 190, 20, 14),  # below the right eye
        (185, 270, 30, 30),  # a nostril, in the lower half: ignored
        (400, 150, 40, 30),  # outside the face
    ]
    pair = faces.choose_eye_pair([left, *distractors, right], face)
    assert pair == ((160.0, 175.0), (245.0, 177.0))
    assert faces.choose_eye_pair([left], face) is None
    # Both on one side of the midline, or a steep tilt: no pair.
    assert faces.choose_eye_pair([left, (165, 150, 30, 30)], face) is None
    assert faces.choose_eye_pair([left, (225, 220, 40, 30)], face) is None


def test_face_without_eyes_is_reported(tmp_path, monkeypatch):
    path = _write(tmp_path / "face.png", np.full((120, 120, 3), 100, np.uint8))
    monkeypatch.setattr(faces, "detect_face_and_eyes", lambda image: ((10, 10, 100, 100), []))
    with pytest.raises(errors.BadInputError) as info:
        faces.detect_and_align_face(path)
    assert info.value.reason == "no eyes found in the face"
    one_eye = lambda image: ((10, 10, 100, 100), [(25, 30, 20, 20)])
    monkeypatch.setattr(faces, "detect_face_and_eyes", one_eye)
    with pytest.raises(errors.BadInputError, match="no eyes found in the face"):
        faces.load_face(path, "detect")


def test_detect_and_align_drawn_faces_in_photos(tmp_path):
    """Haar finds most synthetic faces: put some, eyes known, in bigger tilted photos."""
    people = corpus_a.make_identities(12, seed=0)
    found = 0
    for i, person in enumerate(people):
        crop, _ = corpus_a.render_face(person, np.random.default_rng(i), 96, jitter=False)
        # Into a 320x280 photo: scaled x2, tilted 8 degrees, off centre.
        m = _similarity(8 if i % 2 else -8, 2.0, (40, 30), (47.5, 47.5))
        m[:, 2] += (160 - 47.5, 140 - 47.5)
        photo = cv2.warpAffine(
            crop, m, (320, 280), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
        )
        truth = np.array([m[:, :2] @ eye + m[:, 2] for eye in faces.canonical_eyes(96)])
        path = _write(tmp_path / f"photo{i}.png", photo)
        try:
            aligned = faces.detect_and_align_face(path)
        except errors.BadInputError as err:
            assert err.reason.startswith(("no face found", "no eyes found in the face"))
            continue
        found += 1
        face, eyes = faces.detect_face_and_eyes(photo)
        pair = np.array(faces.choose_eye_pair(eyes, face))
        to_64 = 19.0 / np.linalg.norm(truth[1] - truth[0])
        assert np.abs(pair - truth).max() * to_64 < 2.0, (person.name, pair, truth)
        np.testing.assert_array_equal(aligned, faces.align_by_eyes(photo, pair[0], pair[1]))
    assert found >= 4
