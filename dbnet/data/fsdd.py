"""Free Spoken Digit Dataset WAVs -> DistBelief-style speech frames.

Each recording ``recordings/{digit}_{speaker}_{take}.wav`` (mono 16-bit PCM,
8 kHz) becomes one example per 10 ms frame: pre-emphasis 0.97, 25 ms Hamming
windows every 10 ms, 256-point FFT power spectrum, 40 triangular mel filters
over 0-4000 Hz, ``log(energy + 1e-10)``; each frame is stacked with its 5
neighbours on either side (edges repeat the first/last frame): 11 x 40 = 440
inputs, frame-major.  Takes 0-4 are the test set, 5-49 the training set.
Each input is normalised to mean 0 / std 1 with training-set statistics and
stored as float16.
"""

from __future__ import annotations

import os
import re
import wave
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dbnet.data.h5 import write_dataset
from dbnet.errors import DataError

SAMPLE_RATE = 8000
FRAME_LEN = 200  # samples: 25 ms
HOP = 80  # samples: 10 ms
N_FFT = 256
N_MELS = 40
CONTEXT = 5  # frames stacked on each side
N_INPUTS = (2 * CONTEXT + 1) * N_MELS  # 440
PREEMPHASIS = 0.97
LOG_FLOOR = 1e-10
N_TEST_TAKES = 5  # takes 0..4 are the test set

_NAME = re.compile(r"(\d)_([^_]+)_(\d+)\.wav")


def parse_name(path: str | os.PathLike) -> tuple[int, str, int]:
    """``(digit, speaker, take)`` from a file name such as ``7_jackson_32.wav``."""
    m = _NAME.fullmatch(Path(path).name)
    if m is None:
        raise DataError(f"{path}: file name is not {{digit}}_{{speaker}}_{{take}}.wav")
    return int(m[1]), m[2], int(m[3])


def read_wav(path: str | os.PathLike) -> np.ndarray:
    """Samples of a mono 16-bit PCM 8 kHz WAV file: ``(n,) int16``."""
    try:
        with wave.open(os.fspath(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            data = w.readframes(n)
    except (wave.Error, EOFError) as e:
        raise DataError(f"{path}: not a readable PCM WAV file ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if channels != 1:
        raise DataError(f"{path}: {channels} channels, expected mono")
    if width != 2:
        raise DataError(f"{path}: {8 * width}-bit samples, expected 16-bit PCM")
    if rate != SAMPLE_RATE:
        raise DataError(f"{path}: sample rate {rate} Hz, expected {SAMPLE_RATE} Hz")
    if len(data) != 2 * n:
        raise DataError(f"{path}: truncated WAV: header says {n} samples, found {len(data) // 2}")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def n_frames(n_samples: int) -> int:
    """Number of 25 ms frames every 10 ms in ``n_samples`` samples (0 if shorter than one frame)."""
    return 0 if n_samples < FRAME_LEN else 1 + (n_samples - FRAME_LEN) // HOP


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular mel (HTK) filters over 0..sample_rate/2: ``(n_mels, n_fft // 2 + 1) float32``."""
    mel_max = 2595.0 * np.log10(1.0 + (sample_rate / 2) / 700.0)
    edges = 700.0 * (10.0 ** (np.linspace(0.0, mel_max, n_mels + 2) / 2595.0) - 1.0)
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


_WINDOW = np.hamming(FRAME_LEN).astype(np.float32)
_FBANK_T = np.ascontiguousarray(mel_filterbank().T)  # (129, 40)


def log_mel(samples: np.ndarray) -> np.ndarray:
    """Log mel filterbank energies of a recording.

    ``samples: (n,) int16`` with ``n >= FRAME_LEN``; returns
    ``(n_frames(n), 40) float32``.
    """
    x = samples.astype(np.float32) / 32768.0
    x[1:] -= PREEMPHASIS * (samples[:-1].astype(np.float32) / 32768.0)
    frames = sliding_window_view(x, FRAME_LEN)[::HOP]  # (n_frames, 200) view
    spectrum = np.fft.rfft(frames * _WINDOW, n=N_FFT)  # (n_frames, 129)
    power = (spectrum.real**2 + spectrum.imag**2) / N_FFT
    return np.log(power @ _FBANK_T + LOG_FLOOR).astype(np.float32)


def stack_index(lengths: np.ndarray, context: int = CONTEXT) -> np.ndarray:
    """Rows to stack for each frame of utterances laid end to end.

    ``lengths: (U,)`` frames per utterance; returns ``(sum(lengths), 2*context+1)
    int64`` indices into the concatenated frames: frame ``t`` and its
    neighbours ``t-context..t+context``, clamped to its own utterance.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    first = np.repeat(ends - lengths, lengths)[:, None]
    last = np.repeat(ends - 1, lengths)[:, None]
    t = np.arange(ends[-1] if len(ends) else 0)[:, None]
    return np.clip(t + np.arange(-context, context + 1), first, last)


def frame_labels(digit: int, n: int, segments: int | None) -> np.ndarray:
    """Labels of an utterance's ``n`` frames: ``digit``, or ``digit*K + t*K//n`` with ``K=segments``."""
    if segments is None:
        return np.full(n, digit, dtype=np.int64)
    return digit * segments + np.arange(n) * segments // n


def _recordings(src_dir: Path) -> list[Path]:
    folder = src_dir / "recordings" if (src_dir / "recordings").is_dir() else src_dir
    paths = list(folder.glob("*.wav"))
    if not paths:
        raise DataError(f"{src_dir}: no recordings/*.wav files (is this the Free Spoken Digit Dataset?)")
    return sorted(paths, key=parse_name)  # (digit, speaker, take): a fixed order wherever the files are


def _stack_normalized(frames: np.ndarray, index: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(N, 440) float16``: stacked frames, normalised, built in chunks to bound memory."""
    out = np.empty((len(index), N_INPUTS), np.float16)
    for a in range(0, len(index), 8192):
        block = frames[index[a : a + 8192]].reshape(-1, N_INPUTS)
        block -= mean
        block /= std
        out[a : a + len(block)] = block
    return out


def _stats(frames: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-input mean and std of the stacked frames: two ``(440,) float32``."""
    total, total_sq = np.zeros(N_INPUTS), np.zeros(N_INPUTS)
    for a in range(0, len(index), 8192):
        block = frames[index[a : a + 8192]].reshape(-1, N_INPUTS).astype(np.float64)
        total += block.sum(axis=0)
        total_sq += np.square(block).sum(axis=0)
    mean = total / len(index)
    std = np.sqrt(np.maximum(total_sq / len(index) - mean**2, 0.0))
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def import_fsdd(src_dir: str | os.PathLike, out_h5: str | os.PathLike, *, segments: int | None = None) -> Path:
    """Import the FSDD recordings under ``src_dir`` into ``out_h5``.

    ``x: (N, 440) float16`` normalised frames; ``y: (N,) uint8`` the digit
    (10 classes) or, with ``segments=K``, ``digit*K + segment`` (10*K classes).
    Bad WAVs raise :class:`DataError` naming the file.  Returns ``out_h5``.
    """
    if segments is not None and (not isinstance(segments, int) or segments < 1):
        raise DataError(f"fsdd: segments must be a positive integer, got {segments!r}")
    src_dir = Path(src_dir)
    parts: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for path in _recordings(src_dir):
        digit, _, take = parse_name(path)
        samples = read_wav(path)
        if len(samples) < FRAME_LEN:
            raise DataError(f"{path}: {len(samples)} samples, too short for one {FRAME_LEN}-sample (25 ms) frame")
        feats = log_mel(samples)
        frames, labels = parts["test" if take < N_TEST_TAKES else "train"]
        frames.append(feats)
        labels.append(frame_labels(digit, len(feats), segments))
    if not parts["train"][0] or not parts["test"][0]:
        raise DataError(
            f"{src_dir}: need recordings with takes 0-{N_TEST_TAKES - 1} (test) and >= {N_TEST_TAKES} (train)"
        )

    stacked = {}
    mean = std = None
    for split in ("train", "test"):  # train first: its statistics normalise both
        frames, labels = parts[split]
        index = stack_index([len(f) for f in frames])
        frames = np.concatenate(frames)
        if mean is None:
            mean, std = _stats(frames, index)
        stacked[split] = (_stack_normalized(frames, index, mean, std), np.concatenate(labels))

    k = segments or 1
    name = "fsdd" if segments is None else f"fsdd-seg{segments}"
    return write_dataset(
        out_h5,
        name=name,
        train=stacked["train"],
        test=stacked["test"],
        n_classes=10 * k,
        input_shape=[N_INPUTS],
        x_scale=1.0,
        x_offset=0.0,
        source=(
            f"Free Spoken Digit Dataset from {src_dir.resolve()}: {N_MELS} log-mel x {2 * CONTEXT + 1} frames, "
            f"25 ms / 10 ms, labels {'digit' if segments is None else f'digit*{k}+segment of {k}'}, takes 0-4 test"
        ),
        meta={"feature_mean": mean, "feature_std": std},
    )
