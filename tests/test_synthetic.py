"""The built-in corpora: layout, determinism, audio format, VAD, and the voice-face links."""

import csv
import dataclasses
import hashlib
import json
import pathlib
import wave

import numpy as np
import pytest
import webrtcvad

from v2f_jax import cli
from v2f_jax.input_pipeline import faces
from v2f_jax.synthetic import common, corpus_a, writer
from v2f_jax.synthetic import corpus_b as corpus_b_lib  # "corpus_b" is a fixture below

N_IDS, N_UTTS, N_FACES = 8, 3, 2


def _files(root: pathlib.Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rank_correlation(a, b) -> float:
    ra, rb = (np.argsort(np.argsort(x)) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "corpus"
    summary = writer.make_corpus(out, identities=N_IDS, utterances=N_UTTS, faces=N_FACES, seed=0)
    return out, summary


def _meta(out: pathlib.Path) -> list[dict]:
    with open(out / "vox1_meta.csv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_layout_and_meta_table(corpus):
    out, summary = corpus
    header = (out / "vox1_meta.csv").read_text().splitlines()[0]
    assert header == "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"
    rows = _meta(out)
    assert len(rows) == N_IDS
    ids = [r["VoxCeleb1 ID"] for r in rows]
    names = [r["VGGFace1 ID"] for r in rows]
    assert ids == [f"id{10001 + i}" for i in range(N_IDS)]
    assert names == sorted(names) and len(set(names)) == N_IDS
    assert sorted(p.name for p in (out / "voices").iterdir()) == ids
    assert sorted(p.name for p in (out / "faces").iterdir()) == names
    assert {r["Gender"] for r in rows} == {"m", "f"}
    test = [r for r in rows if r["VGGFace1 ID"][0] in "ABCDE"]
    train = [r for r in rows if r["VGGFace1 ID"][0] not in "ABCDE"]
    assert {r["Gender"] for r in test} == {r["Gender"] for r in train} == {"m", "f"}
    assert all(r["Set"] == ("test" if r in test else "dev") for r in rows)
    assert all(r["Nationality"] for r in rows)
    for voice_id in ids:
        videos = list((out / "voices" / voice_id).iterdir())
        assert all(len(v.name) == 11 for v in videos)
        wavs = sorted(w.name for v in videos for w in v.iterdir())
        assert len(wavs) == N_UTTS and all(w.endswith(".wav") for w in wavs)
        assert "00001.wav" in wavs
    for name in names:
        pngs = sorted(p.name for p in (out / "faces" / name).iterdir())
        assert pngs == [f"{i:05d}.png" for i in range(1, N_FACES + 1)]
    assert summary["identities"] == N_IDS
    assert summary["test_identities"] == len(test) and summary["train_identities"] == len(train)
    assert summary["utterances"] == N_IDS * N_UTTS and summary["faces"] == N_IDS * N_FACES


def test_about_a_third_are_test_identities():
    people = corpus_a.make_identities(60, seed=3)
    test = [p for p in people if p.name[0] in "ABCDE"]
    assert len(test) == 20
    assert {p.gender for p in test} == {"m", "f"}
    with pytest.raises(ValueError, match="need 4 to"):
        corpus_a.make_identities(3)


def test_same_seed_same_bytes_other_seed_other_corpus(tmp_path):
    kwargs = dict(identities=4, utterances=2, faces=2)
    writer.make_corpus(tmp_path / "a", seed=7, **kwargs)
    writer.make_corpus(tmp_path / "b", seed=7, workers=2, **kwargs)  # two processes
    writer.make_corpus(tmp_path / "c", seed=8, **kwargs)
    writer.make_corpus(tmp_path / "d", seed=7, identities=4, utterances=3, faces=3)
    a, b, c, d = (_files(tmp_path / d) for d in "abcd")
    assert a == b
    assert set(a.values()).isdisjoint(c.values())
    # More utterances and faces add files and change none but the tables.
    assert {k: v for k, v in a.items() if k.endswith((".wav", ".png"))}.items() <= d.items()
    assert len(d) > len(a)
    with pytest.raises(FileExistsError):
        writer.make_corpus(tmp_path / "a", seed=7, **kwargs)
    writer.make_corpus(tmp_path / "a", seed=8, overwrite=True, **kwargs)
    assert _files(tmp_path / "a") == c


def test_wavs_are_16khz_mono_int16_of_the_stated_lengths(corpus):
    out, summary = corpus
    total = 0
    for path in sorted((out / "voices").rglob("*.wav")):
        with wave.open(str(path)) as f:
            assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 16000)
            assert f.getcomptype() == "NONE"
            seconds = f.getnframes() / 16000
            samples = np.frombuffer(f.readframes(f.getnframes()), "<i2")
        assert common.MIN_SECONDS <= seconds <= common.MAX_SECONDS
        assert 2000 < np.abs(samples).max() < 32767  # loud, not clipped
        total += f.getnframes()
    assert summary["audio_seconds"] == pytest.approx(total / 16000, abs=0.01)


def _frames(segments, labels, n_frames, after=0, before=0):
    """Indices of the 20 ms frames wholly inside segments labelled `labels`, less `after` frames
    at their start (not at the file's start) and `before` frames at their end."""
    out = []
    for start, end, label in segments:
        if label in labels:
            first = -(-start // 320) + (after if start else 0)
            out.extend(range(first, min(n_frames, end // 320 - before)))
    return np.array(out, int)


def test_vad_keeps_syllables_and_drops_pauses():
    people = corpus_a.make_identities(8, seed=1)
    speech_in_vowels, speech_in_quiet, kept_vowels, kept_quiet = [], [], [], []
    for i, person in enumerate(people):
        samples, segments = corpus_a.synthesize_voice(person, np.random.default_rng(i))
        assert {"silence", "pause", "vowel"} <= {s[2] for s in segments}
        assert segments[0][2] == segments[-1][2] == "silence"
        vad = webrtcvad.Vad(2)
        n_frames = samples.size // 320
        frames = [samples[k * 320 : (k + 1) * 320].tobytes() for k in range(n_frames)]
        speech = np.array([vad.is_speech(f, 16000) for f in frames])
        vowels = _frames(segments, ("vowel",), n_frames)
        # webrtcvad holds "speech" ~100 ms after speech ends, and wakes up during 100 ms.
        quiet = _frames(segments, ("silence", "pause"), n_frames, after=6, before=2)
        speech_in_vowels.append(speech[vowels])
        speech_in_quiet.append(speech[quiet[quiet >= 5]])
        try:
            from v2f_jax.input_pipeline import audio

            kept = np.zeros(n_frames + 1, bool)
            kept[audio.vad_frames(samples)] = True
            kept_vowels.append(kept[vowels])
            kept_quiet.append(kept[_frames(segments, ("silence", "pause"), n_frames)])
        except (ImportError, AttributeError):
            pass
    assert np.concatenate(speech_in_vowels).mean() > 0.95
    assert np.concatenate(speech_in_quiet).mean() < 0.05
    if kept_vowels:  # the project's VAD (the reference's ring buffer) on the same audio
        assert np.concatenate(kept_vowels).mean() > 0.95
        assert np.concatenate(kept_quiet).mean() < 0.3  # most of the pauses go


def test_project_features_accept_every_synthetic_wav(corpus):
    audio = pytest.importorskip("v2f_jax.input_pipeline.audio")
    if not hasattr(audio, "voice_features"):
        pytest.skip("input_pipeline.audio.voice_features not written yet")
    out, _ = corpus
    for path in sorted((out / "voices").rglob("*.wav")):
        feats = audio.voice_features(path)
        assert feats.ndim == 2 and feats.shape[1] == 64 and feats.shape[0] > 100
        assert np.all(np.isfinite(feats))


def _f0(samples, segments):
    """Median autocorrelation pitch over 64 ms windows inside vowels."""
    x = samples.astype(float)
    lo, hi = 16000 // 400, 16000 // 60
    estimates = []
    for start, end, label in segments:
        for a in range(start + 320, end - 1024 - 320, 480) if label == "vowel" else ():
            frame = x[a : a + 1024] - x[a : a + 1024].mean()
            ac = np.correlate(frame, frame, "full")[1023:]
            estimates.append(16000 / (lo + np.argmax(ac[lo:hi])))
    return float(np.median(estimates))


def test_voice_carries_pitch_of_gender_and_identity():
    people = corpus_a.make_identities(12, seed=2)
    for i, person in enumerate(people):
        f0 = _f0(*corpus_a.synthesize_voice(person, np.random.default_rng(i)))
        assert f0 == pytest.approx(person.f0_hz, rel=0.1), person
        assert (f0 < 160) == (person.gender == "m"), (person.gender, f0)


def test_face_width_follows_vocal_tract_length():
    people = corpus_a.make_identities(16, seed=4)
    size = 96
    (_, eye_y), _ = faces.canonical_eyes(size)
    row = int(round(eye_y + 3 * size / 64))  # the cheeks, widest part of the outline
    widths = []
    for i, person in enumerate(people):
        w = []
        for k in range(2):
            image, mask = corpus_a.render_face(person, np.random.default_rng([i, k]), size)
            assert image.shape == (size, size, 3) and image.dtype == np.uint8
            assert mask.shape == (size, size) and mask.dtype == bool
            w.append(mask[row - 1 : row + 2].sum(axis=1).mean())
        widths.append(np.mean(w) * 64 / size)
    vtl = [p.vtl_cm for p in people]
    assert _rank_correlation(widths, vtl) > 0.8
    male = np.array([p.gender == "m" for p in people])
    assert np.mean(np.array(widths)[male]) > np.mean(np.array(widths)[~male]) + 2


def test_faces_load_as_aligned_crops(corpus):
    out, _ = corpus
    paths = sorted((out / "faces").rglob("*.png"))
    images = np.stack([faces.load_aligned_face(p) for p in paths])
    assert images.shape == (N_IDS * N_FACES, 64, 64, 3) and images.dtype == np.uint8
    assert images.std(axis=0).mean() > 20  # photos differ


def test_eyes_are_drawn_at_the_canonical_spots():
    person = corpus_a.make_identities(4, seed=0)[0]
    size = 128
    image, _ = corpus_a.render_face(person, np.random.default_rng(0), size, jitter=False)
    # The eye whites are the brightest, least saturated blobs near the canonical spots.
    for eye in faces.canonical_eyes(size):
        x, y = (int(round(v)) for v in eye)
        patch = image[y - 3 : y + 4, x - 12 : x + 13].astype(int)
        white = (patch.min(axis=2) > 200) & (np.ptp(patch, axis=2) < 30)
        cols = np.nonzero(white.any(axis=0))[0]
        assert cols.size and abs((cols.min() + cols.max()) / 2 - 12) <= 1.5


def test_v2f_synth_command(tmp_path, capsys):
    out = tmp_path / "synth"
    argv = ["synth", "--out", str(out), "--identities", "4", "--utterances", "1", "--faces", "1"]
    assert cli.main(argv + ["--face-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 identities" in printed and str(out) in printed
    assert len(list(out.rglob("*.wav"))) == 4 and len(list(out.rglob("*.png"))) == 4
    assert len(_meta(out)) == 4
    assert cli.main(argv) == 2  # refuses to mix two corpora
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite", "--seed", "1"]) == 0


def test_region_sets_nationality_skin_and_accent():
    people = corpus_a.make_identities(200, seed=5)
    for p in people:
        region = corpus_a.REGIONS[p.region]
        assert p.nationality in region.nationalities, p
    # Skin: West African speakers darker than northern ones (mean RGB), with no overlap of means.
    lightness = {
        name: [np.mean(p.skin_rgb) for p in people if p.region == name]
        for name in ("northern", "west_african")
    }
    assert min(lightness["northern"]) > max(lightness["west_african"])

    # Accent: the same speaker (gender, vocal tract, F0) in two regions; the darker voice quality
    # and vowel set of one show in the long-term spectrum, 2-6 kHz against 0.3-1 kHz.
    base = people[0]

    def tilt_db(region: str) -> float:
        person = dataclasses.replace(base, region=region)
        power = []
        for i in range(3):
            samples, _ = corpus_a.synthesize_voice(person, np.random.default_rng(i))
            spec = np.abs(np.fft.rfft(samples.astype(float))) ** 2
            freqs = np.fft.rfftfreq(samples.size, 1 / corpus_a.SAMPLE_RATE)
            high = spec[(freqs > 2000) & (freqs < 6000)].mean()
            power.append(10 * np.log10(high / spec[(freqs > 300) & (freqs < 1000)].mean()))
        return float(np.mean(power))

    assert tilt_db("east_asian") > tilt_db("west_african") + 3


def _speech_seconds(events) -> float:
    """What the VAD keeps of a plan, as `_plan` counts it: syllables, and a little after each
    phrase."""
    syllables = sum(e - s for s, e, label, _ in events if label in ("consonant", "vowel"))
    phrases = len({info["phrase_span"] for *_, label, info in events if label == "vowel"})
    return syllables / 16000 + phrases * common.VAD_KEEPS_AFTER_PHRASE


def test_voxceleb_durations_are_like_voxceleb1s():
    draws = np.array(
        [common.voxceleb_speech_seconds(np.random.default_rng(i)) for i in range(4000)]
    )
    assert draws.min() >= 4.0 and draws.max() <= 30.0
    assert 7.6 < draws.mean() < 8.5 and 6.2 < np.median(draws) < 7.2
    assert (draws > 15).mean() > 0.03  # a long right tail

    # Planned utterances (no audio): at least the drawn speech, the file longer by the silences.
    people = corpus_a.make_identities(8, seed=0)
    speech, seconds = [], []
    for person in people:
        for u in range(25):
            target = common.voxceleb_speech_seconds(common.identity_rng(person, 2, u))
            n, events = corpus_a._plan(person, common.identity_rng(person, 2, u), "voxceleb")
            assert events[0][2] == events[-1][2] == "silence" and events[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(events, events[1:]))  # contiguous
            speech.append(_speech_seconds(events))
            seconds.append(n / 16000)
            assert target <= speech[-1] < target + 0.5
            assert seconds[-1] > speech[-1] + 0.3  # leading and trailing silence at least
    speech = np.array(speech)
    assert speech.min() >= 4.0 and 7.3 < speech.mean() < 9.3 and speech.max() < 31
    # Deterministic per seed.
    again = corpus_a._plan(people[0], common.identity_rng(people[0], 2, 0), "voxceleb")
    first = corpus_a._plan(people[0], common.identity_rng(people[0], 2, 0), "voxceleb")
    assert again[0] == first[0] and [e[:3] for e in again[1]] == [e[:3] for e in first[1]]
    other = corpus_a.make_identities(8, seed=1)[0]
    assert corpus_a._plan(other, common.identity_rng(other, 2, 0), "voxceleb")[0] != first[0]
    with pytest.raises(ValueError, match="durations"):
        corpus_a._plan(people[0], np.random.default_rng(0), "long")


def test_default_durations_plan_as_before():
    """The default ("short") plans exactly what it planned before `durations` existed (the same
    seed gives the same wavs)."""
    people = corpus_a.make_identities(4, seed=0)
    plans = [corpus_a._plan(p, common.identity_rng(p, 2, u)) for p in people for u in range(3)]
    assert [n for n, _ in plans] == [
        43581, 59559, 44354, 53498, 52895, 54041, 66125, 41271, 59666, 52224, 43767, 49846,
    ]  # fmt: skip
    key = repr([(n, [(s, e, label) for s, e, label, _ in events]) for n, events in plans])
    assert hashlib.sha256(key.encode()).hexdigest() == (
        "683bc80d77354d73af2651cf401b65ca4582a2e57b04622054b83362e59b2e5c"
    )
    p = people[0]
    short = corpus_a._plan(p, np.random.default_rng(5), "short")
    assert corpus_a._plan(p, np.random.default_rng(5))[0] == short[0]


def test_voxceleb_speech_is_what_the_vad_keeps():
    audio = pytest.importorskip("v2f_jax.input_pipeline.audio")
    people = corpus_a.make_identities(4, seed=2)
    for i, person in enumerate(people):
        target = common.voxceleb_speech_seconds(np.random.default_rng(i))
        samples, _ = corpus_a.synthesize_voice(person, np.random.default_rng(i), "voxceleb")
        kept = audio.vad(samples).size / 16000
        assert target - 0.4 < kept < target + 0.8, (target, kept)
        assert samples.size / 16000 > kept + 0.3


def test_voxceleb_corpus_changes_only_the_voices(tmp_path, capsys):
    kwargs = dict(identities=4, utterances=1, faces=1, face_size=64, seed=3)
    short = writer.make_corpus(tmp_path / "short", **kwargs)
    assert short["durations"] == "short"
    argv = ["synth", "--out", str(tmp_path / "vox"), "--identities", "4", "--utterances", "1"]
    argv += ["--faces", "1", "--face-size", "64", "--seed", "3", "--durations", "voxceleb"]
    assert cli.main(argv) == 0
    assert "voxceleb durations" in capsys.readouterr().out
    a, b = _files(tmp_path / "short"), _files(tmp_path / "vox")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]) != k.endswith(".wav") for k in a)
    for path in (tmp_path / "vox" / "voices").rglob("*.wav"):
        with wave.open(str(path)) as f:
            assert f.getnframes() / 16000 > common.VOX_MIN_SECONDS + 0.3
    with pytest.raises(ValueError, match="durations"):
        writer.make_corpus(tmp_path / "bad", durations="long", **kwargs)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv[:-1] + ["long"])
    assert exit_.value.code == 2


# ---------------------------------------------------------------------------------------------
# Corpus "b": built otherwise, same layout.

B_IDS, B_UTTS, B_FACES = 16, 2, 2


@pytest.fixture(scope="module")
def corpus_b(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_b") / "corpus"
    summary = writer.make_corpus(
        out, identities=B_IDS, utterances=B_UTTS, faces=B_FACES, seed=0, face_size=64, corpus="b"
    )
    return out, summary


def _read_wav(path) -> np.ndarray:
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 16000)
        return np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(float)


def test_corpus_b_layout_meta_and_identities(corpus_b):
    out, summary = corpus_b
    assert summary["corpus"] == "b" and summary["identities"] == B_IDS
    rows = _meta(out)
    ids, names = [r["VoxCeleb1 ID"] for r in rows], [r["VGGFace1 ID"] for r in rows]
    assert ids == [f"id{10001 + i}" for i in range(B_IDS)]
    assert names == sorted(names) and len(set(names)) == B_IDS
    assert sorted(p.name for p in (out / "voices").iterdir()) == ids
    assert sorted(p.name for p in (out / "faces").iterdir()) == names
    test = [r for r in rows if r["VGGFace1 ID"][0] in writer.TEST_INITIALS]
    assert {r["Gender"] for r in test} == {r["Gender"] for r in rows if r not in test} == {"m", "f"}
    assert all(r["Set"] == ("test" if r in test else "dev") and r["Nationality"] for r in rows)
    assert summary["test_identities"] == len(test)
    for voice_id in ids:
        wavs = sorted((out / "voices" / voice_id).glob("*/*.wav"))
        assert len(wavs) == B_UTTS and all(len(w.parent.name) == 11 for w in wavs)
    for name in names:
        pngs = sorted(p.name for p in (out / "faces" / name).iterdir())
        assert pngs == [f"{i:05d}.png" for i in range(1, B_FACES + 1)]
    people = json.loads((out / "identities.json").read_text())
    assert [p["corpus"] for p in people] == ["b"] * B_IDS
    assert [p["name"] for p in people] == names


def test_corpus_b_is_deterministic_and_not_corpus_a(tmp_path, capsys):
    kwargs = dict(identities=4, utterances=1, faces=1, face_size=64, seed=7)
    writer.make_corpus(tmp_path / "b1", corpus="b", **kwargs)
    argv = ["synth", "--out", str(tmp_path / "b2"), "--identities", "4", "--utterances", "1"]
    argv += ["--faces", "1", "--face-size", "64", "--seed", "7", "--corpus", "b", "--workers", "2"]
    assert cli.main(argv) == 0
    assert "of corpus b" in capsys.readouterr().out
    writer.make_corpus(tmp_path / "a", **kwargs)
    b1, b2, a = (_files(tmp_path / d) for d in ("b1", "b2", "a"))
    assert b1 == b2
    assert set(a.values()).isdisjoint(b1.values())  # other people, voices and faces
    # Audio statistics: "a"'s noise floor is white, "b"'s pink (the first 0.1 s is silence).
    for root, low, high in (("a", -3, 3), ("b1", -20, -6)):
        for path in (tmp_path / root / "voices").rglob("*.wav"):
            lead = _read_wav(path)[:1600]
            power = np.abs(np.fft.rfft(lead * np.hanning(lead.size))) ** 2
            freqs = np.fft.rfftfreq(lead.size, 1 / 16000)
            tilt = power[freqs > 4000].mean() / power[(freqs > 100) & (freqs < 1000)].mean()
            assert low < 10 * np.log10(tilt) < high, (root, path)
    # Face pixels: another renderer; the eyes are still where the aligned crops put them.
    pngs = {d: sorted((tmp_path / d / "faces").rglob("*.png")) for d in ("a", "b1")}
    mean_a, mean_b = (np.mean([faces.load_aligned_face(p) for p in pngs[d]], 0) for d in pngs)
    assert np.abs(mean_a - mean_b).mean() > 10
    with pytest.raises(ValueError, match="corpus"):
        writer.make_corpus(tmp_path / "c", corpus="c", **kwargs)


def test_corpus_b_voices_are_speech_for_the_vad():
    from v2f_jax.input_pipeline import audio

    people = corpus_b_lib.make_identities(6, seed=1)
    kept_vowels, kept_quiet = [], []
    for i, person in enumerate(people):
        samples, segments = corpus_b_lib.synthesize_voice(person, np.random.default_rng(i))
        assert common.MIN_SECONDS <= samples.size / 16000 <= common.MAX_SECONDS
        assert 2000 < np.abs(samples).max() < 32767
        assert segments[0][2] == segments[-1][2] == "silence"
        n_frames = samples.size // 320
        kept = np.zeros(n_frames + 1, bool)
        kept[audio.vad_frames(samples)] = True
        kept_vowels.append(kept[_frames(segments, ("vowel",), n_frames)])
        kept_quiet.append(kept[_frames(segments, ("silence", "pause"), n_frames, after=6)])
        assert _f0(samples, segments) == pytest.approx(person.f0_hz, rel=0.15)
    assert np.concatenate(kept_vowels).mean() > 0.95
    assert np.concatenate(kept_quiet).mean() < 0.1


def _cheek_lightness(image: np.ndarray) -> float:
    """Mean grey level of two patches below the eyes of a 64x64 aligned face."""
    (lx, ey), (rx, _) = (tuple(int(v) for v in e) for e in faces.canonical_eyes())
    return float(np.mean([image[ey + 6 : ey + 10, x - 2 : x + 3].mean() for x in (lx, rx)]))


def _syllable_rate(x: np.ndarray) -> float:
    """Peaks of the 0.3-2 kHz energy (dB, 10 ms frames), 3 dB apart, per second above the floor."""
    frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::160] * np.hanning(400)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(400, 1 / 16000)
    env = 10 * np.log10(power[:, (freqs > 300) & (freqs < 2000)].sum(1) + 1e-9)
    env = np.convolve(env, np.ones(5) / 5, "same")
    active = env > env.max() - 30
    peaks = []
    for i in np.nonzero((env[1:-1] >= env[:-2]) & (env[1:-1] > env[2:]) & active[1:-1])[0] + 1:
        if not peaks or env[peaks[-1] : i].min() < min(env[peaks[-1]], env[i]) - 3:
            peaks.append(i)
        elif env[i] > env[peaks[-1]]:
            peaks[-1] = i
    return len(peaks) / (active.sum() / 100)


def _voiced_f0(x: np.ndarray) -> float:
    """Median autocorrelation pitch of the loud 40 ms frames (within 10 dB of the loudest)."""
    frames = np.lib.stride_tricks.sliding_window_view(x, 640)[::160]
    energy = (frames**2).mean(1)
    lo, hi = 16000 // 400, 16000 // 60
    estimates = []
    for frame in frames[energy > 0.1 * energy.max()]:
        ac = np.correlate(frame - frame.mean(), frame - frame.mean(), "full")[639:]
        estimates.append(16000 / (lo + np.argmax(ac[lo:hi])))
    return float(np.median(estimates))


def _within_gender_z(values, genders) -> np.ndarray:
    values, genders = np.asarray(values, float), np.asarray(genders)
    out = np.empty_like(values)
    for g in set(genders):
        v = values[genders == g]
        out[genders == g] = (v - v.mean()) / v.std()
    return out


def test_corpus_b_declared_links_hold_in_the_files(corpus_b):
    """Measured from the wavs and pngs: skin tone follows speaking rate (complexion), and face
    width follows F0 within gender (build)."""
    out, _ = corpus_b
    people = json.loads((out / "identities.json").read_text())
    rate, f0, cheek = [], [], []
    for p in people:
        voices = [_read_wav(w) for w in sorted((out / "voices" / p["voxceleb_id"]).rglob("*.wav"))]
        rate.append(np.mean([_syllable_rate(x) for x in voices]))
        f0.append(np.median([_voiced_f0(x) for x in voices]))
        images = [faces.load_aligned_face(f) for f in sorted((out / "faces" / p["name"]).iterdir())]
        cheek.append(np.mean([_cheek_lightness(im) for im in images]))
    assert _rank_correlation(cheek, rate) < -0.5  # darker skin, faster speech
    assert _rank_correlation(cheek, [p["complexion"] for p in people]) < -0.8
    # Face width from the renderer's face mask at the cheeks, in the same photos.
    widths = []
    for p in corpus_b_lib.make_identities(B_IDS, seed=0):
        rngs = [common.identity_rng(p, 3, k) for k in range(B_FACES)]
        masks = [corpus_b_lib.render_face(p, rng, 64)[1] for rng in rngs]
        widths.append(np.mean([m[29 + 2 : 29 + 5].sum(1).mean() for m in masks]))
    genders = [p["gender"] for p in people]
    z_f0, z_width = _within_gender_z(np.log(f0), genders), _within_gender_z(widths, genders)
    assert np.corrcoef(z_f0, z_width)[0, 1] < -0.5  # lower voice, wider face


def test_corpus_b_prepares_with_no_rejects(corpus_b, tmp_path):
    from v2f_jax.input_pipeline import prepare

    out, summary = corpus_b
    result = prepare.prepare(
        out / "voices", out / "faces", out / "vox1_meta.csv", tmp_path / "records",
        workers=1, progress=False, require_test_split=True,
    )  # fmt: skip
    assert result["rejects"] == []
    splits = json.loads((tmp_path / "records" / "manifest.json").read_text())["splits"]
    assert sum(s["num_voices"] for s in splits.values()) == B_IDS * B_UTTS
    assert sum(s["num_faces"] for s in splits.values()) == B_IDS * B_FACES
    assert len(splits["test"]["label_map"]) == summary["test_identities"]


def test_corpus_b_eyes_are_drawn_at_the_canonical_spots():
    size = 128
    for i, person in enumerate(corpus_b_lib.make_identities(4, seed=0)):
        image, mask = corpus_b_lib.render_face(person, np.random.default_rng(i), size, jitter=False)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8 and mask.any()
        for eye in faces.canonical_eyes(size):
            x, y = (int(round(v)) for v in eye)
            patch = image[y - 2 : y + 3, x - 14 : x + 15].astype(int)
            white = (patch.min(axis=2) > 170) & (np.ptp(patch, axis=2) < 40)
            cols = np.nonzero(white.any(axis=0))[0]
            assert cols.size and abs((cols.min() + cols.max()) / 2 - 14) <= 2, (i, eye)
