"""What both built-in corpora share: utterance lengths, people and their names, signal helpers.

Corpus "a" (`corpus_a`) and corpus "b" (`corpus_b`) draw their people, voices and faces
otherwise, but with the same rules for how long an utterance is (`DURATIONS`), who is in which
split and what they are called (`draw_people`), and which generator each file draws from
(`identity_rng`): so both split alike and their utterances follow the same length laws.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from v2f_jax.input_pipeline.constants import SAMPLE_RATE

MIN_SECONDS, MAX_SECONDS = 2.5, 4.5  # a file's length with durations="short"
FACE_SIZE = 96  # side of a face PNG, pixels, unless asked otherwise

# Utterance lengths: "short" (the default: quick to make and to prepare) or "voxceleb", like
# VoxCeleb1's (at least 4 s, mean 8.2 s, a long right tail; Nagrani et al. 2017), for benchmarks
# that need realistic lengths.
DURATIONS = ("short", "voxceleb")
# "voxceleb" draws the speech, what the VAD of `v2f prepare` keeps (a corpus's `_plan`), not the
# file: 4 s plus a lognormal excess (median 2.7 s, sigma 1.0), truncated at 30 s in all: mean
# 8.0 s, median 6.7 s, 99th percentile 24 s. The last syllable runs past the draw, so the VAD
# keeps about 0.2 s more (-0.3 to +0.6 s): mean ~8.2 s, median ~6.9 s. Files add the leading and
# trailing silence and the pauses: mean ~11 s. (VoxCeleb1's longest is 145 s; the cap keeps one
# file from taking over a small corpus.)
VOX_MIN_SECONDS, VOX_MAX_SECONDS = 4.0, 30.0
_VOX_EXCESS_MEDIAN, _VOX_EXCESS_SIGMA = 2.7, 1.0
# What the VAD of `v2f prepare` keeps of the pause after a phrase, measured (webrtcvad's hangover).
VAD_KEEPS_AFTER_PHRASE = 0.08

# First names by split side: A-E names are the reference's test split. Each corpus brings its
# own surnames.
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
# Enough unique names in the smallest group (male, A-E): 15 first names x 54 surnames (corpus
# "a"'s; "b" has 60), ~1/6 of all.
MAX_IDENTITIES = 4000


def identity_rng(identity, purpose: int, index: int) -> np.random.Generator:
    """The generator of one of `identity`'s draws (any corpus's identity: its `stream`).

    Purposes: 0 attributes, 1 video ids (index 0) and choices (utterance + 1), 2 utterance
    `index`, 3 face `index`. A file's draws depend on nothing else, so more files change none.
    """
    return np.random.default_rng([identity.stream, purpose, index])


def draw_people(n: int, entropy, surnames, sample_attributes, identity_type) -> list:
    """`make_identities` for any corpus: its surnames, its `sample_attributes(rng, gender)` and
    its identity type; `entropy` seeds everything (`np.random.SeedSequence`).

    Genders alternate and every third identity of each gender has an A-E name (the reference's
    test split); the Set column marks exactly those "test", so either split rule agrees. Sorted
    by name with ids id10001... in that order (as in VoxCeleb1).
    """
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
        # Purpose 0 of `identity_rng`, before there is an identity to pass it.
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
# Utterance lengths.


def voxceleb_speech_seconds(rng: np.random.Generator) -> float:
    """One draw of the "voxceleb" speech length, in [VOX_MIN_SECONDS, VOX_MAX_SECONDS] s.

    One uniform draw through the inverse CDF, so the truncation needs no rejection loop.
    """
    normal = statistics.NormalDist()
    mu, sigma = math.log(_VOX_EXCESS_MEDIAN), _VOX_EXCESS_SIGMA
    top = normal.cdf((math.log(VOX_MAX_SECONDS - VOX_MIN_SECONDS) - mu) / sigma)
    u = top * (1.0 - rng.random())  # in (0, top]: inv_cdf(0) is -inf
    return VOX_MIN_SECONDS + math.exp(mu + sigma * normal.inv_cdf(u))


def draw_utterance_length(rng: np.random.Generator, durations: str) -> tuple[float, float]:
    """The first draw of a corpus's utterance plan: how long the file or its speech is.

    "short" draws the file's length (the plan fits phrases into it); "voxceleb" draws the length
    of the speech instead (`voxceleb_speech_seconds`: the syllables, which the VAD of `v2f
    prepare` keeps, not the silences or the pauses, which it drops) and the plan adds syllables
    until it is reached.

    Returns:
      `(file_seconds, speech_seconds)`, the one not drawn `math.inf`.
    """
    if durations == "short":
        return rng.uniform(MIN_SECONDS, MAX_SECONDS), math.inf
    if durations == "voxceleb":
        return math.inf, voxceleb_speech_seconds(rng)
    raise ValueError(f"durations must be one of {DURATIONS}, got {durations!r}")


# ---------------------------------------------------------------------------------------------
# Signal helpers.


def raised_cosine(n: int, attack: int, release: int) -> np.ndarray:
    """An `[n]` envelope of ones with raised-cosine ramps `attack` and `release` samples long
    (each at most half of `n`)."""
    env = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n - n // 2)
    if attack:
        env[:attack] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(attack) + 0.5) / attack)
    if release:
        env[n - release :] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(release) + 0.5) / release)
    return env


def smooth_noise(rng: np.random.Generator, n: int, rate_hz: float) -> np.ndarray:
    """Unit-variance noise that varies at about `rate_hz`, `n` samples long (16 kHz)."""
    step = SAMPLE_RATE / rate_hz
    knots = rng.normal(size=int(n / step) + 3)
    return np.interp(np.arange(n) / step, np.arange(knots.size), knots)


def moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """`x` `[N]` averaged over `width` samples, edges padded with the end values; `[N]`."""
    c = np.cumsum(np.pad(x, (width // 2 + 1, width - width // 2), mode="edge"))
    return (c[width:] - c[:-width])[: x.size] / width
