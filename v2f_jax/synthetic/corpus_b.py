"""Corpus "b": a second built-in corpus, made differently from "a" (`corpus_a`), to tune a recipe
on one and confirm it on the other.

The layout and the split are "a"'s (VoxCeleb1 / VGGFace, `vox1_meta.csv`, identities with A-E
first names held out; `writer.make_corpus(..., corpus="b")` writes it); the first names come
from the lists "a" draws from too (`common`), the surnames and the seed's entropy pool are
others, so the same seed names other people. What differs is how people, voices and faces are
made, and which face attributes a voice tells:

| shared latent      | voice                                 | face                              |
|--------------------|---------------------------------------|-----------------------------------|
| gender             | F0 ~112 / ~205 Hz; open quotient and  | +1 px width, squarer jaw, brows,  |
|                    | aspiration higher for women           | eyelids, facial hair, hair style, |
|                    |                                       | lipstick, earrings                |
| body height        | formant spacing: every formant x      | face length (eyes to chin, +1.8   |
| (`vtl_cm`)         | 17.5 / vtl_cm                         | px per 1.4 cm), nose length       |
| build (z-score,    | F0 -1.6 semitones per SD; loudness    | face width +1.7 px and jaw +0.5   |
| within gender)     | +1.5 dB per SD                        | px per SD; a double chin > +1 SD  |
| age (18-75)        | vibrato depth (0.04 -> 0.54 st),      | grey hair, wrinkles (forehead,    |
|                    | jitter, shimmer, open quotient,       | folds, under the eyes, crow's     |
|                    | aspiration up; rate -0.6 syll/s       | feet), receding hairline, bald    |
| complexion         | speaking rate +2.2 syllables/s and    | skin tone, hair lightness, eye    |
| (0 light .. 1)     | pitch range +4 semitones over 0 .. 1  | darkness, Nationality column      |

In "a" the links run otherwise: vocal-tract length sets face width (here: length), the region's
accent (vowel qualities, spectral tilt) sets skin and hair colour (here: prosody, the rate and the
pitch range), and F0 follows gender and age only (here: build, which sets face width). Face-only
draws: skin undertone, hair style and its colour within the complexion's range, eye colour,
glasses, earrings, freckles, a hat, and per photo the background, clothes, pose, expression,
lighting and camera. Voice-only draws: vowel quirks, the vibrato rate, the F0 and rate left over.

Voices: formant-wave-function (FOF) synthesis, not "a"'s source-filter: every glottal pulse
(per-period jitter and shimmer, vibrato, a hat-shaped phrase intonation) launches five damped
sinusoids at F1-F5 of a seven-vowel table, summed in the time domain (a parallel formant bank;
the open quotient sets their spectral tilt and how fast each rises); aspiration noise is pulsed
by the glottal cycle; fricatives, stop bursts and "h" are noise shaped per segment in the
frequency domain; nasals and liquids are weak FOF murmurs. Words of 1-3 syllables (CV, V, CVC)
with stress and phrase-final lengthening, short gaps between words, 0.3-0.9 s pauses between
phrases, each utterance set to a loudness (RMS) rather than a peak, over pink noise.

Faces: not drawn as OpenCV polygons but evaluated per pixel (shape functions in the 64-pixel frame
of `faces.LEFT_EYE`, 2x supersampled, box-filtered down): a shaded head (Lambert and specular
light from a per-photo direction and colour), textured hair in other styles (curls, afro, bun,
side part), other backgrounds (studio gradients, split walls, bokeh, wallpaper), collars, hats,
earrings, round or square glasses, freckles, age lines, and a camera stage (white balance, gamma,
vignette, blur, noise).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import cv2
import numpy as np

from v2f_jax.input_pipeline import faces as facelib
from v2f_jax.input_pipeline.constants import IMAGE_SIZE, SAMPLE_RATE
from v2f_jax.synthetic import common

KIND = "b"

# Other surnames than "a"'s: the same seed names other people. 60 surnames x 15 male A-E first
# names still give `common.MAX_IDENTITIES` unique names.
_SURNAMES = (
    "Achterberg Alvarado Amsel Bakshi Barros Blomqvist Castell Coelho Dahl Demir Duarte Ekwueme "
    "Falk Ferreira Gallo Grund Haddad Halvorsen Ibsen Iwu Jovanovic Kader Kessler Kim Lindqvist "
    "Lund Mahler Mbeki Moretti Nakamura Navarro Ng Obi Orlov Osei Pereira Petrov Quiroga Rahman "
    "Romero Saar Santos Schulz Sorensen Suzuki Tamm Tran Uddin Ueda Valdez Vogel Wagner Wojcik "
    "Xu Yamada Yilmaz Yoon Zamora Zeller Zubiri"
).split()
# Nationality by complexion (third of the range), with a cosmopolitan tail.
_NATIONALITIES = (
    ("Norway", "Netherlands", "Russia", "UK", "USA", "Canada", "Finland", "Ireland"),
    ("Greece", "Turkey", "Iran", "Brazil", "Mexico", "Philippines", "Korea", "USA"),
    ("Kenya", "Ghana", "Ethiopia", "Jamaica", "Senegal", "USA", "UK", "Brazil"),
)


@dataclasses.dataclass(frozen=True)
class Identity:
    """One person of corpus "b". Units: years, cm, Hz, semitones, syllables per second, dBFS, and
    the 64-pixel face frame of `faces.LEFT_EYE`."""

    voxceleb_id: str
    name: str
    gender: str  # "m" | "f"
    nationality: str
    split: str  # "dev" | "test", the Set column
    stream: int  # per-identity entropy: every file's generator derives from it
    # Shared by voice and face (the links of the module docstring).
    age: float
    vtl_cm: float
    build: float  # z-score within gender
    complexion: float  # 0 light .. 1 dark
    # Voice only.
    f0_hz: float
    pitch_range_st: float
    speaking_rate: float
    open_quotient: float
    aspiration: float
    vibrato_st: float
    vibrato_hz: float
    jitter: float
    shimmer: float
    loudness_db: float
    vowel_shift: tuple[float, float]  # F1, F2 multipliers: a personal accent
    # Face geometry.
    face_half_width: float
    jaw_half_width: float
    chin_drop: float
    forehead: float
    nose_length: float
    eye_scale: float
    # Face colours and features.
    skin_rgb: tuple[int, int, int]
    hair_rgb: tuple[int, int, int]
    eye_rgb: tuple[int, int, int]
    lip_rgb: tuple[int, int, int]
    grey: float
    wrinkles: float
    hair_style: str
    facial_hair: str  # "", "stubble", "moustache", "full"
    glasses: str  # "", "round", "square"
    earrings: bool
    freckles: float
    hat: str  # "", "beanie", "cap": worn in about half of the photos
    corpus: str = KIND


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] to RGB in [0, 255] (float)."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return 255.0 * (v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


# Skin along the complexion axis, light to dark; the undertone (face only) tints it.
_SKIN_PATH = np.array(
    [
        [246, 214, 192],
        [232, 186, 150],
        [204, 150, 110],
        [160, 108, 74],
        [112, 72, 48],
        [72, 46, 32],
    ],
    float,
)
# Hair along a lightness axis, black to platinum.
_HAIR_PATH = np.array(
    [[20, 16, 14], [52, 36, 26], [92, 62, 40], [140, 100, 62], [192, 156, 100], [226, 204, 150]],
    float,
)
_EYE_PATH = np.array([[40, 26, 18], [96, 60, 30], [96, 104, 62], [78, 118, 150], [120, 160, 196]])


def _along(path: np.ndarray, t: float) -> np.ndarray:
    t = float(np.clip(t, 0.0, 1.0)) * (len(path) - 1)
    i = min(int(t), len(path) - 2)
    return path[i] + (t - i) * (path[i + 1] - path[i])


def _sample_attributes(rng: np.random.Generator, gender: str) -> dict:
    """Every attribute of one identity of `gender`, drawn from `rng`."""
    male = gender == "m"
    age = float(rng.uniform(18, 75))
    old = (age - 18) / 57  # 0 .. 1
    build = float(np.clip(rng.normal(0, 1), -2.2, 2.2))
    complexion = float(rng.beta(0.9, 0.9))
    vtl = float(np.clip(rng.normal(17.6 if male else 15.2, 0.75), 15.6 if male else 13.4, 19.6))
    z_vtl = (vtl - 16.4) / 1.4

    semis = -1.6 * build + rng.normal(0, 0.7) + (0.8 if male else -1.0) * old
    f0 = (112.0 if male else 205.0) * 2 ** (semis / 12)
    rate = 3.3 + 2.2 * complexion - 0.6 * old + rng.normal(0, 0.2)
    oq = 0.48 + (0.12 if not male else 0.0) + 0.12 * old + rng.normal(0, 0.03)
    aspiration = 0.05 + (0.05 if not male else 0.0) + 0.08 * old + abs(rng.normal(0, 0.015))

    half_width = 17.0 + (1.0 if male else 0.0) + 1.7 * build + rng.normal(0, 0.35)
    jaw = half_width * (0.8 if male else 0.68) + 0.5 * build + rng.normal(0, 0.3)
    chin_drop = 24.5 + 1.8 * z_vtl + rng.normal(0, 0.4)

    undertone = rng.uniform(-1, 1)
    skin = _along(_SKIN_PATH, complexion + rng.normal(0, 0.03))
    skin = skin * (1 + 0.05 * undertone * np.array([1.0, -0.3, -1.0]))
    lightness = rng.normal(0.62 - 0.75 * complexion, 0.18)
    hair = _along(_HAIR_PATH, lightness)
    if rng.random() < 0.07 and complexion < 0.5:  # red
        hair = np.array([150.0, 68, 36]) * rng.uniform(0.75, 1.1)
    grey = float(np.clip((age - 40) / 28 + rng.normal(0, 0.1), 0, 1))
    eye = _along(_EYE_PATH, rng.normal(0.7 - 0.9 * complexion, 0.25))
    lip = skin * np.array([0.88, 0.68, 0.7]) + np.array([18.0, 0, 0])
    if not male and rng.random() < 0.35:
        lip = _hsv(rng.uniform(0.94, 1.02) % 1, rng.uniform(0.5, 0.8), rng.uniform(0.5, 0.8))
    if male:
        bald = max(0.0, (age - 40) / 50)
        styles = ["bald", "crop", "side_part", "curly", "buzz", "long"]
        p = [bald, *(np.array([0.32, 0.28, 0.16, 0.16, 0.08]) * (1 - bald))]
        facial_hair = rng.choice(["", "stubble", "moustache", "full"], p=[0.5, 0.22, 0.1, 0.18])
    else:
        styles = ["long", "bob", "curly", "bun", "afro", "side_part"]
        p = [0.34, 0.2, 0.14, 0.14, 0.08, 0.1]
        facial_hair = ""
    to_rgb = lambda c: tuple(int(v) for v in np.clip(np.round(c), 0, 255))
    nationalities = _NATIONALITIES[min(2, int(complexion * 3))]
    return dict(
        nationality=nationalities[int(rng.integers(len(nationalities)))],
        age=round(age, 2),
        vtl_cm=round(vtl, 3),
        build=round(build, 3),
        complexion=round(complexion, 4),
        f0_hz=round(float(f0), 2),
        pitch_range_st=round(float(2.0 + 4.0 * complexion + (0 if male else 1.0)
                                   + rng.normal(0, 0.4)), 3),
        speaking_rate=round(float(np.clip(rate, 2.6, 6.5)), 3),
        open_quotient=round(float(np.clip(oq, 0.4, 0.8)), 3),
        aspiration=round(float(aspiration), 4),
        vibrato_st=round(float(0.04 + 0.5 * old**1.5 + abs(rng.normal(0, 0.03))), 4),
        vibrato_hz=round(float(rng.uniform(4.5, 6.5)), 3),
        jitter=round(float(0.002 + 0.01 * old**2 + abs(rng.normal(0, 0.001))), 5),
        shimmer=round(float(0.03 + 0.1 * old**2), 4),
        loudness_db=round(float(-24.0 + 1.5 * build + rng.normal(0, 1.5)), 2),
        vowel_shift=(round(float(rng.normal(1, 0.04)), 4), round(float(rng.normal(1, 0.03)), 4)),
        face_half_width=round(float(half_width), 3),
        jaw_half_width=round(float(jaw), 3),
        chin_drop=round(float(chin_drop), 3),
        forehead=round(float(rng.normal(19.5, 0.8)), 3),
        nose_length=round(float(0.44 * chin_drop + 0.8 * z_vtl + rng.normal(0, 0.3)), 3),
        eye_scale=round(float(rng.normal(1.0, 0.06)), 3),
        skin_rgb=to_rgb(skin),
        hair_rgb=to_rgb(hair),
        eye_rgb=to_rgb(eye),
        lip_rgb=to_rgb(lip),
        grey=round(grey, 3),
        wrinkles=round(float(np.clip((age - 30) / 40 + rng.normal(0, 0.08), 0, 1)), 3),
        hair_style=str(rng.choice(styles, p=np.asarray(p) / np.sum(p))),
        facial_hair=str(facial_hair),
        glasses=str(rng.choice(["", "round", "square"], p=[0.84, 0.08, 0.08])),
        earrings=bool(rng.random() < (0.08 if male else 0.5)),
        freckles=round(float(rng.uniform(0.3, 1.0) if complexion < 0.35 and rng.random() < 0.3
                             else 0.0), 3),
        hat=str(rng.choice(["", "beanie", "cap"], p=[0.88, 0.06, 0.06])),
    )  # fmt: skip


def make_identities(n: int, seed: int = 0) -> list[Identity]:
    """`n` identities, sorted by name with ids id10001... in that order, as "a"'s: genders
    alternate and every third identity of each gender has an A-E first name (the test split)."""
    # Another entropy pool than "a"'s: the same seed gives other people.
    return common.draw_people(n, [seed, 0xB], _SURNAMES, _sample_attributes, Identity)


# ---------------------------------------------------------------------------------------------
# Voices: FOF synthesis.

# F1-F5 of seven vowels for a 17.5 cm vocal tract (i e E a o u schwa), Hz.
_VOWELS = np.array(
    [
        [280, 2250, 2900, 3500, 4500],
        [420, 2050, 2650, 3550, 4500],
        [580, 1800, 2550, 3500, 4500],
        [760, 1250, 2550, 3500, 4500],
        [460, 860, 2500, 3450, 4500],
        [310, 800, 2300, 3400, 4500],
        [500, 1450, 2500, 3500, 4500],
    ],
    float,
)
_VOWEL_P = np.array([0.17, 0.15, 0.12, 0.2, 0.13, 0.1, 0.13])
_BANDWIDTHS = np.array([70.0, 90.0, 130.0, 180.0, 250.0])
_LEVELS_DB = np.array([0.0, -3.0, -7.0, -10.0, -14.0])
# Weakly voiced consonants: formants, levels (dB), voicing.
_MURMURS = {
    "m": ([260, 1050, 2250, 3400, 4400], [0, -22, -26, -32, -40], 0.35),
    "n": ([250, 1500, 2400, 3400, 4400], [0, -20, -24, -30, -38], 0.35),
    "l": ([360, 1250, 2850, 3500, 4500], [0, -8, -16, -22, -28], 0.55),
    "r": ([420, 1150, 1650, 3300, 4500], [0, -6, -10, -20, -28], 0.55),
    "b": ([200, 900, 2200, 3300, 4400], [0, -30, -36, -40, -44], 0.12),  # voice bar
    "d": ([200, 1600, 2600, 3300, 4400], [0, -30, -36, -40, -44], 0.12),
}
# Noise: centre (Hz), bandwidth (Hz), level relative to the voiced RMS.
_NOISES = {
    "s": (5800.0, 2200.0, 0.45),
    "sh": (3000.0, 1200.0, 0.45),
    "f": (4200.0, 6000.0, 0.12),
    "h": (1800.0, 2600.0, 0.2),
    "p": (900.0, 1800.0, 0.9),
    "t": (4500.0, 3000.0, 0.9),
    "k": (2200.0, 1500.0, 0.9),
    "b": (900.0, 1800.0, 0.35),
    "d": (4000.0, 3000.0, 0.35),
}
_ONSETS = ("", "s", "sh", "f", "h", "p", "t", "k", "b", "d", "m", "n", "l", "r")
_ONSET_P = np.array([16, 9, 5, 6, 5, 7, 7, 6, 6, 5, 9, 7, 7, 5], float)
_CODAS = ("", "n", "m", "s", "t")
_CODA_P = np.array([62, 12, 6, 12, 8], float)
_STOPS = ("p", "t", "k", "b", "d")
_HOP = 80  # 5 ms control frames
_GRAIN = 384  # 24 ms formant waves: the narrowest (70 Hz) has decayed by 46 dB


def _plan(identity: Identity, rng: np.random.Generator, durations: str = "short") -> tuple:
    """Timing: `(n, [(start, end, label, info)])` in samples; labels silence, pause, gap (between
    words), closure (of a stop), consonant, vowel. `durations` as `corpus_a._plan`'s (the first
    draw: `common.draw_utterance_length`)."""
    duration, speech = common.draw_utterance_length(rng, durations)
    lead, trail = rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.6)
    syllable_s = 1.0 / identity.speaking_rate
    events, t, end, spoken = [(0.0, lead, "silence", {})], lead, duration - trail, 0.0
    while True:
        question = bool(rng.random() < 0.12)
        words = [int(rng.choice(3, p=[0.45, 0.35, 0.2])) + 1 for _ in range(rng.poisson(2.2) + 1)]
        words = words[:6]
        while len(events) == 1 and sum(words) < 4:  # enough speech for VAD in the first phrase
            words.append(int(rng.choice(3, p=[0.45, 0.35, 0.2])) + 1)
        phrase_start, phrase, done = t, [], False
        for w, n_syllables in enumerate(words):
            if w and rng.random() < 0.4:
                gap = rng.uniform(0.03, 0.08)
                phrase.append((t, t + gap, "gap", {}))
                t += gap
                spoken += gap
            for k in range(n_syllables):
                last = w == len(words) - 1 and k == n_syllables - 1
                length = syllable_s * math.exp(rng.normal(0, 0.18))
                length *= (1.25 if k == 0 else 0.92) * (1.4 if last else 1.0)
                if t + length > end or spoken >= speech:
                    done = True
                    break
                onset = _ONSETS[rng.choice(len(_ONSETS), p=_ONSET_P / _ONSET_P.sum())]
                coda = _CODAS[rng.choice(len(_CODAS), p=_CODA_P / _CODA_P.sum())]
                info = dict(vowel=int(rng.choice(len(_VOWELS), p=_VOWEL_P)), stress=k == 0,
                            question=question)  # fmt: skip
                a = t
                if onset:
                    share = 0.3 if onset in _STOPS else 0.24
                    b = a + share * length
                    if onset in _STOPS:
                        mid = a + 0.6 * (b - a)
                        phrase.append((a, mid, "closure", dict(info, kind=onset)))
                        a = mid
                    phrase.append((a, b, "consonant", dict(info, kind=onset)))
                    a = b
                coda_start = t + length * (0.8 if coda else 1.0)
                phrase.append((a, coda_start, "vowel", info))
                if coda:
                    phrase.append((coda_start, t + length, "consonant", dict(info, kind=coda)))
                t += length
                spoken += length
            if done:
                break
        for *_, info in phrase:
            info["phrase_span"] = (phrase_start, t)
        while phrase and phrase[-1][2] == "gap":
            t, spoken = phrase[-1][0], spoken - (phrase[-1][1] - phrase[-1][0])
            phrase.pop()
        events += phrase
        if phrase:
            spoken += common.VAD_KEEPS_AFTER_PHRASE
        pause = rng.uniform(0.3, 0.9)
        if done or not phrase or t + pause + syllable_s > end or spoken >= speech:
            break
        events.append((t, t + pause, "pause", dict(inhale=bool(rng.random() < 0.3))))
        t += pause
    if durations != "short":
        duration = t + trail
    events.append((t, duration, "silence", {}))
    n = int(round(duration * SAMPLE_RATE))
    to_samples = lambda s: min(n, int(round(s * SAMPLE_RATE)))
    return n, [(to_samples(s), to_samples(e), label, info) for s, e, label, info in events]


def _band_noise(rng: np.random.Generator, n: int, centre: float, width: float) -> np.ndarray:
    """`n` samples of unit-RMS noise with a Gaussian band around `centre` Hz."""
    size = 1 << max(6, (n - 1).bit_length())  # a power of two: any length FFTs slowly
    freqs = np.fft.rfftfreq(size, 1 / SAMPLE_RATE)
    spec = np.fft.rfft(rng.normal(size=size)) * np.exp(-(((freqs - centre) / width) ** 2))
    x = np.fft.irfft(spec, size)[:n]
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _fof(pos, amp, formants, bandwidths, levels, attack) -> tuple[np.ndarray, np.ndarray]:
    """Formant waves: pulse `i` at fractional sample `pos[i]` launches, per formant `k`, a damped
    sinusoid `amp[i] * levels[i, k] * rise(t) * exp(-pi B t) * sin(2 pi F t)`. Returns the
    sample indices `[P, L]` and values `[P, L]` to add."""
    base = np.floor(pos).astype(np.int64)
    t = (np.arange(_GRAIN)[None, :] - (pos - base)[:, None]).astype(np.float32) / SAMPLE_RATE
    t = np.maximum(t, 0.0)  # [P, L]
    rise = np.where(t < attack, 0.5 - 0.5 * np.cos(np.float32(np.pi / attack) * t), 1.0)
    taper = np.ones(_GRAIN, np.float32)
    taper[-64:] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(64) + 0.5) / 64)
    wave = np.zeros(t.shape, np.float32)
    for k in range(formants.shape[1]):
        f, b, a = (x[:, k : k + 1].astype(np.float32) for x in (formants, bandwidths, levels))
        wave += a * np.exp(-np.float32(np.pi) * b * t) * np.sin(np.float32(2 * np.pi) * f * t)
    wave *= rise * taper * amp[:, None].astype(np.float32)
    return base[:, None] + np.arange(_GRAIN)[None, :], wave


def synthesize_voice(
    identity: Identity, rng: np.random.Generator, durations: str = "short"
) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """One utterance of `identity` (FOF synthesis; the module docstring).

    Returns:
      `(samples, segments)`: int16 `[N]` at 16 kHz (2.5-4.5 s with "short"; with "voxceleb", at
      least 4 s of syllables plus silences), and `(start, end, label)` in samples, labels as
      `_plan`'s.
    """
    n, events = _plan(identity, rng, durations)
    scale = 17.5 / identity.vtl_cm * np.array([*identity.vowel_shift, 1.0, 1.0, 1.0])
    n_frames = n // _HOP + 2
    frame_time = np.arange(n_frames) * _HOP
    targets = np.full((n_frames, 5), np.nan)
    levels = np.tile(_LEVELS_DB, (n_frames, 1))
    g_voice, noise, semitones = np.zeros(n), np.zeros(n), np.zeros(n)
    r = identity.pitch_range_st
    ms = SAMPLE_RATE // 1000
    env = common.raised_cosine
    for start, end, label, info in events:
        length = end - start
        if length <= 0:
            continue
        frames = (frame_time >= start) & (frame_time < end)
        if label == "pause" and info["inhale"]:
            breath = _band_noise(rng, length, 1500.0, 3000.0) * env(
                length, length // 2, length // 2
            )
            noise[start:end] += 0.01 * breath
        if label not in ("vowel", "consonant", "closure"):
            continue
        vowel = _VOWELS[info["vowel"]] * scale
        kind = info.get("kind", "")
        if label == "vowel":
            g_voice[start:end] = env(length, 15 * ms, 30 * ms) * (1.0 if info["stress"] else 0.75)
            targets[frames] = vowel
        elif label == "consonant" and kind in _MURMURS:
            formants, dbs, voicing = _MURMURS[kind]
            g_voice[start:end] = voicing * env(length, 10 * ms, 10 * ms)
            targets[frames] = np.asarray(formants) * scale
            levels[frames] = dbs
        elif label == "consonant":
            centre, width, level = _NOISES[kind]
            shape = env(length, 8 * ms, 8 * ms)
            if kind in _STOPS:  # a burst, then (voiceless) aspiration into the vowel
                burst = min(length, 8 * ms)
                shape = np.zeros(length)
                shape[:burst] = env(burst, 1 * ms, 5 * ms)
                if kind in ("p", "t", "k"):
                    shape[burst:] += 0.3 * env(length - burst, 2 * ms, 10 * ms)
            noise[start:end] += level * shape * _band_noise(rng, length, centre, width)
            targets[frames] = vowel
        elif kind in _MURMURS:  # the voice bar of a voiced stop's closure
            formants, dbs, voicing = _MURMURS[kind]
            g_voice[start:end] = voicing * env(length, 5 * ms, 5 * ms)
            levels[frames] = dbs
        # Intonation: a hat over the phrase, a bump on stressed syllables, a final fall or rise.
        p0, p1 = (s * SAMPLE_RATE for s in info["phrase_span"])
        pos = (np.arange(start, end) - p0) / max(1.0, p1 - p0)
        rise = 1 / (1 + np.exp(-(pos - 0.12) / 0.04))
        fall = 1 / (1 + np.exp(-(pos - 0.85) / 0.04))
        contour = (
            r * (0.6 * rise - 0.3 - 0.25 * pos) + (0.7 if info["question"] else -0.8) * r * fall
        )
        if info["stress"] and label == "vowel":
            contour += 0.25 * r * np.sin(np.pi * np.arange(length) / length)
        semitones[start:end] = contour

    # Formants glide between targets (log frequency, 35 ms); levels follow.
    known = ~np.isnan(targets[:, 0])
    if not known.any():
        targets[:], known[:] = _VOWELS[3] * scale, True
    idx = np.arange(n_frames)
    log_f = np.stack([np.interp(idx, idx[known], np.log(targets[known, k])) for k in range(5)], 1)
    smooth = lambda x: np.stack([common.moving_average(c, 7) for c in x.T], 1)
    formants, levels = np.exp(smooth(log_f)), smooth(levels)

    # F0: intonation, vibrato (tremor), slow drift; pulses with per-period jitter.
    t = np.arange(n) / SAMPLE_RATE
    semitones = common.moving_average(semitones, 30 * ms)
    semitones += identity.vibrato_st * np.sin(
        2 * np.pi * identity.vibrato_hz * t + rng.uniform(0, 7)
    )
    semitones += 0.3 * common.smooth_noise(rng, n, 2.0)
    f0 = identity.f0_hz * 2 ** (semitones / 12)
    phase = np.cumsum(f0 / SAMPLE_RATE)
    k = np.nonzero(np.diff(np.floor(phase)))[0] + 1
    pos = k - (phase[k] - np.floor(phase[k])) / (f0[k] / SAMPLE_RATE)
    pos = pos + identity.jitter * (SAMPLE_RATE / f0[k]) * rng.normal(size=k.size)
    amp = g_voice[k] * np.maximum(0.0, 1 + identity.shimmer * rng.normal(size=k.size))
    keep = (amp > 1e-3) & (pos >= 0) & (pos < n - 1)
    pos, amp = pos[keep], amp[keep]
    frame = np.minimum(np.round(pos / _HOP).astype(int), n_frames - 1)
    f = formants[frame]
    # The open quotient tilts the source: the more open, the weaker the upper formants and the
    # slower each wave's rise.
    tilt = (f / 500.0) ** (-(identity.open_quotient - 0.45) * 1.5)
    lv = 10 ** (levels[frame] / 20) * tilt
    attack = 0.0012 + 0.004 * (identity.open_quotient - 0.4)
    voiced = np.zeros(n + _GRAIN + 1)
    for c in range(0, pos.size, 1024):
        part = slice(c, c + 1024)
        bandwidths = np.broadcast_to(_BANDWIDTHS, f[part].shape)
        where, value = _fof(pos[part], amp[part], f[part], bandwidths, lv[part], attack)
        voiced += np.bincount(where.ravel(), value.ravel(), voiced.size)
    voiced = voiced[:n]
    loud = g_voice > 0.5
    rms = float(np.sqrt(np.mean(voiced[loud] ** 2))) if loud.any() else 1.0

    # Aspiration, pulsed by the glottal cycle; the consonants' noise, both at the voice's level.
    pulse = (0.5 + 0.5 * np.cos(2 * np.pi * phase)) ** 2
    aspiration = _band_noise(rng, n, 3500.0, 3000.0) * g_voice * pulse * identity.aspiration * 0.6
    speech = voiced + rms * (aspiration + noise)

    # Level: the identity's loudness (RMS while voiced), at most -1 dBFS peaks, over pink noise.
    level = identity.loudness_db + rng.normal(0, 1.5)
    speech *= 32767 * 10 ** (level / 20) / (np.sqrt(np.mean(speech[loud] ** 2)) + 1e-12)
    speech *= min(1.0, 32767 * 10 ** (-1 / 20) / (np.max(np.abs(speech)) + 1e-12))
    size = 1 << (n - 1).bit_length()
    freqs = np.fft.rfftfreq(size, 1 / SAMPLE_RATE)
    pink = np.fft.irfft(np.fft.rfft(rng.normal(size=size)) / np.sqrt(np.maximum(freqs, 20.0)))[:n]
    pink *= 32767 * 10 ** (rng.uniform(-72, -60) / 20) / (np.sqrt(np.mean(pink**2)) + 1e-12)
    samples = np.clip(np.round(speech + pink), -32768, 32767).astype(np.int16)
    return samples, [(s, e, label) for s, e, label, _ in events if e > s]


# ---------------------------------------------------------------------------------------------
# Faces: shape functions evaluated per pixel, shaded.

_SUPERSAMPLE = 2
_GREY_HAIR = np.array([206.0, 204.0, 200.0])
# Hair: (thickness beyond the head, hairline below the top, how far down it hangs behind: eyes
# to that many pixels, or None, curl amplitude).
_HAIR_STYLES = {
    "bald": (0.0, 0.0, None, 0.0),
    "buzz": (0.6, 3.5, None, 0.0),
    "crop": (1.5, 4.5, None, 0.0),
    "side_part": (2.2, 5.0, None, 0.0),
    "curly": (3.4, 4.0, None, 0.5),
    "long": (2.4, 4.5, 34.0, 0.0),
    "bob": (2.6, 5.0, 20.0, 0.0),
    "bun": (1.4, 3.8, None, 0.0),
    "afro": (8.0, 4.0, None, 0.45),
}


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """Landmarks of one identity's head in the 64-pixel frame."""

    lx: float
    rx: float
    ey: float
    cx: float
    hw: float  # half width at the cheekbones
    jaw: float  # half width at the jaw
    top: float
    cheek_y: float
    jaw_y: float
    chin: float
    nose_y: float  # the nose tip
    mouth_y: float
    mouth_w: float
    jaw_power: float

    @classmethod
    def of(cls, p: Identity) -> _Geometry:
        (lx, ey), (rx, _) = facelib.LEFT_EYE, facelib.RIGHT_EYE
        chin = ey + p.chin_drop
        nose_y = ey + p.nose_length
        return cls(
            lx=lx, rx=rx, ey=ey, cx=(lx + rx) / 2, hw=p.face_half_width, jaw=p.jaw_half_width,
            top=ey - p.forehead, cheek_y=ey + 2.0, jaw_y=ey + 0.62 * p.chin_drop, chin=chin,
            nose_y=nose_y, mouth_y=nose_y + 0.36 * (chin - nose_y),
            mouth_w=0.27 * p.face_half_width + 0.8, jaw_power=3.0 if p.gender == "m" else 2.0,
        )  # fmt: skip

    def half_width(self, y: np.ndarray) -> np.ndarray:
        """The head's half width at height `y`; negative above the top and below the chin."""
        up = np.clip((self.cheek_y - y) / (self.cheek_y - self.top), 0, None)
        s = np.clip((y - self.cheek_y) / (self.jaw_y - self.cheek_y), 0, 1)
        low = np.clip((y - self.jaw_y) / (self.chin - self.jaw_y), 0, None)
        upper = self.hw * np.clip(1 - up**2.3, 0, None) ** (1 / 2.3)
        middle = self.hw + (self.jaw - self.hw) * s**1.6
        lower = self.jaw * np.clip(1 - low**self.jaw_power, 0, None) ** (1 / self.jaw_power)
        w = np.where(y < self.cheek_y, upper, np.where(y < self.jaw_y, middle, lower))
        return np.where((y < self.top) | (y > self.chin), -1.0, w)


class _Photo:
    """The canonical coordinates (X, Y) of every supersampled pixel of one photo, and its paint."""

    def __init__(self, size: int, pose: np.ndarray):
        side = size * _SUPERSAMPLE
        self.size, self.pose = size, pose
        q = (np.arange(side) + 0.5) / _SUPERSAMPLE * (IMAGE_SIZE / size) - 0.5
        qx, qy = np.meshgrid(q, q)
        inv = np.linalg.inv(pose[:, :2])
        dx, dy = qx - pose[0, 2], qy - pose[1, 2]
        self.X = (inv[0, 0] * dx + inv[0, 1] * dy).astype(np.float32)
        self.Y = (inv[1, 0] * dx + inv[1, 1] * dy).astype(np.float32)
        # Canonical units per supersampled pixel: the width of an anti-aliased edge.
        self.px = float(IMAGE_SIZE / side / math.sqrt(abs(np.linalg.det(pose[:, :2]))))
        self.image = np.zeros((side, side, 3), np.float32)
        self.skin = self.hair = None  # shaded colour fields, `[side, side, 3]`, set later
        self.window = (slice(0, side), slice(0, side))  # where a `crop` lies

    def crop(self, x0: float, y0: float, x1: float, y1: float) -> _Photo:
        """A view of the pixels that the canonical box `[x0, x1] x [y0, y1]` covers: what is
        painted there lands in this photo."""
        corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], float)
        q = corners @ self.pose.T
        pix = (q + 0.5) * self.size / IMAGE_SIZE * _SUPERSAMPLE - 0.5
        side = self.X.shape[0]
        lo = np.clip(np.floor(pix.min(0)).astype(int) - 2, 0, side)
        hi = np.clip(np.ceil(pix.max(0)).astype(int) + 3, 0, side)
        view = copy.copy(self)
        rows, cols = slice(lo[1], max(lo[1], hi[1])), slice(lo[0], max(lo[0], hi[0]))
        for name in ("X", "Y", "image", "skin", "hair"):
            field = getattr(self, name)
            if field is not None:
                setattr(view, name, field[rows, cols])
        view.window = (rows, cols)
        return view

    def cover(self, d: np.ndarray) -> np.ndarray:
        """Coverage of a shape from its signed distance (negative inside)."""
        return np.clip(0.5 - d / self.px, 0.0, 1.0)

    def paint(self, alpha: np.ndarray, colour) -> None:
        a = np.asarray(alpha, np.float32)[..., None]
        self.image += a * (np.asarray(colour, np.float32) - self.image)

    def ellipse(self, cx, cy, ax, ay) -> np.ndarray:
        """Signed distance (first order) to an axis-aligned ellipse."""
        dx, dy = self.X - cx, self.Y - cy
        g = (dx / ax) ** 2 + (dy / ay) ** 2 - 1
        grad = 2 * np.sqrt((dx / ax**2) ** 2 + (dy / ay**2) ** 2) + 1e-6
        return g / grad

    def stroke(self, points, width: float) -> np.ndarray:
        """Signed distance to a polyline `[M, 2]` drawn `width` wide."""
        pts = np.asarray(points, np.float32)
        d = np.full(self.X.shape, np.inf, np.float32)
        for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
            vx, vy = x1 - x0, y1 - y0
            t = np.clip(
                ((self.X - x0) * vx + (self.Y - y0) * vy) / (vx * vx + vy * vy + 1e-9), 0, 1
            )
            d = np.minimum(d, np.hypot(self.X - x0 - t * vx, self.Y - y0 - t * vy))
        return d - width / 2


def _arc(cx, cy, ax, ay, start, stop, n=12) -> np.ndarray:
    t = np.radians(np.linspace(start, stop, n))
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def _box(points, margin: float) -> tuple[float, float, float, float]:
    pts = np.asarray(points, float).reshape(-1, 2)
    (x0, y0), (x1, y1) = pts.min(0) - margin, pts.max(0) + margin
    return x0, y0, x1, y1


def _line(ph: _Photo, points, width: float, colour, alpha: float = 1.0) -> None:
    """A stroke along `points`, painted in its bounding box only."""
    view = ph.crop(*_box(points, width + 1))
    view.paint(alpha * view.cover(view.stroke(points, width)), colour)


def _dot(ph: _Photo, x, y, ax, ay, colour, alpha: float = 1.0, soft: float = 0.0) -> None:
    """A filled ellipse; `soft` widens its edge (canonical pixels)."""
    view = ph.crop(x - ax - soft - 1, y - ay - soft - 1, x + ax + soft + 1, y + ay + soft + 1)
    d = view.ellipse(x, y, ax, ay)
    cover = np.clip(0.5 - d / soft, 0, 1) if soft else view.cover(d)
    view.paint(alpha * cover, colour)


def _palette(rng: np.random.Generator) -> np.ndarray:
    """A backdrop or clothing colour: teals, blues, greens, beiges and greys, rarely vivid."""
    family = rng.choice(5, p=[0.25, 0.2, 0.2, 0.2, 0.15])
    hue = [(0.45, 0.55), (0.55, 0.66), (0.22, 0.38), (0.07, 0.13), (0.0, 1.0)][family]
    sat = rng.uniform(0.0, 0.08) if family == 4 else rng.uniform(0.15, 0.55)
    if rng.random() < 0.1:
        hue, sat = (0.0, 1.0), rng.uniform(0.6, 0.9)
    return _hsv(rng.uniform(*hue), sat, rng.uniform(0.25, 0.9))


def _texture(ph: _Photo, rng: np.random.Generator, angle: float, curl: float) -> np.ndarray:
    """A hair texture around 1 (`[H, W, 1]`): strands along `angle`, or curls."""
    a, b = rng.uniform(0, 6.3, 2)
    if curl:
        t = np.sin(ph.X * 1.9 + a) * np.sin(ph.Y * 1.9 + b) + 0.5 * np.sin((ph.X + ph.Y) * 3.3 + a)
    else:
        c, s = math.cos(angle), math.sin(angle)
        u, v = ph.X * c + ph.Y * s, ph.Y * c - ph.X * s
        t = np.sin(v * 3.1 + 0.8 * np.sin(u * 0.4 + a)) + 0.5 * np.sin(v * 7.3 + b)
    return (1 + 0.09 * t)[..., None]


def _draw_background(ph: _Photo, rng: np.random.Generator, light: np.ndarray, g: _Geometry):
    kind = rng.choice(["studio", "wall", "bokeh", "wallpaper"], p=[0.35, 0.25, 0.2, 0.2])
    c1, c2 = _palette(rng), _palette(rng)
    X, Y = ph.X, ph.Y
    if kind == "studio":
        r = np.hypot(X - g.cx - rng.uniform(-10, 10), Y - rng.uniform(10, 30)) / 48
        ph.image[:] = c1 * (1 - 0.55 * np.clip(r, 0, 1))[..., None]
    elif kind == "wall":
        edge = rng.uniform(4, 60) + (Y - 32) * rng.uniform(-0.3, 0.3)
        ph.image[:] = np.where((X < edge)[..., None], c1, c2) * (1 - 0.004 * Y)[..., None]
        shadow = ph.cover(ph.ellipse(g.cx - 7 * light[0], g.ey + 8, g.hw + 5, 34))
        ph.paint(0.18 * shadow, 0.3 * c2)
    elif kind == "bokeh":
        ph.image[:] = (0.35 * c1) * (1 + 0.006 * (Y - 32))[..., None]
        for _ in range(int(rng.integers(6, 14))):
            x, y, rad = rng.uniform(-4, 68), rng.uniform(-4, 68), rng.uniform(2.5, 9)
            colour = _hsv(rng.uniform(0, 1), 0.5, 0.95)
            _dot(ph, x, y, rad, rad, colour, rng.uniform(0.2, 0.5), soft=1.5)
    else:
        angle = rng.choice([0.0, math.pi / 4, -math.pi / 4])
        u = X * math.cos(angle) + Y * math.sin(angle)
        stripes = (np.sin(u * 2 * math.pi / rng.uniform(3, 8)) > 0)[..., None]
        ph.image[:] = np.where(stripes, c1, c1 * 0.8 + c2 * 0.2)


def _hair_colour(p: Identity) -> np.ndarray:
    return (1 - p.grey) * np.array(p.hair_rgb, float) + p.grey * _GREY_HAIR


def _draw_back_hair(ph: _Photo, p: Identity, g: _Geometry, rng) -> None:
    thick, _, hangs, curl = _HAIR_STYLES[p.hair_style]
    if p.hair_style == "afro":
        view = ph.crop(g.cx - g.hw - thick - 2, g.top - 12, g.cx + g.hw + thick + 2, g.chin)
        cover = view.cover(view.ellipse(g.cx, g.top + 9, g.hw + thick, 17 + thick))
        cover *= np.clip(1.3 + 0.4 * np.sin(view.X * 1.3) * np.sin(view.Y * 1.3), 0, 1)
        view.paint(cover, view.hair * _texture(view, rng, 0.0, curl))
    elif hangs is not None:
        bottom = g.ey + hangs
        half = g.hw + thick + 1.5
        view = ph.crop(g.cx - half - 8, g.top - thick - 1, g.cx + half + 8, bottom + 1)
        flare = 0.12 if p.hair_style == "long" else 0.0
        sides = np.abs(view.X - g.cx) - half - flare * (view.Y - g.ey).clip(0)
        d = np.maximum(np.maximum(sides, view.Y - bottom), g.ey - view.Y)
        d = np.minimum(d, view.ellipse(g.cx, g.ey, half, g.ey - g.top + thick))
        view.paint(view.cover(d), 0.8 * view.hair * _texture(view, rng, math.pi / 2, curl))


def _draw_body(ph: _Photo, p: Identity, g: _Geometry, rng) -> None:
    clothes = _palette(rng)
    collar = rng.choice(["crew", "v", "shirt", "turtleneck"], p=[0.35, 0.25, 0.3, 0.1])
    neck_w = g.jaw * 0.7
    view = ph.crop(g.cx - 3 * g.hw, g.chin - 9, g.cx + 3 * g.hw, 70)
    neck = np.maximum(np.abs(view.X - g.cx) - neck_w, g.chin - 8 - view.Y)
    view.paint(view.cover(neck), view.skin * 0.72)
    top = g.chin + rng.uniform(5, 8)
    body = view.ellipse(g.cx, top + 20, 2.2 * g.hw, 20)
    lit = 1 + 0.15 * np.clip((view.X - g.cx) / 30, -1, 1) * rng.choice([-1, 1])
    if rng.random() < 0.25:
        lit = lit * (1 - 0.15 * (np.sin(view.Y * rng.uniform(1.2, 2.5)) > 0))
    view.paint(view.cover(body), clothes * lit[..., None])
    if collar == "v":
        depth = rng.uniform(8, 14)
        x = np.abs(view.X - g.cx) * depth / neck_w
        view.paint(
            view.cover(np.maximum(x + (view.Y - top - depth), top - view.Y)), view.skin * 0.8
        )
    elif collar == "shirt":
        for sign in (-1, 1):
            tri = [[g.cx, top + 7], [g.cx + sign * (neck_w + 3), top - 1], [g.cx + sign * 2, top]]
            _line(ph, tri, 2.2, (236, 236, 232))
    elif collar == "turtleneck":
        d = np.maximum(np.abs(view.X - g.cx) - neck_w - 0.8, g.chin + 2 - view.Y)
        view.paint(view.cover(d), clothes * 0.9)
    else:
        _line(ph, _arc(g.cx, top, neck_w + 1, 2.5, 0, 180), 1.2, clothes * 0.7)


def _draw_ears(ph: _Photo, p: Identity, g: _Geometry) -> None:
    ear_y = g.ey + 3.0
    w = float(g.half_width(np.array(ear_y)))
    for sign in (-1, 1):
        ex = g.cx + sign * (w + 0.2)
        view = ph.crop(ex - 3, ear_y - 5.5, ex + 3, ear_y + 7)
        view.paint(view.cover(view.ellipse(ex, ear_y, 2.0, 4.3)), view.skin * 0.88)
        inner = view.cover(view.ellipse(ex + sign * 0.4, ear_y, 0.8, 2.6))
        view.paint(0.5 * inner, view.skin * 0.6)
        if p.earrings:
            metal = (222, 186, 90) if p.stream % 2 else (200, 200, 206)
            _dot(ph, ex, ear_y + 5.0, 0.9, 0.9, metal)


def _draw_face_details(ph: _Photo, p: Identity, g: _Geometry, rng, head: np.ndarray) -> None:
    """Freckles, age lines, eye bags, cheek colour, stubble and beards."""
    skin = np.array(p.skin_rgb, np.float32)
    line = skin * 0.62
    if p.freckles:
        for _ in range(int(30 * p.freckles)):
            x = g.cx + rng.choice([-1, 1]) * rng.uniform(3, 12)
            _dot(ph, x, g.ey + rng.uniform(1.5, 8), 0.35, 0.35, skin * 0.7, 0.35)
    if p.wrinkles > 0.15:
        w = p.wrinkles
        for k in range(1 + int(3 * w)):
            _line(ph, _arc(g.cx, g.top + 11 + 1.6 * k, 7, 6, 240, 300), 0.4, line, 0.45 * w)
        for sign in (-1, 1):
            fold = [[g.cx + sign * 3.2, g.nose_y - 0.5], [g.cx + sign * 4.8, g.nose_y + 2.5],
                    [g.cx + sign * (g.mouth_w + 1.4), g.mouth_y + 1.5]]  # fmt: skip
            _line(ph, fold, 0.45, line, 0.55 * w)
            x0 = g.lx if sign < 0 else g.rx
            _line(ph, _arc(x0, g.ey + 1.0, 3.2, 1.6, 20, 160), 0.5, line, 0.5 * w)
            for k in (-1, 0, 1):
                crow = [[x0 + sign * 4.3, g.ey + 0.5 * k], [x0 + sign * 5.8, g.ey + 1.2 * k]]
                _line(ph, crow, 0.3, line, 0.45 * w)
    if p.gender == "f" or rng.random() < 0.2:
        for x0 in (g.lx - 1, g.rx + 1):
            _dot(ph, x0, g.ey + 6.5, 3.5, 2.2, (210, 90, 90), 0.12, soft=2.5)
    hair = _hair_colour(p) * 0.8
    if p.facial_hair in ("stubble", "full"):
        view = ph.crop(g.cx - g.hw - 1, g.nose_y, g.cx + g.hw + 1, g.chin + 1)
        inside = head[view.window]
        below = np.clip((view.Y - (g.nose_y + 0.8)) / 1.5, 0, 1)
        edge = np.abs(view.X - g.cx) - (g.hw - 3)
        sides = np.clip(-edge / 1.5, 0, 1) + (view.Y > g.jaw_y - 4) * np.clip(edge / 1.5, 0, 1)
        region = inside * below * sides
        if p.facial_hair == "stubble":
            dots = (np.sin(view.X * 9.1) * np.sin(view.Y * 8.3) > 0.2).astype(np.float32)
            view.paint(region * (0.18 + 0.2 * dots), hair)
        else:
            lips = view.ellipse(g.cx, g.mouth_y, g.mouth_w + 0.8, 2.4)
            beard = region * np.clip(lips / 0.8, 0, 1) * 0.92
            view.paint(beard, hair * _texture(view, rng, 1.2, 0))
    if p.facial_hair in ("moustache", "full"):
        tache = [[g.cx - g.mouth_w - 0.6, g.mouth_y + 0.6], [g.cx, g.mouth_y - 1.9],
                 [g.cx + g.mouth_w + 0.6, g.mouth_y + 0.6]]  # fmt: skip
        _line(ph, tache, 1.5, hair, 0.9)


def _draw_eyes(ph: _Photo, p: Identity, g: _Geometry, gaze, light) -> None:
    a, b = 3.6 * p.eye_scale, 1.6 * p.eye_scale
    radius = (a * a + b * b) / (2 * b)
    brow = _hair_colour(p) * 0.75
    male = p.gender == "m"
    for x0, sign in ((g.lx, -1), (g.rx, 1)):
        view = ph.crop(x0 - a - 1, g.ey - b - 1, x0 + a + 1, g.ey + b + 1)
        c1 = np.hypot(view.X - x0, view.Y - (g.ey + radius - b)) - radius
        c2 = np.hypot(view.X - x0, view.Y - (g.ey - radius + b)) - radius
        inside = view.cover(np.maximum(c1, c2))
        view.paint(inside, (238, 236, 230))
        ix, iy = x0 + gaze[0], g.ey + 0.3 * gaze[1]
        r_iris = 1.55 * p.eye_scale
        view.paint(inside * view.cover(view.ellipse(ix, iy, r_iris, r_iris)), p.eye_rgb)
        view.paint(inside * view.cover(view.ellipse(ix, iy, 0.65, 0.65)), (12, 10, 10))
        glint = view.ellipse(ix + 0.6 * light[0], iy - 0.5, 0.32, 0.32)
        view.paint(inside * view.cover(glint), (255, 255, 255))
        lid = _arc(x0, g.ey + radius - b, radius, radius, 270 - 50, 270 + 50)
        lid = lid[np.abs(lid[:, 0] - x0) <= a + 0.2]
        _line(ph, lid, 0.45 if male else 0.75, (30, 22, 20))
        arch = [[x0 - sign * 3.8, g.ey - 3.6], [x0 - sign * 0.5, g.ey - 4.9],
                [x0 + sign * 4.2, g.ey - 4.0]]  # fmt: skip
        _line(ph, arch, 1.35 if male else 0.8, brow, 0.9)


def _draw_nose_and_mouth(ph, p: Identity, g: _Geometry, light, yaw, smile, open_mouth) -> None:
    skin = np.array(p.skin_rgb, np.float32)
    tip_x = g.cx + 1.5 * yaw
    side = -np.sign(light[0]) or 1.0
    ridge = [[g.cx + side * 1.5, g.ey + 2.5], [tip_x + side * 1.9, g.nose_y - 0.8]]
    view = ph.crop(*_box(ridge, 2))
    view.paint(0.25 * np.clip(0.5 - view.stroke(ridge, 0.6) / 1.2, 0, 1), skin * 0.55)
    _dot(ph, tip_x, g.nose_y + 0.2, 2.6, 1.2, skin * 0.7, 0.3, soft=1.0)
    for sign in (-1, 1):
        _dot(ph, tip_x + sign * 1.3, g.nose_y + 0.5, 0.7, 0.38, skin * 0.35, 0.75)
    _dot(ph, tip_x - 0.3, g.nose_y - 0.7, 0.7, 0.5, (255, 250, 245), 0.3)

    lip = np.array(p.lip_rgb, np.float32)
    mx, my, mw = g.cx + yaw, g.mouth_y, g.mouth_w + 0.5 * max(smile, 0)
    view = ph.crop(mx - mw - 1, my - 3, mx + mw + 1, my + 5)
    X, Y = view.X, view.Y
    u = np.clip((X - mx) / mw, -1.2, 1.2)
    middle = my - 0.9 * smile * u**2
    upper = my - 1.2 * (1 - u**2) + 0.35 * np.exp(-((u * 6) ** 2))  # the Cupid's bow
    lower = middle + 1.7 * (1 - u**2) + 0.3 * max(smile, 0)
    across = np.abs(X - mx) - mw
    middle_low = middle
    if open_mouth:
        middle_low = middle + 1.4
        view.paint(view.cover(np.maximum(across, np.maximum(middle - 0.2 - Y, Y - middle_low))),
                   (70, 30, 32))  # fmt: skip
        teeth = np.maximum(across + 1.0, np.maximum(middle - 0.2 - Y, Y - middle - 0.7))
        view.paint(view.cover(teeth), (236, 232, 222))
        lower = lower + 1.4
    view.paint(view.cover(np.maximum(across, np.maximum(upper - Y, Y - middle))), lip * 0.9)
    view.paint(view.cover(np.maximum(across, np.maximum(middle_low - Y, Y - lower))), lip)
    view.paint(0.6 * view.cover(np.maximum(across, np.abs(Y - middle) - 0.25)), lip * 0.5)


def _draw_front_hair(ph: _Photo, p: Identity, g: _Geometry, rng, head) -> None:
    thick, depth, _, curl = _HAIR_STYLES[p.hair_style]
    if p.hair_style == "bald":
        if p.age > 50:  # a fringe around the back and sides
            for sign in (-1, 1):
                x = g.cx + sign * (g.hw - 0.2)
                view = ph.crop(x - 2.6, g.ey - 8, x + 2.6, g.ey + 3)
                patch = view.cover(view.ellipse(x, g.ey - 2.5, 1.6, 4.5))
                view.paint(0.85 * patch, view.hair * _texture(view, rng, 1.4, 0))
        return
    if p.hair_style == "bun":
        view = ph.crop(g.cx - 5, g.top - 7.5, g.cx + 5, g.top + 1)
        view.paint(view.cover(view.ellipse(g.cx, g.top - 2.8, 4.2, 3.6)), view.hair * 0.9)
    reach = g.hw + thick + 2 * curl + 1
    view = ph.crop(g.cx - reach, g.top - thick - 2 * curl - 1, g.cx + reach, g.ey - 1)
    X, Y = view.X, view.Y
    dx = np.abs(X - g.cx) / g.hw
    recede = 4.0 * max(0.0, (p.age - 35) / 40) if p.gender == "m" else 0.0
    hairline = g.top + depth + 1.0 - recede * np.clip(1 - 2.5 * dx, 0, 1) + 2.5 * dx**2
    if p.hair_style == "side_part":
        side = 1 if p.stream % 2 else -1
        hairline = hairline + 2.5 * np.clip(side * (X - g.cx) / g.hw + 0.3, 0, 1.3)
    if p.hair_style in ("long", "bob"):
        hairline = hairline + 3.5 * np.clip(dx - 0.6, 0, None)
    hairline = np.minimum(hairline, g.ey - 5.5)
    cap = view.ellipse(g.cx, g.cheek_y - 1, g.hw + thick, g.cheek_y - 1 - g.top + thick)
    if curl:
        cap = cap - curl * 1.4 * np.sin(np.arctan2(Y - g.cheek_y, X - g.cx) * 14 + p.stream % 7)
    on_head = head[view.window] > 0.5
    d = np.maximum(cap, np.minimum(Y - hairline, Y - (g.ey - 2.5) + 30 * on_head))
    alpha = view.cover(d) * (0.8 if p.hair_style == "buzz" else 1.0)
    angle = 0.3 if p.hair_style == "side_part" else 1.2
    view.paint(alpha, view.hair * _texture(view, rng, angle, curl))


def _draw_accessories(ph: _Photo, p: Identity, g: _Geometry, rng, hat: bool) -> None:
    if hat and p.hat:
        colour = _palette(rng)
        view = ph.crop(g.cx - g.hw - 4, g.top - 8, g.cx + g.hw + 4, g.top + 9)
        X, Y = view.X, view.Y
        if p.hat == "beanie":
            d = np.maximum(view.ellipse(g.cx, g.top + 6, g.hw + 2.8, 13), Y - (g.top + 7.5))
            ribs = 1 - 0.12 * (np.sin(X * 3.0) > 0)
            view.paint(view.cover(d), colour * ribs[..., None])
            fold = np.maximum(np.abs(Y - (g.top + 6)) - 1.6, np.abs(X - g.cx) - g.hw - 2.9)
            view.paint(view.cover(fold), colour * 0.8)
        else:
            crown = np.maximum(view.ellipse(g.cx, g.top + 5, g.hw + 1.8, 11), Y - (g.top + 5.5))
            view.paint(view.cover(crown), colour)
            view.paint(view.cover(view.ellipse(g.cx, g.top + 5.8, g.hw + 3.5, 2.0)), colour * 0.7)
    if p.glasses:
        frame = ((20, 20, 24), (110, 62, 30), (190, 170, 110))[p.stream % 3]
        for x0 in (g.lx, g.rx):
            view = ph.crop(x0 - 5.5, g.ey - 4.5, x0 + 5.5, g.ey + 5)
            if p.glasses == "round":
                lens = view.ellipse(x0, g.ey + 0.3, 4.3, 4.1)
            else:
                lens = np.maximum(np.abs(view.X - x0) - 4.6, np.abs(view.Y - g.ey - 0.4) - 3.3)
            view.paint(0.08 * view.cover(lens), (180, 200, 220))
            view.paint(view.cover(np.abs(lens) - 0.32), frame)
        bridge = [[g.lx + 4.2, g.ey - 0.6], [g.cx, g.ey - 1.2], [g.rx - 4.2, g.ey - 0.6]]
        _line(ph, bridge, 0.5, frame)


def render_face(
    identity: Identity,
    rng: np.random.Generator,
    size: int = common.FACE_SIZE,
    jitter: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One photo of `identity`: an aligned crop, eyes near `faces.canonical_eyes(size)`.

    With `jitter=False` the eye centres are exactly on the canonical spots (no pose change; every
    other per-photo draw is the same as with jitter).

    Returns:
      `(image, face_mask)`: uint8 `[size, size, 3]` RGB, and bool `[size, size]`, the head's
      skin outline (no ears or neck) whatever covers it.
    """
    p, g = identity, _Geometry.of(identity)
    # Per photo: pose (roll about the eyes, scale, shift, a little yaw), light, expression.
    angle = math.radians(float(np.clip(rng.normal(0, 3.0), -7, 7)))
    scale = float(np.clip(rng.normal(1, 0.03), 0.93, 1.07))
    shift = np.clip(rng.normal(0, 0.7, 2), -1.5, 1.5)
    cos, sin = math.cos(angle), math.sin(angle)
    rot = scale * np.array([[cos, -sin], [sin, cos]])
    centre = np.array([g.cx, g.ey])
    pose = np.concatenate([rot, (centre + shift - rot @ centre)[:, None]], axis=1)
    if not jitter:
        pose = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    yaw = float(np.clip(rng.normal(0, 0.4), -1, 1)) * jitter
    light = np.array([rng.uniform(-0.9, 0.9), rng.uniform(-0.6, 0.2), 1.0])
    light = (light / np.linalg.norm(light)).astype(np.float32)
    ambient = rng.uniform(0.45, 0.65)
    tint = (1 + np.array([1.0, 0.2, -0.8]) * rng.uniform(-0.06, 0.06)).astype(np.float32)
    shine = rng.uniform(0.05, 0.2)
    smile = float(rng.uniform(-0.2, 1.0))
    open_mouth = bool(rng.random() < 0.2)
    gaze = np.clip(rng.normal(0, 0.3, 2), -0.6, 0.6)
    hat = bool(rng.random() < 0.5)

    ph = _Photo(size, pose)
    _draw_background(ph, rng, light, g)
    # Shading from an ellipsoid-like head (a cylinder below the chin, a shell above the head):
    # Lambert, ambient and a specular highlight.
    mid, semi = (g.top + g.chin) / 2, (g.chin - g.top) / 2
    shell = (g.hw + 4) * np.sqrt(np.clip(1 - ((ph.Y - mid) / (semi + 6)) ** 2, 0.1, 1))
    head_w = g.half_width(ph.Y)
    w = np.where(ph.Y > g.chin, g.jaw * 0.7 + 1, np.where(head_w > 1, head_w, shell))
    nx = np.clip((ph.X - g.cx) / w, -1, 1) * 0.9
    ny = np.clip((ph.Y - mid) / semi, -1, 1) * 0.5
    nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0.02, 1))
    lambert = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0, 1)
    half = light + np.array([0.0, 0.0, 1.0], np.float32)
    half /= np.linalg.norm(half)
    spec = shine * np.clip(nx * half[0] + ny * half[1] + nz * half[2], 0, 1) ** 24
    shade = (ambient + (1 - ambient) * lambert)[..., None] * tint.astype(np.float32)
    ph.skin = np.array(p.skin_rgb, np.float32) * shade + 255 * spec[..., None]
    ph.hair = _hair_colour(p).astype(np.float32) * (0.55 + 0.45 * lambert)[..., None] * tint

    _draw_back_hair(ph, p, g, rng)
    _draw_body(ph, p, g, rng)
    _draw_ears(ph, p, g)
    head = ph.cover(np.abs(ph.X - g.cx) - head_w)
    ph.paint(head, ph.skin)
    if p.build > 1.0:  # a second chin
        chin = _arc(g.cx, g.chin - 2, g.jaw * 0.5, 1.5, 20, 160)
        _line(ph, chin, 0.4, np.array(p.skin_rgb) * 0.6, 0.3)
    _draw_face_details(ph, p, g, rng, head)
    _draw_eyes(ph, p, g, gaze, light)
    _draw_nose_and_mouth(ph, p, g, light, yaw, smile, open_mouth)
    _draw_front_hair(ph, p, g, rng, head)
    _draw_accessories(ph, p, g, rng, hat)

    # The camera: box-filtered down, then white balance, gamma, vignette, a little blur, noise.
    s = _SUPERSAMPLE
    image = np.clip(ph.image, 0, 255).reshape(size, s, size, s, 3).mean(axis=(1, 3)) / 255
    image = image ** rng.uniform(0.85, 1.15) * rng.normal(1, 0.04, 3).astype(np.float32)
    r = np.hypot(*np.meshgrid(*[np.linspace(-1, 1, size, dtype=np.float32)] * 2)) / math.sqrt(2)
    small = image * (1 - rng.uniform(0, 0.35) * r**2)[..., None] * 255
    sigma = rng.uniform(0, 0.8)
    if sigma > 0.3:
        small = cv2.GaussianBlur(small, (0, 0), sigma)
    small = small + rng.normal(0, rng.uniform(1.0, 3.5), small.shape)
    out = np.clip(np.round(small), 0, 255).astype(np.uint8)
    mask = head.reshape(size, s, size, s).mean(axis=(1, 3)) >= 0.5
    return out, mask
