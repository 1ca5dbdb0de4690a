"""What a picture looks like, beside whether it matches: pure numpy, on faces and embeddings.

- Checkerboard (`checkerboard`): a stride-2 transposed convolution whose kernel taps do not sum
  alike over the four output phases leaves a pattern of period 2 pixels on every face it draws
  (Odena et al. 2016). Per face and colour channel, the channel's mean is taken off, the face is
  multiplied by a 2-D Hann window `w[i] w[j]`, `w[i] = (1 - cos(2 pi i / H)) / 2` (so that the
  discontinuity between opposite borders, which a DFT sees as an edge, and a border row or
  column of odd pixels, as a zero-padded conv draws, count for next to nothing: the window is 0
  on the first row and column, 0.0024 on the last), and `X_c(u, v)` is the 2-D DFT of the result
  (H, W even; `|X_c(u, v)|^2` its energy at `(u / H, v / W)` cycles per pixel). Then

      period-2 energy  P_c = energy at the bins within one bin (either axis, cyclically) of the
                             three period-2 frequencies (H/2, 0), (0, W/2), (H/2, W/2): 27 bins,
                             where the window spreads a period-2 pattern's energy
      high-frequency   Q_c = energy at every bin with a period of 4 pixels or less along an axis:
                             max(|f_u|, |f_v|) >= 1/4, f_u the signed frequency min(u, H - u) / H

  The three frequencies are the vertical, horizontal and diagonal alternation of the four 2x2
  phases (`X(H/2, W/2) = sum x[i, j] (-1)^(i + j)`, and so on). A set of faces scores
  `share_c = sum P_c / sum Q_c` over its faces (energies pooled over faces, so a face with
  little texture weighs little), and the figure is the mean of `share_c` over the channels.
  `eval.json` reports the generated faces' figure over the real test faces' (`ratio`; 1.0: as
  much period-2 texture as real photos have among their fine detail). A pure checkerboard or
  period-2 stripes score 1, white noise 27 / 3072 (its energy is spread evenly over the 3072
  high-frequency bins of a 64x64 face), smooth faces ~0.
- Fréchet distance (`frechet_distance`): between Gaussians fitted to two sets of embeddings
  (Heusel et al. 2017's FID, here in the scorer's unit face embedding rather than Inception's):
  `|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`. It is biased upward by small sets, so
  `frechet_figures` sets the generated faces' distance beside the same distance between two
  disjoint halves of the real test faces (each identity's faces dealt alternately to the two
  halves; the generated faces and the first half are compared with the same second half, the
  first half cut to as many faces as were generated): the floor a generator that drew real
  photos of the right people would reach.
"""

from __future__ import annotations

import numpy as np


def frequency_masks(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Bool `[H, W]` masks over `np.fft.fft2`'s bins: `(period-2 bins, high-frequency bins)`
    (module docstring).

    Raises:
      ValueError: an odd side (no period-2 frequency).
    """
    if height % 2 or width % 2:
        raise ValueError(f"the checkerboard measure needs even sides, got {height}x{width}")
    fu = np.minimum(np.arange(height), height - np.arange(height)) / height
    fv = np.minimum(np.arange(width), width - np.arange(width)) / width
    high = np.maximum(fu[:, None], fv[None, :]) >= 0.25

    def near(n: int, centre: int) -> np.ndarray:
        d = np.abs(np.arange(n) - centre) % n
        return np.minimum(d, n - d) <= 1

    u_half, u_zero = near(height, height // 2)[:, None], near(height, 0)[:, None]
    v_half, v_zero = near(width, width // 2)[None, :], near(width, 0)[None, :]
    period2 = (u_half & v_zero) | (u_zero & v_half) | (u_half & v_half)
    return period2, high


def _hann(n: int) -> np.ndarray:
    """The periodic Hann window `(1 - cos(2 pi i / n)) / 2`: its DFT has three taps, so it moves
    a frequency's energy to that bin and its two neighbours only."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


class SpectrumSums:
    """Period-2 and high-frequency energies per channel, summed over faces added in chunks
    (`add`), so an evaluation streams its faces through without keeping them."""

    def __init__(self):
        self.period2 = None  # float64 [C]
        self.high = None  # float64 [C]
        self.faces = 0

    def add(self, faces: np.ndarray) -> None:
        """Faces float `[N, H, W, C]` (any range: the measure is a ratio; [-1, 1] as drawn)."""
        faces = np.asarray(faces, np.float64)
        if faces.ndim != 4:
            raise ValueError(f"faces are [N, H, W, C], got shape {faces.shape}")
        if not faces.shape[0]:
            return
        p_mask, h_mask = frequency_masks(faces.shape[1], faces.shape[2])
        window = _hann(faces.shape[1])[:, None] * _hann(faces.shape[2])[None, :]
        faces = (faces - faces.mean(axis=(1, 2), keepdims=True)) * window[None, :, :, None]
        power = np.abs(np.fft.fft2(faces, axes=(1, 2))) ** 2  # [N, H, W, C]
        p, h = power[:, p_mask].sum(axis=(0, 1)), power[:, h_mask].sum(axis=(0, 1))
        self.period2 = p if self.period2 is None else self.period2 + p
        self.high = h if self.high is None else self.high + h
        self.faces += faces.shape[0]

    def shares(self) -> np.ndarray:
        """`[C]` period-2 energy over high-frequency energy per channel (NaN: nothing added,
        or faces without any high-frequency energy)."""
        if self.period2 is None:
            return np.full([3], np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.high > 0, self.period2 / self.high, np.nan)


def period2_share(faces: np.ndarray) -> float:
    """The checkerboard figure of a set of faces `[N, H, W, C]`: the mean over channels of
    their pooled period-2 share of high-frequency energy (module docstring)."""
    sums = SpectrumSums()
    sums.add(faces)
    return float(np.mean(sums.shares()))


def checkerboard(generated: SpectrumSums, real: SpectrumSums) -> dict:
    """`eval.json`'s `picture.checkerboard`: both sets' figures and their ratio.

    Returns:
      `{"ratio": generated / real (1.0: like real photos), "generated", "real" (the figures),
      "ratio_per_channel" [C], "generated_faces", "real_faces"}`; NaN where a set is empty.
    """
    g, r = generated.shares(), real.shares()
    g_mean, r_mean = float(np.mean(g)), float(np.mean(r))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_channel = [float(x) for x in g / r]
        ratio = g_mean / r_mean if r_mean > 0 else float("nan")
    return {
        "ratio": float(ratio),
        "generated": g_mean,
        "real": r_mean,
        "ratio_per_channel": per_channel,
        "generated_faces": generated.faces,
        "real_faces": real.faces,
    }


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to embeddings `a [N, D]` and `b [M, D]`
    (means and covariances with `ddof=1`); 0 for identical sets; NaN with fewer than 2 rows.

    `tr((S_a S_b)^(1/2))` is the sum of the square roots of the eigenvalues of the symmetric
    `S_a^(1/2) S_b S_a^(1/2)`, which have the same eigenvalues (no general matrix square root).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"two sets of embeddings [N, D], [M, D]: got {a.shape}, {b.shape}")
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu = a.mean(0) - b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0.0, None)).sum()
    return float(max(0.0, mu @ mu + np.trace(s_a) + np.trace(s_b) - 2.0 * cross))


def split_real(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two disjoint halves of real faces: each identity's faces, in order, dealt
    alternately to the first and the second half."""
    labels = np.asarray(labels)
    first, second = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        first.extend(idx[0::2])
        second.extend(idx[1::2])
    return np.sort(np.asarray(first, int)), np.sort(np.asarray(second, int))


def _round_robin(labels: np.ndarray, idx: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` of `idx`, taking each identity's next face in turn (as many per identity
    as can be)."""
    by_id = [list(idx[labels[idx] == label]) for label in np.unique(labels[idx])]
    out: list[int] = []
    while len(out) < count and any(by_id):
        for faces in by_id:
            if faces and len(out) < count:
                out.append(faces.pop(0))
    return np.sort(np.asarray(out, int))


def frechet_figures(gen_emb: np.ndarray, real_emb: np.ndarray, real_labels: np.ndarray) -> dict:
    """`eval.json`'s `picture.frechet`: generated faces and real faces against the same half of
    the real test faces (module docstring).

    Args:
      gen_emb: `[N, D]` the scorer's embeddings of generated faces.
      real_emb: `[F, D]` of real test faces; real_labels `[F]` their identities.

    Returns:
      `{"generated": FD(generated, second half), "real_split": FD(first half cut to N faces,
      second half), "generated_faces", "split_faces", "reference_faces"}`.
    """
    real_emb, real_labels = np.asarray(real_emb), np.asarray(real_labels)
    first, second = split_real(real_labels)
    first = _round_robin(real_labels, first, len(gen_emb))
    return {
        "generated": frechet_distance(gen_emb, real_emb[second]),
        "real_split": frechet_distance(real_emb[first], real_emb[second]),
        "generated_faces": int(len(gen_emb)),
        "split_faces": int(len(first)),
        "reference_faces": int(len(second)),
    }
