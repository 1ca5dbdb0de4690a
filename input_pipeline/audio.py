"""Audio to voice features: decode, VAD and the log-mel front ends.

`wen2019` reproduces the front end of the reference (Wen, Singh & Raj 2019): webrtcvad with the
reference's ring-buffer call pattern, then a Sphinx-style log mel filterbank, normalised per bin.
`librosa` is a plain librosa log-mel with the same nominal parameters, for comparison; the two are
not interchangeable (they correlate only ~0.7-0.8), so every manifest and exported model records
`frontend_params(...)`.

Everything here is numpy on the host: it runs once, offline, in `v2f prepare` / `v2f features`.
"""

from __future__ import annotations

import collections
import functools
import os
import pathlib

import numpy as np

from v2f_jax.input_pipeline import errors
from v2f_jax.input_pipeline.constants import N_MELS, SAMPLE_RATE

FRONTENDS = ("wen2019", "librosa")

# The reference's analysis parameters (25 ms Hamming windows every 10 ms, 1024-point FFT).
_WIN = 400
_HOP = 160
_NFFT = 1024
_FMIN = 20.0
_FMAX = 7200.0
_PREEMPH = 0.97
_LOG_FLOOR = 1e-5
# The reference's VAD: 20 ms frames, a 50 ms "padding" ring (int(50/20) = 2 frames), 90 % rule.
_VAD_FRAME_MS = 20
_VAD_PADDING_MS = 50
_VAD_RATIO = 0.9
_VAD_AGGRESSIVENESS = 2
_EPS32 = float(np.finfo(np.float32).eps)

# The longest audio file decoded, in seconds: a longer one is rejected before it is read (its
# length comes from its header), so memory stays bounded (~0.5 GB at most, for 10 minutes at
# 96 kHz) whatever a file holds. VoxCeleb1's longest utterance is ~2.5 minutes.
MAX_SECONDS = 600.0
# Frames of the filterbank computed at a time (5 minutes of speech): bounds its memory.
_FBANK_CHUNK = 30_000
# Extensions libsndfile decodes; anything else needs an audioread backend (ffmpeg, gstreamer...).
_SOUNDFILE_EXTS = {
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
    ".au", ".snd", ".caf", ".w64", ".rf64", ".htk", ".sph", ".nist", ".voc", ".raw",
}  # fmt: skip


# ---------------------------------------------------------------------------------------- loading


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Reads any audio file a local decoder understands as 16 kHz mono int16.

    WAV/FLAC/OGG/MP3 of any bit depth (8/16/24/32-bit int or float) go through soundfile; other
    containers (m4a, ...) through audioread where a backend (ffmpeg, gstreamer) is installed.
    Channels are averaged and other sample rates resampled (soxr HQ, as librosa's "soxr_hq")
    block by block, as the file is read. A file longer than `MAX_SECONDS` is rejected before
    decoding.

    Args:
      path: the audio file.

    Returns:
      int16 samples `[N]` at `SAMPLE_RATE`, N > 0.

    Raises:
      errors.BadInputError: unreadable, not audio, no decoder for the format, empty, or
        non-finite samples.
    """
    path = pathlib.Path(path)
    mono = _decode(path)  # float64 [N] in [-1, 1] at SAMPLE_RATE (channels averaged)
    if mono.size == 0:
        raise errors.BadInputError(path, "empty audio (0 samples)")
    return np.clip(np.round(mono * 32768.0), -32768, 32767).astype(np.int16)


def check_duration(path: str | os.PathLike, seconds: float) -> None:
    """Refuses audio longer than `MAX_SECONDS` (or of no sensible length) before it is decoded.

    Raises:
      errors.BadInputError: naming the length and the limit.
    """
    if not seconds >= 0 or seconds == float("inf"):
        raise errors.BadInputError(path, f"its header gives no sensible length ({seconds})")
    if seconds > MAX_SECONDS:
        raise errors.BadInputError(
            path,
            f"{seconds:.0f} s of audio, longer than the {MAX_SECONDS:.0f} s a file may hold "
            f"(audio.MAX_SECONDS, which bounds memory); cut it into parts, e.g. `ffmpeg -i IN "
            f"-f segment -segment_time {MAX_SECONDS:.0f} OUT%03d.wav`",
        )


def _decode(path: pathlib.Path) -> np.ndarray:
    """Returns float64 `[N]` mono samples in [-1, 1] at `SAMPLE_RATE`, or raises
    BadInputError."""
    import soundfile

    ext = path.suffix.lower()
    if path.is_dir():
        raise errors.BadInputError(path, "a directory, not a file")
    if not path.is_file():
        raise errors.BadInputError(path, "unreadable or not audio (no such file)")
    _check_wav_length(path)
    try:
        with soundfile.SoundFile(str(path)) as f:
            rate, frames = int(f.samplerate), int(f.frames)
            if rate <= 0:
                raise errors.BadInputError(path, f"sample rate {rate} in its header")
            check_duration(path, frames / rate)
            return _read_mono(f, path, frames, rate)
    except errors.BadInputError:
        raise
    except Exception as err:  # libsndfile raises its own error types, and RuntimeError
        # libsndfile repeats the path; the BadInputError already names it.
        sf_reason = f"soundfile: {_one_line(err).replace(f'Error opening {str(path)!r}: ', '')}"
    try:
        return _decode_audioread(path)
    except _NoDecoder as err:
        if ext in _SOUNDFILE_EXTS or not ext:
            raise errors.BadInputError(path, f"unreadable or not audio ({sf_reason})") from None
        raise errors.BadInputError(
            path,
            f"{ext.lstrip('.')}: no decoder installed that can read it ({sf_reason}; {err}; "
            "install ffmpeg, or convert to wav)",
        ) from None
    except Exception as err:
        raise errors.BadInputError(
            path, f"unreadable or not audio ({sf_reason}; audioread: {_one_line(err)})"
        ) from None


def _check_wav_length(path: pathlib.Path) -> None:
    """A WAV cut short (an interrupted copy or download) still decodes: libsndfile reads what is
    there, with only a note in its log. Its header says how long the audio is; hold it to that.

    Raises:
      errors.BadInputError: the RIFF/WAVE `data` chunk ends past the end of the file.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] != b"RIFF" or head[8:] != b"WAVE":
                return  # not a little-endian RIFF/WAVE (RF64, RIFX, ... have their own headers)
            offset = 12
            while offset + 8 <= size:
                f.seek(offset)
                header = f.read(8)
                chunk, length = header[:4], int.from_bytes(header[4:], "little")
                if chunk == b"data":
                    # 0xFFFFFFFF: a stream written without knowing its length
                    have = size - offset - 8
                    if length != 0xFFFFFFFF and length > have:
                        raise errors.BadInputError(
                            path,
                            f"truncated WAV: its header promises {length} bytes of audio, the "
                            f"file holds {have}",
                        )
                    return
                offset += 8 + length + (length & 1)
    except OSError:
        return  # decoding says what is wrong with an unreadable file


class _NoDecoder(Exception):
    pass


def _read_mono(f, path: pathlib.Path, frames: int, rate: int, block: int = 1 << 16) -> np.ndarray:
    """An open `soundfile.SoundFile`'s samples as float64 `[N]` at `SAMPLE_RATE`: each block's
    channels averaged and resampled (soxr HQ, streamed) as it is read, so that memory holds the
    16 kHz result and one block, never the file at its own rate and channel count (10 minutes of
    96 kHz stereo would be 0.9 GB as float64).

    Raises:
      errors.BadInputError: non-finite samples.
    """
    stream = None if rate == SAMPLE_RATE else _resampler(rate)
    out = np.empty(int(np.ceil(max(frames, 0) * SAMPLE_RATE / rate)) + 1, np.float64)
    n = 0

    def append(x: np.ndarray) -> None:
        nonlocal out, n
        if n + len(x) > out.size:  # more than the header said (a stream of unknown length)
            out = np.concatenate([out[:n], np.empty(max(len(x), out.size // 2), np.float64)])
        out[n : n + len(x)] = x
        n += len(x)

    for data in f.blocks(blocksize=block, dtype="float64", always_2d=True):
        mono = data.mean(axis=1)
        if not np.all(np.isfinite(mono)):
            raise errors.BadInputError(path, "non-finite samples")
        append(mono if stream is None else stream.resample_chunk(mono))
    if stream is not None:
        append(stream.resample_chunk(np.zeros(0, np.float64), last=True))
    return out[:n]


def _resampler(rate: int):
    """soxr's streaming HQ resampler from `rate` to `SAMPLE_RATE` (librosa's "soxr_hq")."""
    import soxr

    return soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float64", quality="HQ")


def _decode_audioread(path: pathlib.Path) -> np.ndarray:
    try:
        import audioread
    except ImportError:
        raise _NoDecoder("audioread is not installed") from None
    try:
        with audioread.audio_open(str(path)) as f:
            rate, channels = int(f.samplerate), int(f.channels)
            check_duration(path, float(f.duration))
            raw = b"".join(f)
    except audioread.NoBackendError:
        raise _NoDecoder("audioread: no backend for this format") from None
    pcm = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    mono = pcm[: pcm.size - pcm.size % channels].reshape(-1, channels).mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = _resampler(rate).resample_chunk(mono, last=True)
    return mono


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


def load_fbank_npy(path: str | os.PathLike) -> np.ndarray:
    """Loads features already computed by the reference (its `.npy` FBANK layout).

    Args:
      path: a `.npy` file holding `[T, 64]` floats.

    Returns:
      float32 `[T, 64]`, T > 0, all finite.

    Raises:
      errors.BadInputError: not a readable `.npy`, wrong shape or dtype, empty, or non-finite.
    """
    try:
        feats = np.load(os.fspath(path), allow_pickle=False)
    except Exception as err:
        raise errors.BadInputError(path, f"unreadable .npy ({_one_line(err)})") from None
    if not isinstance(feats, np.ndarray) or feats.dtype.kind not in "fiu":
        raise errors.BadInputError(path, f"not numeric features (dtype {feats.dtype})")
    if feats.ndim != 2 or feats.shape[1] != N_MELS:
        raise errors.BadInputError(path, f"expected shape [T, {N_MELS}], got {list(feats.shape)}")
    if feats.shape[0] == 0:
        raise errors.BadInputError(path, "empty features (T = 0)")
    feats = feats.astype(np.float32)
    if not np.all(np.isfinite(feats)):
        raise errors.BadInputError(path, "non-finite features")
    return feats


# -------------------------------------------------------------------------------------------- VAD


def vad_frames(
    samples_int16: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    aggressiveness: int = _VAD_AGGRESSIVENESS,
) -> np.ndarray:
    """The indices of the 20 ms frames the reference's VAD keeps (see `vad`): int64 `[K]`."""
    import webrtcvad

    samples = np.ascontiguousarray(samples_int16, dtype="<i2")
    frame_len = sample_rate * _VAD_FRAME_MS // 1000
    ring_len = _VAD_PADDING_MS // _VAD_FRAME_MS
    # Whole frames with at least one sample after them, as the reference's frame generator.
    n_frames = max(0, (samples.size - 1) // frame_len)
    frames = [samples[i * frame_len : (i + 1) * frame_len].tobytes() for i in range(n_frames)]

    detector = webrtcvad.Vad(aggressiveness)
    ring: collections.deque[int] = collections.deque(maxlen=ring_len)
    kept: list[int] = []
    segment: list[int] = []
    triggered = False
    for i in range(n_frames):
        ring.append(i)
        # The detector is stateful and the reference re-classifies every frame in the ring each
        # time it counts; one cached verdict per frame keeps different regions (up to 2 %).
        verdicts = [detector.is_speech(frames[j], sample_rate) for j in ring]
        if not triggered:
            if sum(verdicts) > _VAD_RATIO * ring_len:
                triggered = True
                segment = list(ring)
                ring.clear()
        else:
            segment.append(i)
            if len(verdicts) - sum(verdicts) > _VAD_RATIO * ring_len:
                triggered = False
                kept.extend(segment)
                segment = []
                ring.clear()
    kept.extend(segment)  # a segment still open at the end is kept
    return np.asarray(kept, np.int64)


def vad(
    samples_int16: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    aggressiveness: int = _VAD_AGGRESSIVENESS,
) -> np.ndarray:
    """The reference's voice activity detection: keeps the voiced segments, concatenated.

    webrtcvad on whole 20 ms frames, a ring of int(50 / 20) = 2 frames, a segment opening when
    more than 90 % of the ring is voiced and closing when more than 90 % is unvoiced.

    Args:
      samples_int16: int16 `[N]` mono samples.
      sample_rate: 8000, 16000, 32000 or 48000 (webrtcvad's rates).
      aggressiveness: webrtcvad mode, 0 (keeps most) to 3.

    Returns:
      int16 `[M]`, M a multiple of the 20 ms frame, possibly 0.
    """
    samples = np.asarray(samples_int16, np.int16)
    frame_len = sample_rate * _VAD_FRAME_MS // 1000
    kept = vad_frames(samples, sample_rate, aggressiveness)
    if kept.size == 0:
        return np.zeros(0, np.int16)
    idx = (kept[:, None] * frame_len + np.arange(frame_len)[None, :]).ravel()
    return samples[idx]


# ------------------------------------------------------------------------------------- front ends


def _mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def _mel_inv(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


@functools.cache
def _sphinx_filters() -> np.ndarray:
    """The reference's 64 triangular filters over the 513 FFT bins: float64 `[513, 64]`."""
    edges_hz = _mel_inv(np.linspace(_mel(_FMIN), _mel(_FMAX), N_MELS + 2))
    bin_hz = SAMPLE_RATE / _NFFT
    edges = np.round(edges_hz / bin_hz).astype(np.int64)  # nearest FFT bin of every edge
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # [64, 1]
    height = 2.0 / ((right - left) * bin_hz)
    k = np.arange(_NFFT // 2 + 1)[None, :]  # [1, 513]
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = height * (k - left) / (centre - left)
        falling = height * (right - k) / (right - centre)
    weights = np.where((k > left) & (k < centre), rising, 0.0)
    weights = np.where(k == centre, height, weights)
    weights = np.where((k > centre) & (k < right), falling, weights)
    return weights.T


def _normalise(logmel: np.ndarray) -> np.ndarray:
    """Per-bin mean/variance normalisation over time, as the reference: `[T, 64]` float32."""
    centred = logmel - logmel.mean(axis=0, keepdims=True)
    return (centred / (logmel.std(axis=0, keepdims=True) + _EPS32)).astype(np.float32)


def wen2019_fbank(samples_int16: np.ndarray) -> np.ndarray:
    """The reference's Sphinx-style log mel filterbank, normalised per bin.

    Args:
      samples_int16: int16 `[N]` at 16 kHz (normally the VAD output), N > 0.

    Returns:
      float32 `[int(N / 160) + 1, 64]`, each bin zero-mean and unit-std over time.
    """
    x = np.asarray(samples_int16).astype(np.float64)
    n_frames = int(x.size / _HOP) + 1
    # Long speech a chunk of frames at a time: memory bounded, every frame computed alike.
    chunks = [
        _log_mel_frames(x, a, min(a + _FBANK_CHUNK, n_frames))
        for a in range(0, n_frames, _FBANK_CHUNK)
    ]
    return _normalise(chunks[0] if len(chunks) == 1 else np.concatenate(chunks))


def _log_mel_frames(x: np.ndarray, a: int, b: int) -> np.ndarray:
    """The log mel filterbank of frames `a..b-1` of float64 samples `x`: `[b - a, 64]`."""
    n = x.size
    n_frames = int(n / _HOP) + 1
    n_full = min(n_frames, (n - _WIN) // _HOP + 1) if n >= _WIN else 0
    lo = max(a - 1, 0)  # the frame before `a` gives its pre-emphasis carry
    frames = np.empty((b - lo, _WIN))
    full_end = min(max(n_full, lo), b)
    if full_end > lo:
        frames[: full_end - lo] = np.lib.stride_tricks.sliding_window_view(x, _WIN)[::_HOP][
            lo:full_end
        ]
    # The last few frames run past the end: each repeats what it has cyclically (numpy.resize),
    # and a frame with nothing left is zeros.
    starts = np.arange(full_end, b)[:, None] * _HOP
    avail = np.clip(n - starts, 0, _WIN)
    offsets = np.arange(_WIN)[None, :] % np.maximum(avail, 1)
    tail = x[np.minimum(starts + offsets, max(n - 1, 0))] if n else np.zeros(offsets.shape)
    frames[full_end - lo :] = np.where(avail > 0, tail, 0.0)
    # Pre-emphasis carries over from the last sample of the previous (filled) frame.
    prior = np.concatenate([[0.0], frames[:-1, -1]])[:, None]
    frames = frames - _PREEMPH * np.concatenate([prior, frames[:, :-1]], axis=1)
    frames = frames[a - lo :]
    spectrum = np.fft.rfft(frames * np.hamming(_WIN), _NFFT)
    power = spectrum.real**2 + spectrum.imag**2
    return np.log(np.maximum(power @ _sphinx_filters(), _LOG_FLOOR))


def librosa_logmel(samples_int16: np.ndarray) -> np.ndarray:
    """A librosa log mel (25 ms / 10 ms, 20-7200 Hz, 64 bins), normalised per bin.

    Not a drop-in for `wen2019_fbank`: same nominal parameters, different features.

    Args:
      samples_int16: int16 `[N]` at 16 kHz, N > 0.

    Returns:
      float32 `[1 + N // 160, 64]` (the same frame count as `wen2019_fbank`).
    """
    import librosa

    y = np.asarray(samples_int16).astype(np.float32) / 32768.0
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=SAMPLE_RATE,
        n_fft=512,
        win_length=_WIN,
        hop_length=_HOP,
        window="hamming",
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=N_MELS,
        fmin=_FMIN,
        fmax=_FMAX,
    )
    logmel = np.log(np.maximum(mel.T.astype(np.float64), 1e-10))
    return _normalise(logmel)


_FRONTEND_FNS = {"wen2019": wen2019_fbank, "librosa": librosa_logmel}


def frontend_params(frontend: str = "wen2019") -> dict:
    """A JSON-able description of a front end, recorded in manifests and exported models."""
    _check_frontend(frontend)
    params = {
        "name": frontend,
        "sample_rate": SAMPLE_RATE,
        "n_mels": N_MELS,
        "window_ms": _WIN * 1000 // SAMPLE_RATE,
        "hop_ms": _HOP * 1000 // SAMPLE_RATE,
        "fmin": _FMIN,
        "fmax": _FMAX,
        "normalisation": "per-utterance, per-bin mean/std",
        "vad": {
            "name": "webrtcvad",
            "aggressiveness": _VAD_AGGRESSIVENESS,
            "frame_ms": _VAD_FRAME_MS,
            "padding_ms": _VAD_PADDING_MS,
            "ratio": _VAD_RATIO,
            "call_pattern": "wen2019 ring buffer",
        },
    }
    if frontend == "wen2019":
        params |= {
            "n_fft": _NFFT,
            "window": "hamming",
            "preemphasis": _PREEMPH,
            "mel_filters": "sphinx triangular, edges rounded to FFT bins, height 2/width",
            "log_floor": _LOG_FLOOR,
        }
    else:
        params |= {"n_fft": 512, "window": "hamming", "center": True, "log_floor": 1e-10}
    return params


def _check_frontend(frontend: str) -> None:
    if frontend not in FRONTENDS:
        raise ValueError(f"unknown frontend {frontend!r}; choose one of {FRONTENDS}")


# ----------------------------------------------------------------------------------- end to end


def speech_only(
    samples_int16: np.ndarray, source: str | os.PathLike = "<array>", min_seconds: float = 0.5
) -> np.ndarray:
    """VAD, then the checks every consumer wants: int16 `[M]` speech, M >= min_seconds * 16 kHz.

    Raises:
      errors.BadInputError: empty input, no speech after VAD, or too short after VAD.
    """
    samples = np.asarray(samples_int16)
    if samples.size == 0:
        raise errors.BadInputError(source, "empty audio")
    speech = vad(samples.astype(np.int16, copy=False))
    if speech.size == 0:
        raise errors.BadInputError(source, "no speech after VAD")
    seconds = speech.size / SAMPLE_RATE
    if seconds < min_seconds:
        raise errors.BadInputError(
            source, f"too short after VAD: {seconds:.2f} s < {min_seconds:.2f} s"
        )
    return speech


def compute_features(
    speech_int16: np.ndarray, frontend: str = "wen2019", source: str | os.PathLike = "<array>"
) -> np.ndarray:
    """Features of already voice-only samples: float32 `[T, 64]`; BadInputError if non-finite."""
    _check_frontend(frontend)
    feats = _FRONTEND_FNS[frontend](speech_int16)
    if not np.all(np.isfinite(feats)):
        raise errors.BadInputError(source, "non-finite features")
    return feats


def features_from_samples(
    samples_int16: np.ndarray,
    frontend: str = "wen2019",
    source: str | os.PathLike = "<array>",
    min_seconds: float = 0.5,
) -> np.ndarray:
    """VAD then the front end, from 16 kHz int16 `[N]` samples: float32 `[T, 64]`.

    Raises:
      errors.BadInputError: empty, no speech after VAD, too short after VAD, non-finite.
    """
    _check_frontend(frontend)
    speech = speech_only(samples_int16, source=source, min_seconds=min_seconds)
    return compute_features(speech, frontend, source)


def voice_features(
    path: str | os.PathLike, frontend: str = "wen2019", min_seconds: float = 0.5
) -> np.ndarray:
    """`load_audio` -> `vad` -> front end: float32 `[T, 64]`, normalised per bin.

    Raises:
      errors.BadInputError: any reason `load_audio` or `features_from_samples` gives.
    """
    _check_frontend(frontend)
    return features_from_samples(
        load_audio(path), frontend=frontend, source=path, min_seconds=min_seconds
    )
