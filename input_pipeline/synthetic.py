"""A built-in voice/face corpus in the real VoxCeleb1 / VGGFace layouts, so everything runs offline.

    OUT/voices/id10001/<11-char video id>/00001.wav   16 kHz mono 16-bit PCM, 2.5-4.5 s (or
                                                       VoxCeleb1's lengths: `durations`)
    OUT/faces/Fiona_Hale/00001.png                     aligned RGB crops (VGG_ALL_FRONTAL style)
    OUT/vox1_meta.csv                                  the real table's tab-separated columns
    OUT/identities.json                                each identity's latent attributes

Each identity has latent attributes. Some drive both the voice and the face: gender, age,
vocal-tract length (voice: formant scale, F0, jitter, breathiness; face: width, length, jaw, hair
length, beard, grey hair, wrinkles) and the region a person grew up in (voice: an accent, i.e.
vowel qualities, which vowels and consonants are frequent, rhythm and intonation; face: the ranges
of skin tone and of hair and eye colour, and the Nationality column, as in VoxCeleb where accent
and appearance both follow nationality). Others are face-only and cannot be predicted from the
voice (the tone and colours within a region's range, glasses, and per photo the background,
clothes, pose, expression and lighting), or voice-only (speaking rate, pitch range, intonation).
A voice-to-face model beats chance only by learning the shared ones.

Voices come from a source-filter model: a band-limited glottal pulse train at the identity's F0
with phrase intonation, jitter and shimmer, plus aspiration noise, shaped by four formants scaled
by vocal-tract length, over consonant-vowel syllables at the identity's speaking rate, in phrases
separated by pauses, with leading and trailing silence over a low noise floor (so VAD has work).
Faces are drawn with OpenCV in the canonical frame of `faces.LEFT_EYE` / `faces.RIGHT_EYE`,
supersampled 4x, and shrunk with INTER_AREA.

This is corpus "a". `make_corpus(..., corpus="b")` writes corpus "b" in the same layout, made
otherwise (`synthetic_b`: FOF voices, shaded per-pixel faces, other voice-face links), to tune a
recipe on one and confirm it on the other.

The same arguments give byte-identical files; a file depends only on the seed, the number of
identities, its identity and its index, so more utterances or faces add files and change none.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import statistics
import wave

import cv2
import numpy as np

from v2f_jax.input_pipeline import faces as facelib
from v2f_jax.input_pipeline.constants import IMAGE_SIZE, META_COLUMNS, SAMPLE_RATE, TEST_INITIALS

MIN_SECONDS, MAX_SECONDS = 2.5, 4.5  # a file's length with durations="short"
FACE_SIZE = 96

# Utterance lengths: "short" (the default: quick to make and to prepare) or "voxceleb", like
# VoxCeleb1's (at least 4 s, mean 8.2 s, a long right tail; Nagrani et al. 2017), for benchmarks
# that need realistic lengths.
DURATIONS = ("short", "voxceleb")
# Corpus kinds: "a", made here; "b", made otherwise by `synthetic_b` (same layout).
CORPORA = ("a", "b")
# "voxceleb" draws the speech, what the VAD of `v2f prepare` keeps (`_plan`), not the file: 4 s
# plus a lognormal excess (median 2.7 s, sigma 1.0), truncated at 30 s in all: mean 8.0 s, median
# 6.7 s, 99th percentile 24 s. The last syllable runs past the draw, so the VAD keeps about 0.2 s
# more (-0.3 to +0.6 s): mean ~8.2 s, median ~6.9 s. Files add the leading and trailing silence
# and the pauses: mean ~11 s. (VoxCeleb1's longest is 145 s; the cap keeps one file from taking
# over a small corpus.)
VOX_MIN_SECONDS, VOX_MAX_SECONDS = 4.0, 30.0
_VOX_EXCESS_MEDIAN, _VOX_EXCESS_SIGMA = 2.7, 1.0
# What the VAD of `v2f prepare` keeps of the pause after a phrase, measured (webrtcvad's hangover).
_VAD_KEEPS_AFTER_PHRASE = 0.08

_FEMALE_NAMES = {
    "test": "Abigail Ada Alice Amara Anna Beatrice Bella Bianca Carla Chloe Clara Daisy Dana Daria "
    "Elena Eliza Emma Esther",
    "train": "Fiona Freya Grace Greta Hannah Helena Iris Isla Jade Julia Kate Kira Laura Lena Maya "
    "Mira Nadia Nina Olivia Paula Priya Quinn Rosa Ruth Sara Sofia Tara Tessa Uma Vera Wendy Yara "
    "Zoe",
}
_MALE_NAMES = {
    "test": "Aaron Adam Alan Arjun Ben Boris Bruno Carlos Colin Daniel David Dev Eli Emil Ethan",
    "train": "Felix Frank Gavin George Hugo Ian Ivan Jack James Karl Kenji Leo Liam Marco Max "
    "Nikhil Noah Omar Oscar Paul Pedro Rafael Ryan Sam Simon Tom Victor Walter Xavier Yusuf Zane",
}
_SURNAMES = (
    "Abbott Adeyemi Baker Bell Brooks Carter Chen Cole Dalton Diaz Doyle Ellis Evans Fischer Ford "
    "Fox Garcia Gray Hale Hayes Ito Jensen Kane Khan Kowalski Larsen Lopez Mason Mendes Meyer "
    "Moreno Nash Nguyen Novak Okafor Olsen Park Patel Reyes Rossi Sato Shaw Silva Stone Tanaka "
    "Turner Vance Varga Walsh Webb Weiss Young Zhang Ziegler"
).split()
# Enough unique names in the smallest group (male, A-E): 15 first names x 54 surnames, ~1/6 of all.
MAX_IDENTITIES = 4000
_VIDEO_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

_SKIN_TONES = (
    (255, 224, 196), (241, 194, 167), (233, 190, 150), (224, 172, 138), (210, 160, 120),
    (198, 134, 103), (180, 120, 85), (161, 102, 72), (120, 75, 50), (90, 56, 37),
)  # fmt: skip
_HAIR_COLOURS = (
    ((25, 20, 18), 0.30), ((60, 40, 30), 0.25), ((100, 70, 45), 0.15), ((150, 110, 70), 0.10),
    ((205, 170, 110), 0.10), ((150, 60, 30), 0.05), ((110, 45, 30), 0.05),
)  # fmt: skip
_EYE_COLOURS = (
    (90, 55, 30), (50, 30, 20), (70, 110, 160), (80, 120, 80), (120, 95, 50), (120, 130, 140),
)  # fmt: skip
_GREY_HAIR = np.array([205.0, 205.0, 205.0])


@dataclasses.dataclass(frozen=True)
class Region:
    """Where a speaker grew up: the nationalities it covers, the ranges of skin tone (indices into
    `_SKIN_TONES`, light to dark) and hair and eye colour (weights over `_HAIR_COLOURS`,
    `_EYE_COLOURS`), and an accent (vowel formant scaling, voice quality, vowel and consonant
    frequencies, rhythm and intonation)."""

    name: str
    share: float  # of all identities
    nationalities: tuple[str, ...]
    skin_tones: tuple[int, int]  # [first, last] index
    hair_weights: tuple[float, ...]
    eye_weights: tuple[float, ...]
    formant_scale: tuple[float, float, float]  # multiplies every vowel's F1, F2 and F3
    source_slope_db: float  # per octave above 250 Hz, of the glottal source: steeper, darker
    vowel_weights: tuple[float, ...]  # over _VOWELS: i I e ae a o u er
    onset_weights: dict  # multiplies _ONSETS' probabilities
    rate_offset: float  # syllables per second
    pitch_range_offset: float  # semitones
    rising_phrases: float  # probability that a phrase ends rising


_REGIONS = (
    Region(
        name="northern", share=0.36,
        nationalities=("USA", "USA", "UK", "Canada", "Australia", "Ireland", "Germany", "Sweden",
                       "Poland"),
        skin_tones=(0, 3), hair_weights=(0.2, 0.25, 0.2, 0.15, 0.12, 0.03, 0.05),
        eye_weights=(0.15, 0.1, 0.35, 0.2, 0.1, 0.1),
        formant_scale=(1.0, 1.0, 1.0), source_slope_db=6.0,
        vowel_weights=(1.2, 1.6, 0.8, 1.4, 0.6, 0.6, 0.7, 1.6), onset_weights={"s": 1.3, "h": 1.4},
        rate_offset=0.0, pitch_range_offset=0.0, rising_phrases=0.12,
    ),
    Region(
        name="southern", share=0.2,
        nationalities=("Italy", "Spain", "France", "Brazil", "Mexico", "USA"),
        skin_tones=(2, 5), hair_weights=(0.5, 0.35, 0.12, 0.02, 0.0, 0.0, 0.01),
        eye_weights=(0.5, 0.35, 0.04, 0.05, 0.06, 0.0),
        formant_scale=(1.14, 0.92, 1.0), source_slope_db=5.0,
        vowel_weights=(1.2, 0.2, 1.5, 0.3, 2.0, 1.5, 1.0, 0.1),
        onset_weights={"none": 1.5, "h": 0.2, "sh": 0.4},
        rate_offset=0.7, pitch_range_offset=1.0, rising_phrases=0.3,
    ),
    Region(
        name="south_asian", share=0.15, nationalities=("India", "India", "UK", "USA"),
        skin_tones=(5, 8), hair_weights=(0.8, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0),
        eye_weights=(0.6, 0.4, 0.0, 0.0, 0.0, 0.0),
        formant_scale=(0.92, 1.1, 0.86), source_slope_db=7.5,
        vowel_weights=(1.4, 0.8, 1.4, 0.3, 1.6, 0.8, 1.0, 0.3),
        onset_weights={"stop": 1.8, "nasal": 1.4, "f": 0.3},
        rate_offset=0.4, pitch_range_offset=0.5, rising_phrases=0.35,
    ),
    Region(
        name="east_asian", share=0.15, nationalities=("China", "Japan", "USA", "Canada"),
        skin_tones=(1, 3), hair_weights=(0.95, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0),
        eye_weights=(0.3, 0.7, 0.0, 0.0, 0.0, 0.0),
        formant_scale=(0.88, 1.14, 1.08), source_slope_db=4.5,
        vowel_weights=(1.6, 0.3, 1.0, 0.2, 1.6, 1.2, 1.6, 0.4),
        onset_weights={"none": 1.6, "sh": 1.6, "s": 0.5},
        rate_offset=-0.3, pitch_range_offset=2.2, rising_phrases=0.08,
    ),
    Region(
        name="west_african", share=0.14, nationalities=("Nigeria", "Nigeria", "UK", "USA"),
        skin_tones=(7, 9), hair_weights=(0.95, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0),
        eye_weights=(0.2, 0.8, 0.0, 0.0, 0.0, 0.0),
        formant_scale=(1.1, 0.96, 0.92), source_slope_db=8.5,
        vowel_weights=(1.0, 0.3, 1.6, 0.6, 1.8, 1.4, 1.2, 0.1),
        onset_weights={"nasal": 1.8, "stop": 1.3, "sh": 0.3},
        rate_offset=-0.3, pitch_range_offset=1.6, rising_phrases=0.2,
    ),
)  # fmt: skip
REGIONS = {r.name: r for r in _REGIONS}


@dataclasses.dataclass(frozen=True)
class Identity:
    """One synthetic person. Units: years, cm, Hz, syllables per second, 64-pixel face frame."""

    voxceleb_id: str
    name: str
    gender: str  # "m" | "f"
    nationality: str
    region: str  # a key of REGIONS
    split: str  # "dev" | "test", the Set column
    stream: int  # per-identity entropy: every file's generator derives from it
    # Shared by voice and face.
    age: float
    vtl_cm: float
    # Voice only.
    f0_hz: float
    pitch_range_st: float
    speaking_rate: float
    breathiness: float
    jitter: float
    # Face geometry from vtl_cm and gender, in the 64-pixel frame of `faces.LEFT_EYE`.
    face_half_width: float
    chin_drop: float
    forehead: float
    jaw_exponent: float
    # Face only (and what the voice implies: hair length from gender, beard, grey from age).
    skin_rgb: tuple[int, int, int]
    hair_rgb: tuple[int, int, int]
    eye_rgb: tuple[int, int, int]
    lip_rgb: tuple[int, int, int]
    hair_style: str  # "short", "buzz", "bald", "bob", "long"
    beard: str  # "", "stubble", "moustache", "goatee", "full"
    glasses: bool


# Generator purposes: 0 attributes, 1 video ids (index 0) and choices (utterance + 1),
# 2 utterance `index`, 3 face `index`.
def _identity_rng(identity: Identity, purpose: int, index: int) -> np.random.Generator:
    return np.random.default_rng([identity.stream, purpose, index])


def _choose(rng: np.random.Generator, weights) -> int:
    w = np.asarray(weights, float)
    return int(rng.choice(w.size, p=w / w.sum()))


def _sample_attributes(rng: np.random.Generator, gender: str, given: dict | None = None) -> dict:
    """Every attribute of one identity of `gender`, drawn from `rng`.

    `given` fixes any of the latent draws `region`, `age` and `vtl_cm` (an identity that shares
    them with another: what a voice can tell about a face, for experiments); the rest are drawn.
    """
    given = given or {}
    male = gender == "m"
    region = _REGIONS[_choose(rng, [r.share for r in _REGIONS])]
    region = REGIONS[given.get("region", region.name)]
    age = float(given.get("age", rng.uniform(20, 70)))
    if male:
        vtl = float(np.clip(rng.normal(17.2, 0.7), 15.6, 19.0))
        f0 = float(np.clip(rng.normal(115, 13) + 0.25 * (age - 40), 85, 155))
    else:
        vtl = float(np.clip(rng.normal(14.9, 0.6), 13.5, 16.5))
        f0 = float(np.clip(rng.normal(212, 18) - 0.5 * (age - 40), 165, 270))
    vtl = float(given.get("vtl_cm", vtl))
    z = (vtl - 16.0) / 1.3  # standardised over both genders
    first, last = region.skin_tones
    skin = np.array(_SKIN_TONES[int(rng.integers(first, last + 1))], float)
    skin = np.clip(skin * rng.uniform(0.94, 1.04) + rng.normal(0, 4, 3), 0, 255)
    hair = np.array(_HAIR_COLOURS[_choose(rng, region.hair_weights)][0], float)
    grey = float(np.clip((age - 38) / 30 + rng.normal(0, 0.1), 0, 1)) ** 1.3
    hair = (1 - grey) * hair + grey * _GREY_HAIR
    eye = np.array(_EYE_COLOURS[_choose(rng, region.eye_weights)], float)
    lip = skin * 0.78 + np.array([30.0, -10.0, -5.0])
    if not male and rng.random() < 0.4:
        lip = np.array([175.0, 50, 60]) * rng.uniform(0.7, 1.0)
    if male:
        bald_p = max(0.0, (age - 45) / 40)
        styles = ["bald", "short", "buzz", "long"]
        style = rng.choice(styles, p=[bald_p, *(np.array([0.75, 0.2, 0.05]) * (1 - bald_p))])
        beards = ["", "stubble", "moustache", "goatee", "full"]
        beard = rng.choice(beards, p=[0.55, 0.15, 0.08, 0.08, 0.14])
    else:
        style = rng.choice(["long", "bob", "short"], p=[0.6, 0.3, 0.1])
        beard = ""
    to_rgb = lambda c: tuple(int(v) for v in np.clip(np.round(c), 0, 255))
    breathiness = 0.04 + (0.0 if male else 0.03) + 0.0012 * (age - 20) + rng.normal(0, 0.01)
    return dict(
        nationality=region.nationalities[int(rng.integers(len(region.nationalities)))],
        region=region.name,
        age=round(age, 2),
        vtl_cm=round(vtl, 3),
        f0_hz=round(f0, 2),
        pitch_range_st=round(
            float(rng.uniform(2.0, 4.5) + (0.0 if male else 1.0) + region.pitch_range_offset), 3
        ),
        speaking_rate=round(
            float(np.clip(rng.normal(4.6, 0.5) - 0.01 * (age - 40) + region.rate_offset, 3.3, 6.5)),
            3,
        ),
        breathiness=round(float(np.clip(breathiness, 0.02, 0.2)), 4),
        jitter=round(float(0.004 + 0.0002 * (age - 20) + abs(rng.normal(0, 0.002))), 5),
        face_half_width=round(float(18.0 + 2.3 * z + rng.normal(0, 0.4)), 3),
        chin_drop=round(float(25.5 + 1.8 * z + rng.normal(0, 0.6)), 3),
        forehead=round(float(rng.normal(20.5, 0.8) + (0.8 if male and age > 45 else 0.0)), 3),
        jaw_exponent=round(float((3.0 if male else 2.2) + 0.15 * z + rng.normal(0, 0.15)), 3),
        skin_rgb=to_rgb(skin),
        hair_rgb=to_rgb(hair),
        eye_rgb=to_rgb(eye),
        lip_rgb=to_rgb(lip),
        hair_style=str(style),
        beard=str(beard),
        glasses=bool(rng.random() < 0.12),
    )  # fmt: skip


# What a voice can tell about a face: the latent draws both depend on (gender is kept always).
VOICE_PREDICTABLE = ("age", "vtl_cm", "region")


def lookalike(
    identity: Identity, rng: np.random.Generator, shared: tuple[str, ...] = VOICE_PREDICTABLE
) -> Identity:
    """Another person with `identity`'s gender and its `shared` latent draws (any of
    `VOICE_PREDICTABLE`), everything else drawn anew from `rng`: averaging the faces of many is
    what a perfect voice-to-face model could draw (benchmarks/demo_ceiling.py)."""
    given = {k: getattr(identity, k) for k in shared}
    attrs = _sample_attributes(rng, identity.gender, given)
    return dataclasses.replace(identity, **attrs, stream=int(rng.integers(2**62)))


def make_identities(n: int, seed: int = 0) -> list[Identity]:
    """`n` identities, sorted by name with ids id10001... in that order (as in VoxCeleb1).

    Genders alternate and every third identity of each gender has an A-E name (the reference's
    test split); the Set column marks exactly those "test", so either split rule agrees.
    """
    return draw_people(n, seed, _SURNAMES, _sample_attributes, Identity)


def draw_people(n: int, entropy, surnames, sample_attributes, identity_type) -> list:
    """`make_identities` for any corpus: its surnames, its `sample_attributes(rng, gender)` and
    its identity type; `entropy` seeds everything (`np.random.SeedSequence`)."""
    if not 4 <= n <= MAX_IDENTITIES:
        raise ValueError(
            f"need 4 to {MAX_IDENTITIES} identities (4: both genders on both sides of the split), "
            f"got {n}"
        )
    children = np.random.SeedSequence(entropy).spawn(n + 1)
    rng = np.random.default_rng(children[0])
    order = rng.permutation(n)
    names, people = set(), []
    for i, child in enumerate(children[1:]):
        gender = "m" if order[i] % 2 == 0 else "f"
        side = "test" if (order[i] // 2) % 3 == 1 else "train"
        firsts = (_MALE_NAMES if gender == "m" else _FEMALE_NAMES)[side].split()
        while True:
            name = f"{firsts[rng.integers(len(firsts))]}_{surnames[rng.integers(len(surnames))]}"
            if name not in names:
                break
        names.add(name)
        stream = int(child.generate_state(1, np.uint64)[0] >> np.uint64(1))
        attrs = sample_attributes(np.random.default_rng([stream, 0]), gender)
        people.append((name, gender, side, stream, attrs))
    people.sort(key=lambda p: p[0])
    return [
        identity_type(
            voxceleb_id=f"id{10001 + i}",
            name=name,
            gender=gender,
            split="test" if side == "test" else "dev",
            stream=stream,
            **attrs,
        )  # fmt: skip
        for i, (name, gender, side, stream, attrs) in enumerate(people)
    ]


# ---------------------------------------------------------------------------------------------
# Voices.

# F1-F4 of a 17 cm vocal tract (adult male averages, Peterson & Barney 1952), Hz.
_VOWELS = np.array(
    [
        [270, 2290, 3010, 3500],  # i
        [390, 1990, 2550, 3500],  # I
        [530, 1840, 2480, 3500],  # e
        [660, 1720, 2410, 3500],  # ae
        [730, 1090, 2440, 3500],  # a
        [570, 840, 2410, 3500],  # o
        [300, 870, 2240, 3500],  # u
        [490, 1350, 1690, 3500],  # er
    ],
    float,
)
_NASAL = np.array([250, 1100, 2300, 3300], float)
_BANDWIDTHS = np.array([80, 100, 140, 200], float)
# Onset consonant: probability, fricative noise centre (Hz) and bandwidth (Hz).
_ONSETS = {
    "none": (0.25, 0, 0),
    "s": (0.12, 6000, 2500),
    "sh": (0.08, 3200, 1500),
    "f": (0.08, 4500, 5000),
    "h": (0.07, 0, 0),
    "stop": (0.25, 2500, 3000),
    "nasal": (0.15, 0, 0),
}
_NFFT, _HOP = 512, 128
# Levels relative to the voiced signal's (set once from the spectra): aspiration and fricatives.
_BREATH_LEVEL = 0.2
_FRIC_LEVEL = 0.2
_INHALE_LEVEL = 0.015


def _raised_cosine(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n - n // 2)
    if attack:
        env[:attack] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(attack) + 0.5) / attack)
    if release:
        env[n - release :] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(release) + 0.5) / release)
    return env


def _smooth_noise(rng: np.random.Generator, n: int, rate_hz: float) -> np.ndarray:
    """Unit-variance noise that varies at about `rate_hz`, `n` samples long."""
    step = SAMPLE_RATE / rate_hz
    knots = rng.normal(size=int(n / step) + 3)
    return np.interp(np.arange(n) / step, np.arange(knots.size), knots)


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    c = np.cumsum(np.pad(x, (width // 2 + 1, width - width // 2), mode="edge"))
    return (c[width:] - c[:-width])[: x.size] / width


def _stft(x: np.ndarray) -> np.ndarray:
    pad = np.pad(x, (_NFFT // 2, _NFFT // 2 + _HOP))
    frames = np.lib.stride_tricks.sliding_window_view(pad, _NFFT)[::_HOP]
    return np.fft.rfft((frames * _WINDOW).astype(np.float32), axis=1)


def _istft(spec: np.ndarray, n: int) -> np.ndarray:
    frames = np.fft.irfft(spec.astype(np.complex64), _NFFT, axis=1) * _WINDOW
    n_frames, overlap = frames.shape[0], _NFFT // _HOP
    blocks = np.zeros((n_frames + overlap - 1, _HOP))
    norm = np.zeros_like(blocks)
    win2 = (_WINDOW**2).reshape(overlap, _HOP)
    parts = frames.reshape(n_frames, overlap, _HOP)
    for j in range(overlap):
        blocks[j : j + n_frames] += parts[:, j]
        norm[j : j + n_frames] += win2[j]
    out = blocks.reshape(-1) / np.maximum(norm.reshape(-1), 1e-3)
    return out[_NFFT // 2 : _NFFT // 2 + n]


_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_NFFT) / _NFFT)
_FREQS = np.fft.rfftfreq(_NFFT, 1 / SAMPLE_RATE)


def _formant_envelope(formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """`[T, 4]` formants and bandwidths (Hz) -> `[T, F]` all-pole magnitude response, 1 at DC."""
    f = _FREQS[None, :].astype(np.float32)
    power = np.ones((formants.shape[0], f.size), np.float32)
    for k in range(formants.shape[1]):
        fk = formants[:, k : k + 1].astype(np.float32)
        hb2 = (bandwidths[:, k : k + 1].astype(np.float32) / 2) ** 2
        power *= (fk**2 + hb2) ** 2 / (((f - fk) ** 2 + hb2) * ((f + fk) ** 2 + hb2))
    return np.sqrt(power)


def voxceleb_speech_seconds(rng: np.random.Generator) -> float:
    """One draw of the "voxceleb" speech length, in [VOX_MIN_SECONDS, VOX_MAX_SECONDS] s.

    One uniform draw through the inverse CDF, so the truncation needs no rejection loop.
    """
    normal = statistics.NormalDist()
    mu, sigma = math.log(_VOX_EXCESS_MEDIAN), _VOX_EXCESS_SIGMA
    top = normal.cdf((math.log(VOX_MAX_SECONDS - VOX_MIN_SECONDS) - mu) / sigma)
    u = top * (1.0 - rng.random())  # in (0, top]: inv_cdf(0) is -inf
    return VOX_MIN_SECONDS + math.exp(mu + sigma * normal.inv_cdf(u))


def _plan(
    identity: Identity, rng: np.random.Generator, durations: str = "short"
) -> tuple[int, list]:
    """Timing: `[(start, end, label, info)]` in samples, labels silence/pause/consonant/vowel.

    "short" draws the file's length and fits phrases into it. "voxceleb" draws the length of the
    speech instead (`voxceleb_speech_seconds`: syllables, which the VAD of `v2f prepare` keeps,
    not the leading and trailing silence or the pauses, which it drops), adds syllables until it
    is reached, and the file ends after the trailing silence.
    """
    if durations == "short":
        duration, speech = rng.uniform(MIN_SECONDS, MAX_SECONDS), math.inf
    elif durations == "voxceleb":
        duration, speech = math.inf, voxceleb_speech_seconds(rng)
    else:
        raise ValueError(f"durations must be one of {DURATIONS}, got {durations!r}")
    lead, trail = rng.uniform(0.15, 0.45), rng.uniform(0.15, 0.45)
    region = REGIONS[identity.region]  # the accent
    kinds = list(_ONSETS)
    probs = np.array([_ONSETS[k][0] * region.onset_weights.get(k, 1.0) for k in kinds])
    vowel_p = np.asarray(region.vowel_weights) / np.sum(region.vowel_weights)
    events, t, end = [(0.0, lead, "silence", {})], lead, duration - trail
    spoken = 0.0
    while True:
        n_syllables = int(rng.integers(2, 7))
        accent = int(rng.integers(n_syllables))
        question = bool(rng.random() < region.rising_phrases)
        phrase_start, syllables = t, []
        for k in range(n_syllables):
            length = rng.uniform(0.75, 1.3) / identity.speaking_rate
            if t + length > end or spoken >= speech:
                break
            onset = kinds[rng.choice(len(kinds), p=probs / probs.sum())]
            split = t + (0.0 if onset == "none" else length * rng.uniform(0.25, 0.4))
            info = dict(
                onset=onset, vowel=int(rng.choice(len(_VOWELS), p=vowel_p)),
                stress=float(rng.uniform(0.55, 1.0)), accent=k == accent, question=question,
            )  # fmt: skip
            if split > t:
                syllables.append((t, split, "consonant", info))
            syllables.append((split, t + length, "vowel", info))
            t += length
            spoken += length
        for *_, info in syllables:
            info["phrase_span"] = (phrase_start, t)
        events += syllables
        if syllables:
            spoken += _VAD_KEEPS_AFTER_PHRASE
        pause = rng.uniform(0.25, 0.55)
        if not syllables or t + pause + 1.0 / identity.speaking_rate > end or spoken >= speech:
            break
        events.append((t, t + pause, "pause", dict(inhale=bool(rng.random() < 0.4))))
        t += pause
    if durations != "short":
        duration = t + trail
    events.append((t, duration, "silence", {}))
    n = int(round(duration * SAMPLE_RATE))
    to_samples = lambda s: min(n, int(round(s * SAMPLE_RATE)))
    return n, [(to_samples(s), to_samples(e), label, info) for s, e, label, info in events]


def synthesize_voice(
    identity: Identity, rng: np.random.Generator, durations: str = "short"
) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """One utterance of `identity`, its length drawn as `durations` (one of `DURATIONS`) says.

    Returns:
      `(samples, segments)`: int16 `[N]` at 16 kHz, N/16000 in [2.5, 4.5] s ("short"), or at
      least 4 s of syllables plus leading and trailing silence and pauses ("voxceleb"); and the
      timing, `(start, end, label)` in samples with label "silence" (leading/trailing), "pause",
      "consonant" or "vowel".
    """
    n, events = _plan(identity, rng, durations)
    # Formant frequencies scale with 1/vocal-tract length; the accent moves F1 and F2.
    region = REGIONS[identity.region]
    vtl_scale = 17.0 / identity.vtl_cm * np.array([*region.formant_scale, 1.0])
    g_voice, g_breath, g_fric = np.zeros(n), np.zeros(n), np.zeros(n)
    semitones = np.zeros(n)
    n_frames = (n + _HOP) // _HOP + 1
    frame_time = np.arange(n_frames) * _HOP
    formant_targets = np.full((n_frames, 4), np.nan)
    fric_centre = np.full(n_frames, 4000.0)
    fric_width = np.full(n_frames, 3000.0)
    ms = SAMPLE_RATE // 1000
    for start, end, label, info in events:
        length = end - start
        if length <= 0:
            continue
        frames = (frame_time >= start) & (frame_time < end)
        if label == "vowel":
            env = _raised_cosine(length, 20 * ms, 40 * ms) * info["stress"]
            g_voice[start:end] = env
            g_breath[start:end] = env * identity.breathiness
            formant_targets[frames] = _VOWELS[info["vowel"]] * vtl_scale
        elif label == "consonant":
            onset = info["onset"]
            _, centre, width = _ONSETS[onset]
            fric_centre[frames], fric_width[frames] = centre or 4000.0, width or 3000.0
            vowel = _VOWELS[info["vowel"]] * vtl_scale
            if onset == "nasal":
                g_voice[start:end] = 0.3 * _raised_cosine(length, 15 * ms, 5 * ms)
                formant_targets[frames] = _NASAL * vtl_scale
            elif onset == "h":
                g_breath[start:end] = 0.5 * _raised_cosine(length, 15 * ms, 5 * ms)
                formant_targets[frames] = vowel
            elif onset == "stop":
                burst = min(length, 15 * ms)
                g_fric[end - burst : end] = 1.2 * _raised_cosine(burst, 2 * ms, 8 * ms)
                formant_targets[frames] = vowel
            else:
                g_fric[start:end] = _raised_cosine(length, 25 * ms, 10 * ms) * (
                    0.5 if onset == "f" else 1.0
                )
                formant_targets[frames] = vowel
        elif label == "pause" and info["inhale"]:
            inhale = min(length - 40 * ms, int(rng.uniform(0.12, 0.25) * SAMPLE_RATE))
            if inhale > 0:
                at = start + (length - inhale) // 2
                breath = _raised_cosine(inhale, inhale // 2, inhale // 2)
                g_breath[at : at + inhale] += _INHALE_LEVEL * breath
        if label in ("vowel", "consonant"):
            # Phrase intonation in semitones: declination, an accent, a final fall or rise.
            p0, p1 = (int(s * SAMPLE_RATE) for s in info["phrase_span"])
            r = identity.pitch_range_st
            pos = (np.arange(start, end) - p0) / max(1, p1 - p0)
            contour = r * (0.5 - pos)
            if info["accent"]:
                contour += 0.6 * r * np.sin(np.pi * np.arange(length) / length)
            tail = np.clip((pos - 0.85) / 0.15, 0, 1)
            contour += (0.8 * r if info["question"] else -0.3 * r) * tail
            semitones[start:end] = contour

    # Coarticulation: formants move smoothly between targets over ~40 ms.
    known = ~np.isnan(formant_targets[:, 0])
    if not known.any():
        formant_targets[:] = _VOWELS[4] * vtl_scale
        known[:] = True
    idx = np.arange(n_frames)
    log_f = np.stack(
        [np.interp(idx, idx[known], np.log(formant_targets[known, k])) for k in range(4)], axis=1
    )
    kernel = np.ones(5) / 5
    log_f = np.stack([np.convolve(np.pad(c, 2, mode="edge"), kernel, "valid") for c in log_f.T], 1)
    formants = np.exp(log_f)
    bandwidths = _BANDWIDTHS * (1 + 2 * identity.breathiness) * np.ones((n_frames, 1))
    tract = _formant_envelope(formants, bandwidths)
    # Smooth the intonation; add slow drift and jitter.
    semitones = _moving_average(semitones, 40 * ms)
    semitones += 0.4 * _smooth_noise(rng, n, 3.0)
    jitter = 1 + identity.jitter * _smooth_noise(rng, n, 80.0)
    f0 = identity.f0_hz * 2 ** (semitones / 12) * jitter

    # Glottal pulses, placed at sub-sample positions so their spectrum stays band-limited enough.
    phase = np.cumsum(f0 / SAMPLE_RATE)
    k = np.nonzero(np.diff(np.floor(phase)))[0] + 1
    pos = k - (phase[k] - np.floor(phase[k])) / (f0[k] / SAMPLE_RATE)
    amp = g_voice[k] * (1 + 2 * identity.jitter * rng.normal(size=k.size))
    base = np.floor(pos).astype(int)
    frac = pos - base
    pulses = np.zeros(n + 2)
    np.add.at(pulses, base, amp * (1 - frac))
    np.add.at(pulses, base + 1, amp * frac)
    pulses = pulses[:n] * np.sqrt(SAMPLE_RATE / identity.f0_hz)  # same level at any F0

    # Source spectra through the vocal tract: glottal/radiation tilt, about -6 dB/octave above
    # 250 Hz; the accent's voice quality makes it steeper or shallower.
    tilt = (1 + (_FREQS / 250) ** 2) ** (-region.source_slope_db / 12)
    # Aspiration (breathy voice, "h", inhaling) is white noise through the same vocal tract.
    breath = rng.normal(size=n) * g_breath * _BREATH_LEVEL
    fric_env = np.exp(-2.0 * ((_FREQS[None] - fric_centre[:, None]) / fric_width[:, None]) ** 2)
    fric = rng.normal(size=n) * g_fric
    spec = (_stft(pulses) * tilt + _stft(breath)) * tract + _FRIC_LEVEL * _stft(fric) * fric_env
    speech = _istft(spec, n)

    # Level: speech peaks at -9..-3 dBFS, over a floor of -78..-64 dBFS white noise.
    peak = np.max(np.abs(speech)) or 1.0
    speech *= 32767 * 10 ** (rng.uniform(-9, -3) / 20) / peak
    speech += rng.normal(size=n) * 32767 * 10 ** (rng.uniform(-78, -64) / 20)
    samples = np.clip(np.round(speech), -32768, 32767).astype(np.int16)
    return samples, [(s, e, label) for s, e, label, _ in events if e > s]


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM mono WAV; the bytes depend only on the samples."""
    with wave.open(os.fspath(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(np.asarray(samples, "<i2").tobytes())


# ---------------------------------------------------------------------------------------------
# Faces.

_SUPERSAMPLE = 4
_SHIFT = 4  # fractional bits for OpenCV's sub-pixel drawing


class _Canvas:
    """Draws in the 64-pixel face frame onto a supersampled RGB image through a pose transform."""

    def __init__(self, size: int, pose: np.ndarray, background: np.ndarray):
        self.side = size * _SUPERSAMPLE
        self.scale = self.side / IMAGE_SIZE
        self.pose = pose
        self.image = np.ascontiguousarray(background)

    def points(self, pts) -> np.ndarray:
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        q = pts @ self.pose[:, :2].T + self.pose[:, 2]
        q = (q + 0.5) * self.scale - 0.5
        return np.round(q * (1 << _SHIFT)).astype(np.int32)

    def _draw(self, draw, colour, alpha: float, pts: np.ndarray) -> None:
        if alpha >= 1.0:
            draw(self.image, tuple(float(c) for c in colour), np.zeros(2, np.int32))
            return
        # Translucent: draw a mask over the shape's bounding box only, then blend there.
        lo = np.maximum((pts.min(0) >> _SHIFT) - 8, 0)
        hi = np.minimum((pts.max(0) >> _SHIFT) + 9, self.side)
        if np.any(hi <= lo):
            return
        mask = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), np.uint8)
        draw(mask, 255, (lo * (1 << _SHIFT)).astype(np.int32))
        region = self.image[lo[1] : hi[1], lo[0] : hi[0]].astype(np.float32)
        a = mask[..., None].astype(np.float32) * (alpha / 255.0)
        region += a * (np.asarray(colour, np.float32) - region)
        self.image[lo[1] : hi[1], lo[0] : hi[0]] = np.round(region).astype(np.uint8)

    def fill(self, pts, colour, alpha: float = 1.0) -> None:
        q = self.points(pts)

        def draw(img, col, offset):
            cv2.fillPoly(img, [q - offset], col, cv2.LINE_AA, _SHIFT)

        self._draw(draw, colour, alpha, q)

    def line(self, pts, colour, width: float, alpha: float = 1.0) -> None:
        q = self.points(pts)
        thickness = max(1, round(width * self.scale * math.hypot(*self.pose[:, 0])))

        def draw(img, col, offset):
            cv2.polylines(img, [q - offset], False, col, thickness, cv2.LINE_AA, _SHIFT)

        self._draw(draw, colour, alpha, q)


def _ellipse(cx, cy, ax, ay, start=0.0, stop=360.0, n=40) -> np.ndarray:
    t = np.radians(np.linspace(start, stop, n))
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def _muted(rng: np.random.Generator, saturation: float) -> np.ndarray:
    """A random colour, `saturation` of the way from a random grey to a random hue."""
    grey = rng.uniform(30, 225)
    return np.clip(grey + saturation * (rng.uniform(10, 245, 3) - grey), 0, 255)


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """Landmarks of one identity's face in the 64-pixel frame."""

    lx: float  # left (image left) eye x
    rx: float
    ey: float  # eye y
    cx: float  # midline
    hw: float  # half width at the cheeks
    top: float  # forehead top
    chin: float
    nose_y: float
    mouth_y: float
    mouth_w: float  # half width

    @classmethod
    def of(cls, identity: Identity) -> _Geometry:
        (lx, ey), (rx, _) = facelib.LEFT_EYE, facelib.RIGHT_EYE
        hw = identity.face_half_width
        return cls(
            lx=lx, rx=rx, ey=ey, cx=(lx + rx) / 2, hw=hw,
            top=ey - identity.forehead, chin=ey + identity.chin_drop,
            nose_y=ey + 0.46 * identity.chin_drop, mouth_y=ey + 0.72 * identity.chin_drop,
            mouth_w=0.33 * hw + 0.6,
        )  # fmt: skip


def _face_outline(identity: Identity, n: int = 72) -> np.ndarray:
    """The face's skin outline: an egg on top, a superellipse jaw below; `[n, 2]`.

    Points run from the right cheek down around the chin, then over the forehead.
    """
    g = _Geometry.of(identity)
    cy = g.ey + 3.0  # widest at the cheeks
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    p = identity.jaw_exponent
    lower = s > 0
    x = np.where(lower, np.sign(c) * np.abs(c) ** (2 / p), c * 0.97)
    # A rounder jaw (smaller exponent) narrows toward a pointier chin.
    x = x * np.where(lower, 1 - (0.25 / p) * s**4, 1.0)
    y = np.where(lower, (g.chin - cy) * np.abs(s) ** (2 / p), (cy - g.top) * s)
    return np.stack([g.cx + g.hw * x, cy + y], axis=1)


def _draw_body(canvas: _Canvas, identity: Identity, g: _Geometry, clothes: np.ndarray) -> None:
    """What lies behind the face: long hair, shoulders, neck, ears."""
    skin = np.array(identity.skin_rgb, float)
    hair = np.array(identity.hair_rgb, float)
    cx, ey, hw = g.cx, g.ey, g.hw
    if identity.hair_style in ("long", "bob"):
        bottom = 70.0 if identity.hair_style == "long" else g.chin - 1.0
        crown = _ellipse(cx, ey + 2, hw + 4.5, ey + 6 - g.top, 180, 360)
        ends = [[cx + hw + 5.5, bottom], [cx - hw - 5.5, bottom]]
        canvas.fill(np.concatenate([crown, ends]), hair * 0.8)
    canvas.fill(_ellipse(cx, 74, hw * 2.1, 16), clothes)
    neck = hw * (0.62 if identity.gender == "m" else 0.5)
    canvas.fill(
        [[cx - neck, ey + 8], [cx + neck, ey + 8], [cx + neck * 1.05, 66], [cx - neck * 1.05, 66]],
        skin * 0.82,
    )
    for sign in (-1, 1):
        canvas.fill(_ellipse(cx + sign * (hw - 0.2), ey + 4.5, 2.4, 4.8), skin * 0.88)


def _draw_skin(canvas: _Canvas, identity: Identity, g: _Geometry, outline: np.ndarray) -> None:
    """The face, shaded darker toward its outline, and the lines of age."""
    skin = np.array(identity.skin_rgb, float)
    line = skin * 0.55
    centre = np.array([g.cx, g.ey + 3])
    canvas.fill(outline, skin * 0.92)
    for shrink, shade in ((0.93, 0.945), (0.87, 0.965), (0.8, 0.985), (0.72, 1.0)):
        canvas.fill((outline - centre) * shrink + centre, skin * shade)
    age, cx, ey = identity.age, g.cx, g.ey
    if age <= 38:
        return
    a = min(0.5, 0.12 + 0.012 * (age - 38))
    for i in range(min(3, 1 + int((age - 38) // 10))):  # forehead
        canvas.line(_ellipse(cx, ey - 2.5 - 2.2 * i, g.hw * 0.45, 6, 235, 305, 12), line, 0.45, a)
    for sign in (-1, 1):
        fold = [[cx + sign * dx, ey + dy] for dx, dy in ((3.2, 10.5), (5.0, 14.5), (6.0, 18.5))]
        canvas.line(fold, line, 0.5, a)
        x0 = (g.lx if sign < 0 else g.rx) + sign * 4.2
        for dy in (-1.3, 1.3):  # crow's feet
            canvas.line([[x0, ey], [x0 + sign * 2.0, ey + dy]], line, 0.35, a)
    if age > 50:
        for x0 in (g.lx, g.rx):
            canvas.line(_ellipse(x0, ey + 1.0, 3.0, 1.8, 20, 160, 10), line, 0.4, a * 0.8)


def _draw_beard(canvas: _Canvas, identity: Identity, g: _Geometry, outline: np.ndarray) -> None:
    if not identity.beard:
        return
    cx, mouth_y, mouth_w = g.cx, g.mouth_y, g.mouth_w
    colour = np.array(identity.hair_rgb, float) * 0.85
    if identity.beard in ("full", "stubble"):
        centre = np.array([cx, g.ey + 3])
        jaw = (outline[outline[:, 1] > g.ey + 9] - centre) * 1.03 + centre  # right to left
        upper = _ellipse(cx, mouth_y - 1.5, g.hw * 0.95, 2.2, 180, 360, 16)  # left to right
        if identity.beard == "full":
            canvas.fill(np.concatenate([jaw, upper]), colour, 0.9)
        else:
            canvas.fill(np.concatenate([jaw, upper]), colour * 0.6, 0.3)
    if identity.beard == "goatee":
        canvas.fill(_ellipse(cx, mouth_y + 3.5, mouth_w + 0.8, g.chin - mouth_y - 2.5), colour, 0.9)
    if identity.beard in ("full", "moustache", "goatee"):
        top = _ellipse(cx, mouth_y - 1.0, mouth_w + 1.0, 1.9, 180, 360, 16)
        ends = [[cx + mouth_w + 0.5, mouth_y - 0.3], [cx - mouth_w - 0.5, mouth_y - 0.3]]
        canvas.fill(np.concatenate([top, ends]), colour)


def _draw_hair(canvas: _Canvas, identity: Identity, g: _Geometry, part: float) -> None:
    """Hair over the head: a cap down to the hairline, side locks for long hair."""
    hair = np.array(identity.hair_rgb, float)
    cx, ey, hw, top, style = g.cx, g.ey, g.hw, g.top, identity.hair_style
    if style == "bald":
        for sign in (-1, 1):
            x0 = cx + sign * (hw + 0.8)
            corners = ((0, -6), (1.8, -5), (1.5, 2), (-0.4, 2))
            side = [[x0 - sign * dx, ey + dy] for dx, dy in corners]
            canvas.fill(side, hair)
        return
    crown = _ellipse(cx, ey + 3, hw + 1.3, ey + 5.2 - top, 180, 360, 40)  # left to right
    if style in ("long", "bob"):
        hairline = [
            [cx + hw * 0.98, ey + 8], [cx + hw * 0.75, ey - 7], [cx + part, top + 4.0],
            [cx - hw * 0.75, ey - 7], [cx - hw * 0.98, ey + 8],
        ]  # fmt: skip
    else:
        recede = 2.5 if identity.gender == "m" and identity.age > 45 else 0.0
        line_y = top + (4.0 if style == "buzz" else 5.0) + recede
        arc = _ellipse(cx, ey - 1.5, hw * 0.93, ey - 1.5 - line_y, 360, 180, 24)[1:-1]
        hairline = np.concatenate([[[cx + hw * 0.98, ey - 1.5]], arc, [[cx - hw * 0.98, ey - 1.5]]])
    canvas.fill(np.concatenate([crown, hairline]), hair * (0.9 if style == "buzz" else 1.0))
    if style in ("long", "bob"):
        for sign in (-1, 1):
            lock = [
                [cx + sign * (hw + 1.5), ey - 4], [cx + sign * (hw - 1.5), ey - 3],
                [cx + sign * (hw - 0.6), ey + 10], [cx + sign * (hw + 1.8), ey + 14],
            ]  # fmt: skip
            canvas.fill(lock, hair)


def _draw_features(
    canvas: _Canvas,
    identity: Identity,
    g: _Geometry,
    gaze: np.ndarray,
    smile: float,
    open_mouth: bool,
) -> None:
    """Eyebrows, eyes (eye whites centred on the canonical spots), nose, mouth, glasses."""
    male = identity.gender == "m"
    hair = np.array(identity.hair_rgb, float)
    line = np.array(identity.skin_rgb, float) * 0.55
    cx, ey = g.cx, g.ey
    brow = hair * 0.7 if identity.age < 55 else hair
    for x0, sign in ((g.lx, -1), (g.rx, 1)):
        arch = [[x0 - sign * 3.5, ey - 3.9], [x0, ey - 5.0], [x0 + sign * 4.0, ey - 4.2]]
        canvas.line(arch, brow, 1.2 if male else 0.75)
    iris_x, iris_y = gaze[0], gaze[1] * 0.4
    for x0 in (g.lx, g.rx):
        canvas.fill(_ellipse(x0, ey, 3.4, 1.65), (235, 232, 228))
        canvas.fill(_ellipse(x0 + iris_x, ey + iris_y, 1.45, 1.45, n=24), identity.eye_rgb)
        canvas.fill(_ellipse(x0 + iris_x, ey + iris_y, 0.65, 0.65, n=16), (15, 12, 10))
        canvas.fill(_ellipse(x0 + iris_x + 0.5, ey + iris_y - 0.5, 0.3, 0.3, n=12), (255, 255, 255))
        lid = _ellipse(x0, ey + 0.15, 3.5, 1.85, 180, 360, 16)
        canvas.line(lid, line * 0.6, 0.45 if male else 0.7)
    canvas.line([[cx - 1.2, ey + 2.5], [cx - 1.7, g.nose_y - 1.5]], line, 0.5, 0.25)
    canvas.fill(_ellipse(cx, g.nose_y - 0.3, 2.7, 1.5), line, 0.18)
    for sign in (-1, 1):
        canvas.fill(_ellipse(cx + sign * 1.4, g.nose_y + 0.3, 0.85, 0.45, n=12), line * 0.6, 0.7)

    lip = np.array(identity.lip_rgb, float)
    my, mw = g.mouth_y, g.mouth_w
    left, right = [[cx - mw, my - 0.7 * smile]], [[cx + mw, my - 0.7 * smile]]
    if open_mouth:
        upper = _ellipse(cx, my - 0.4, mw * 0.8, 1.0, 180, 360, 12)
        lower = _ellipse(cx, my + 0.2, mw * 0.85, 2.0 + 0.5 * smile, 0, 180, 14)
        opening = np.concatenate([left, upper, right, lower])
        canvas.fill(opening, (60, 25, 25))
        canvas.fill(_ellipse(cx, my - 0.1, mw * 0.7, 0.8, 0, 360, 16), (235, 232, 225))  # teeth
        canvas.line(opening, lip, 0.8)
    else:
        lower = _ellipse(cx, my + 0.3, mw * 0.8, 1.5 + 0.2 * smile, 0, 180, 14)
        upper = _ellipse(cx, my - 0.2, mw * 0.75, 1.1, 180, 360, 12)
        canvas.fill(np.concatenate([left, lower, right]), lip)
        canvas.fill(np.concatenate([left, upper, right]), lip * 0.92)
        middle = [[cx + k * mw, my + (0.15 - 0.05 * abs(k) * 2) * smile] for k in (-0.5, 0, 0.5)]
        canvas.line(np.concatenate([left, middle, right]), lip * 0.55, 0.45)
    if identity.glasses:
        frame = (30, 30, 35) if identity.stream % 3 else (170, 150, 90)
        for x0 in (g.lx, g.rx):
            canvas.line(_ellipse(x0, ey + 0.3, 4.6, 3.6, 0, 360, 28), frame, 0.55)
        canvas.line([[g.lx + 4.6, ey - 0.2], [g.rx - 4.6, ey - 0.2]], frame, 0.5)


def render_face(
    identity: Identity, rng: np.random.Generator, size: int = FACE_SIZE, jitter: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One photo of `identity`: an aligned crop, eyes near `input_pipeline.faces.canonical_eyes`.

    With `jitter=False` the eye centres are exactly on the canonical spots (no pose change; every
    other per-photo draw is the same as with jitter).

    Returns:
      `(image, face_mask)`: uint8 `[size, size, 3]` RGB, and bool `[size, size]`, the skin inside
      the face outline (no ears or neck), whether or not hair or beard cover it.
    """
    g = _Geometry.of(identity)
    side = size * _SUPERSAMPLE
    # Per photo: pose, background, clothes, expression, gaze, lighting.
    angle = math.radians(float(np.clip(rng.normal(0, 2.5), -5, 5)))
    scale = float(np.clip(1 + rng.normal(0, 0.025), 0.95, 1.05))
    shift = np.clip(rng.normal(0, 0.6, 2), -1.2, 1.2)
    cos, sin = math.cos(angle), math.sin(angle)
    rot = scale * np.array([[cos, -sin], [sin, cos]])
    centre = np.array([g.cx, g.ey])
    pose = np.concatenate([rot, (centre + shift - rot @ centre)[:, None]], axis=1)
    if not jitter:
        pose = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # Photo backgrounds: mostly muted colours, some vivid.
    bg_top, bg_bottom = (_muted(rng, rng.uniform(0.15, 0.9)) for _ in range(2))
    clothes = _muted(rng, rng.uniform(0.2, 1.0))
    smile = float(rng.uniform(-0.3, 1.2))
    open_mouth = bool(rng.random() < 0.25)
    part = float(rng.normal(2.0, 0.4)) * (1 if identity.stream % 2 else -1)
    gaze = np.clip(rng.normal(0, 0.25, 2), -0.5, 0.5)
    light = rng.uniform(-0.15, 0.15)
    exposure = rng.uniform(0.85, 1.1) * (1 + rng.normal(0, 0.03, 3))

    ramp = np.linspace(0, 1, side)[:, None, None]
    background = np.round((1 - ramp) * bg_top + ramp * bg_bottom).astype(np.uint8)
    canvas = _Canvas(size, pose, np.broadcast_to(background, (side, side, 3)).copy())
    outline = _face_outline(identity)
    _draw_body(canvas, identity, g, clothes)
    _draw_skin(canvas, identity, g, outline)
    _draw_beard(canvas, identity, g, outline)
    _draw_hair(canvas, identity, g, part)
    _draw_features(canvas, identity, g, gaze, smile, open_mouth)
    mask_canvas = _Canvas(size, pose, np.zeros((side, side, 3), np.uint8))
    mask_canvas.fill(outline, (255, 255, 255))

    # Light from one side, exposure and colour cast, then sensor noise at the final size.
    image = canvas.image.astype(np.float32)
    image *= (1 + light * np.linspace(-1, 1, side)[None, :, None]) * exposure.astype(np.float32)
    small = cv2.resize(np.clip(image, 0, 255), (size, size), interpolation=cv2.INTER_AREA)
    small += rng.normal(0, 1.5, small.shape).astype(np.float32)
    image = np.clip(np.round(small), 0, 255).astype(np.uint8)
    mask = cv2.resize(mask_canvas.image[..., 0], (size, size), interpolation=cv2.INTER_AREA)
    return image, mask >= 128


def write_png(path: str | os.PathLike, image_rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    pathlib.Path(path).write_bytes(data.tobytes())


# ---------------------------------------------------------------------------------------------
# The corpus.


def _video_ids(rng: np.random.Generator, count: int) -> list[str]:
    ids = []
    while len(ids) < count:
        chars = rng.integers(len(_VIDEO_ID_CHARS), size=11)
        chars[0] = rng.integers(62)  # no leading "-" or "_": awkward on command lines
        video = "".join(_VIDEO_ID_CHARS[c] for c in chars)
        if video not in ids:
            ids.append(video)
    return ids


def _makers(corpus: str):
    """`(make_identities, synthesize_voice, render_face)` of corpus "a" or "b"."""
    if corpus == "b":
        from v2f_jax.input_pipeline import synthetic_b

        return synthetic_b.make_identities, synthetic_b.synthesize_voice, synthetic_b.render_face
    return make_identities, synthesize_voice, render_face


def _write_person(
    person, out: pathlib.Path, utterances: int, faces: int, face_size: int, durations: str, corpus
) -> int:
    """One person's wavs and face PNGs under `out`; returns the audio's samples."""
    _, voice_of, face_of = _makers(corpus)
    video_rng = _identity_rng(person, 1, 0)
    videos = _video_ids(video_rng, int(video_rng.integers(1, 4)))
    counters = dict.fromkeys(videos, 0)
    total_samples = 0
    for u in range(utterances):
        # Each utterance picks its video with its own generator: adding utterances renames none.
        video = videos[_identity_rng(person, 1, u + 1).integers(len(videos))]
        counters[video] += 1
        samples, _ = voice_of(person, _identity_rng(person, 2, u), durations)
        path = out / "voices" / person.voxceleb_id / video / f"{counters[video]:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, samples)
        total_samples += samples.size
    face_dir = out / "faces" / person.name
    face_dir.mkdir(parents=True, exist_ok=True)
    for f in range(faces):
        image, _ = face_of(person, _identity_rng(person, 3, f), face_size)
        write_png(face_dir / f"{f + 1:05d}.png", image)
    return total_samples


def make_corpus(
    out_dir: str | os.PathLike,
    identities: int = 24,
    utterances: int = 4,
    faces: int = 4,
    seed: int = 0,
    face_size: int = FACE_SIZE,
    overwrite: bool = False,
    durations: str = "short",
    corpus: str = "a",
    workers: int = 1,
) -> dict:
    """Writes the corpus (layout in the module docstring) and returns a summary.

    Args:
      out_dir: created if needed; must not already hold a corpus unless `overwrite`.
      identities: at least 4; about a third get A-E names (the reference's test split).
      utterances, faces: per identity; utterances spread over 1-3 videos.
      seed: everything follows from it.
      face_size: side of the face PNGs, at least `faces.MIN_SIDE` (loading resizes them).
      overwrite: replace an existing voices/, faces/, vox1_meta.csv and identities.json.
      durations: utterance lengths, one of `DURATIONS`: "short" (2.5-4.5 s) or "voxceleb" (like
        VoxCeleb1's after VAD: at least 4 s, mean about 8.2 s, up to 30 s).
      corpus: one of `CORPORA`: "a", this module's people, voices and faces, or "b", made
        otherwise (`synthetic_b`: other generators and other voice-face links), to tune on one
        and confirm on the other. Same layout; "b"'s identities.json records "corpus": "b" per
        identity ("a"'s is unchanged, so old seeds keep their bytes).
      workers: processes drawing people at once; every person's files follow from the seed and
        the person alone, so any number writes the same bytes.

    Returns:
      A JSON-able dict: the corpus kind, counts, splits, genders, durations, seconds of audio,
      and the paths written.
    """
    if utterances < 1 or faces < 1:
        raise ValueError("need at least one utterance and one face per identity")
    if durations not in DURATIONS:
        raise ValueError(f"durations must be one of {DURATIONS}, got {durations!r}")
    if face_size < facelib.MIN_SIDE:
        raise ValueError(f"face_size must be at least {facelib.MIN_SIDE}")
    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    people = _makers(corpus)[0](identities, seed)
    out = pathlib.Path(out_dir)
    outputs = [out / "voices", out / "faces", out / "vox1_meta.csv", out / "identities.json"]
    existing = [p for p in outputs if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; overwrite=True (--overwrite) replaces it")
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    write = functools.partial(
        _write_person,
        out=out,
        utterances=utterances,
        faces=faces,
        face_size=face_size,
        durations=durations,
        corpus=corpus,
    )
    if workers == 1:
        total_samples = sum(map(write, people))
    else:
        # Spawned, not forked: the caller may hold JAX's or TensorFlow's threads.
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            total_samples = sum(pool.map(write, people))
    rows = ["\t".join(META_COLUMNS)] + [
        "\t".join((p.voxceleb_id, p.name, p.gender, p.nationality, p.split)) for p in people
    ]
    (out / "vox1_meta.csv").write_text("\n".join(rows) + "\n", newline="\n")
    (out / "identities.json").write_text(
        json.dumps([dataclasses.asdict(p) for p in people], indent=1) + "\n"
    )
    test = [p for p in people if p.name.startswith(tuple(TEST_INITIALS))]
    return {
        "corpus": corpus,
        "out_dir": str(out),
        "identities": len(people),
        "train_identities": len(people) - len(test),
        "test_identities": len(test),
        "male": sum(p.gender == "m" for p in people),
        "female": sum(p.gender == "f" for p in people),
        "utterances": len(people) * utterances,
        "faces": len(people) * faces,
        "face_size": face_size,
        "durations": durations,
        "audio_seconds": round(total_samples / SAMPLE_RATE, 2),
        "seed": seed,
        "voices_dir": str(out / "voices"),
        "faces_dir": str(out / "faces"),
        "meta": str(out / "vox1_meta.csv"),
    }
