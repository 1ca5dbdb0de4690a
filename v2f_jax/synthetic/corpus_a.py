"""Corpus "a", the built-in corpus: its people, their voices (source-filter) and faces (OpenCV).

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

`writer.make_corpus` writes it to disk; corpus "b" (`corpus_b`) is made otherwise, to tune a
recipe on one and confirm it on the other.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from v2f_jax.input_pipeline import faces as facelib
from v2f_jax.input_pipeline.constants import IMAGE_SIZE, SAMPLE_RATE
from v2f_jax.synthetic import common

# Corpus "a"'s surnames (the first names are `common`'s).
_SURNAMES = (
    "Abbott Adeyemi Baker Bell Brooks Carter Chen Cole Dalton Diaz Doyle Ellis Evans Fischer Ford "
    "Fox Garcia Gray Hale Hayes Ito Jensen Kane Khan Kowalski Larsen Lopez Mason Mendes Meyer "
    "Moreno Nash Nguyen Novak Okafor Olsen Park Patel Reyes Rossi Sato Shaw Silva Stone Tanaka "
    "Turner Vance Varga Walsh Webb Weiss Young Zhang Ziegler"
).split()

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
    return common.draw_people(n, seed, _SURNAMES, _sample_attributes, Identity)


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


def _plan(
    identity: Identity, rng: np.random.Generator, durations: str = "short"
) -> tuple[int, list]:
    """Timing: `[(start, end, label, info)]` in samples, labels silence/pause/consonant/vowel.

    "short" draws the file's length and fits phrases into it. "voxceleb" draws the length of the
    speech instead (`common.draw_utterance_length`: syllables, which the VAD of `v2f prepare`
    keeps, not the leading and trailing silence or the pauses, which it drops), adds syllables
    until it is reached, and the file ends after the trailing silence.
    """
    duration, speech = common.draw_utterance_length(rng, durations)
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
            spoken += common.VAD_KEEPS_AFTER_PHRASE
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
    """One utterance of `identity`, its length drawn as `durations` (`common.DURATIONS`) says.

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
            env = common.raised_cosine(length, 20 * ms, 40 * ms) * info["stress"]
            g_voice[start:end] = env
            g_breath[start:end] = env * identity.breathiness
            formant_targets[frames] = _VOWELS[info["vowel"]] * vtl_scale
        elif label == "consonant":
            onset = info["onset"]
            _, centre, width = _ONSETS[onset]
            fric_centre[frames], fric_width[frames] = centre or 4000.0, width or 3000.0
            vowel = _VOWELS[info["vowel"]] * vtl_scale
            if onset == "nasal":
                g_voice[start:end] = 0.3 * common.raised_cosine(length, 15 * ms, 5 * ms)
                formant_targets[frames] = _NASAL * vtl_scale
            elif onset == "h":
                g_breath[start:end] = 0.5 * common.raised_cosine(length, 15 * ms, 5 * ms)
                formant_targets[frames] = vowel
            elif onset == "stop":
                burst = min(length, 15 * ms)
                g_fric[end - burst : end] = 1.2 * common.raised_cosine(burst, 2 * ms, 8 * ms)
                formant_targets[frames] = vowel
            else:
                g_fric[start:end] = common.raised_cosine(length, 25 * ms, 10 * ms) * (
                    0.5 if onset == "f" else 1.0
                )
                formant_targets[frames] = vowel
        elif label == "pause" and info["inhale"]:
            inhale = min(length - 40 * ms, int(rng.uniform(0.12, 0.25) * SAMPLE_RATE))
            if inhale > 0:
                at = start + (length - inhale) // 2
                breath = common.raised_cosine(inhale, inhale // 2, inhale // 2)
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
    semitones = common.moving_average(semitones, 40 * ms)
    semitones += 0.4 * common.smooth_noise(rng, n, 3.0)
    jitter = 1 + identity.jitter * common.smooth_noise(rng, n, 80.0)
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
    identity: Identity, rng: np.random.Generator, size: int = common.FACE_SIZE, jitter: bool = True
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
