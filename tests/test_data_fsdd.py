"""FSDD WAVs -> stacked log-mel frames, checked against a plain loop reference."""

from __future__ import annotations

import argparse
import wave

import h5py
import numpy as np

from dbnet.data.h5 import import_permutation
import pytest

from dbnet.data import H5Dataset, import_fsdd, log_mel
from dbnet.data.commands import register
from dbnet.data.fsdd import mel_filterbank, n_frames, parse_name, read_wav, stack_index
from dbnet.errors import DataError


def reference_log_mel(samples):
    """The textbook pipeline, one frame and one filter at a time, in float64."""
    x = samples.astype(np.float64) / 32768.0
    y = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    hamming = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(200) / 199)
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = [hz(mel(4000) * i / 41) for i in range(42)]
    bins = np.arange(129) * 8000 / 256
    out = []
    for t in range(1 + (len(y) - 200) // 80):
        power = np.abs(np.fft.fft(y[80 * t : 80 * t + 200] * hamming, 256)[:129]) ** 2 / 256
        row = []
        for m in range(1, 41):
            lo, mid, hi = edges[m - 1], edges[m], edges[m + 1]
            w = [max(0.0, min((f - lo) / (mid - lo), (hi - f) / (hi - mid))) for f in bins]
            row.append(np.log(np.dot(w, power) + 1e-10))
        out.append(row)
    return np.array(out)


def test_log_mel_matches_reference(fsdd_subset):
    for name in ["0_george_0.wav", "7_lucas_1.wav", "9_nicolas_6.wav"]:
        samples = read_wav(fsdd_subset / "recordings" / name)
        got = log_mel(samples)
        assert got.shape == (n_frames(len(samples)), 40) and got.dtype == np.float32
        np.testing.assert_allclose(got, reference_log_mel(samples), atol=1e-3)


def test_n_frames_counts_10ms_hops():
    assert [n_frames(n) for n in (199, 200, 279, 280, 8000)] == [0, 1, 1, 2, 98]


def test_mel_filterbank():
    fb = mel_filterbank()
    assert fb.shape == (40, 129) and fb.dtype == np.float32 and fb.min() >= 0
    assert np.all(fb.sum(axis=1) > 0.5) and np.all(np.diff(fb.argmax(axis=1)) >= 0)
    assert fb[:, 0].max() == 0 and fb[:, 128].max() == 0  # 0 Hz and 4000 Hz are filter edges


def test_stack_index_repeats_edge_frames():
    idx = stack_index([3, 1], context=2)
    assert idx.tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 2], [0, 1, 2, 2, 2], [3, 3, 3, 3, 3]]


@pytest.fixture(scope="module")
def imported(fsdd_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdd-h5")
    return import_fsdd(fsdd_subset, out / "fsdd.h5"), import_fsdd(fsdd_subset, out / "fsdd-seg5.h5", segments=5)


def _files(fsdd_subset, split):
    paths = sorted((fsdd_subset / "recordings").glob("*.wav"), key=parse_name)
    return [p for p in paths if (parse_name(p)[2] < 5) == (split == "test")]


def test_import_subset_shapes_and_frame_counts(imported, fsdd_subset):
    plain, _ = imported
    with h5py.File(plain) as f:
        assert f.attrs["name"] == "fsdd" and f.attrs["n_classes"] == 10 and list(f.attrs["input_shape"]) == [440]
        for split in ("train", "test"):
            files = _files(fsdd_subset, split)
            assert len(files) == 20
            expected = sum(n_frames(len(read_wav(p))) for p in files)
            assert f[split]["x"].shape == (expected, 440) and f[split]["x"].dtype == np.float16
            assert f[split]["y"].shape == (expected,)
            assert sorted(set(f[split]["y"][...].tolist())) == list(range(10))


def test_import_subset_normalization(imported):
    with h5py.File(imported[0]) as f:
        x = f["train/x"][...].astype(np.float64)
        assert np.abs(x.mean(axis=0)).max() < 1e-2 and np.abs(x.std(axis=0) - 1).max() < 1e-2
        assert f["meta/feature_mean"].shape == (440,) and f["meta/feature_std"].shape == (440,)
        assert np.isfinite(f["test/x"][...]).all()


def test_import_subset_first_test_rows_stack_frames(imported, fsdd_subset):
    first = _files(fsdd_subset, "test")[0]
    feats = log_mel(read_wav(first))
    with h5py.File(imported[0]) as f:
        mean, std = f["meta/feature_mean"][...], f["meta/feature_std"][...]
        where = np.argsort(import_permutation("test", len(f["test/y"])))[:2]  # stored rows of source rows 0, 1
        x = f["test/x"][...][where].astype(np.float32) * std + mean
        y = f["test/y"][...][where]
    assert y.tolist() == [parse_name(first)[0]] * 2
    np.testing.assert_allclose(x[0].reshape(11, 40), feats[[0] * 6 + [1, 2, 3, 4, 5]], atol=0.05)
    np.testing.assert_allclose(x[1].reshape(11, 40), feats[[0] * 5 + [1, 2, 3, 4, 5, 6]], atol=0.05)


def test_import_subset_segment_labels(imported):
    plain, seg5 = imported
    with H5Dataset(seg5) as ds:
        assert ds.n_classes == 50 and ds.name == "fsdd-seg5"
    with h5py.File(plain) as f, h5py.File(seg5) as g:
        for split in ("train", "test"):
            y1, y5 = f[split]["y"][...], g[split]["y"][...]
            assert y5.max() <= 49 and sorted(set((y5 % 5).tolist())) == [0, 1, 2, 3, 4]
            np.testing.assert_array_equal(y5 // 5, y1)
            np.testing.assert_array_equal(f[split]["x"][...], g[split]["x"][...])
        ys = g["test/y"][...][np.argsort(import_permutation("test", len(g["test/y"])))]  # back in file order
    first_utterance = ys[: np.argmax(ys // 5 != ys[0] // 5)]  # the first test file's frames, in order
    assert np.all(np.diff(first_utterance) >= 0) and first_utterance[0] % 5 == 0 and first_utterance[-1] % 5 == 4


def test_import_command(fsdd_subset, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="dbnet")
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli.h5"
    args = parser.parse_args(
        ["data", "import", "fsdd", "--src", str(fsdd_subset), "--out", str(out), "--segments", "3"]
    )
    assert args.func(args) == 0
    assert "imported fsdd" in capsys.readouterr().out
    with H5Dataset(out, "test") as ds:
        assert ds.n_classes == 30 and ds.n_inputs == 440
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "import", "fsdd", "--segments", "0"])


# -- bad WAVs -----------------------------------------------------------------------------


def _wav(path, samples=None, channels=1, width=2, rate=8000):
    samples = np.zeros(400, np.int16) if samples is None else samples
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.repeat(samples, channels).astype(f"<i{width}").tobytes())
    return path


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(channels=2), r"2 channels, expected mono"),
        (dict(width=1), r"8-bit samples, expected 16-bit PCM"),
        (dict(rate=16000), r"sample rate 16000 Hz, expected 8000 Hz"),
    ],
)
def test_bad_wav_format(tmp_path, kwargs, message):
    path = _wav(tmp_path / "3_x_7.wav", **kwargs)
    with pytest.raises(DataError, match=rf"3_x_7.wav: {message}"):
        read_wav(path)


def test_not_a_wav_and_truncated(tmp_path):
    (tmp_path / "1_a_1.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(DataError, match=r"1_a_1.wav: not a readable PCM WAV file"):
        read_wav(tmp_path / "1_a_1.wav")
    good = _wav(tmp_path / "1_a_2.wav").read_bytes()
    (tmp_path / "1_a_2.wav").write_bytes(good[:-100])
    with pytest.raises(DataError, match=r"1_a_2.wav: truncated WAV: header says 400 samples, found 350"):
        read_wav(tmp_path / "1_a_2.wav")


def test_bad_name_and_too_short_in_import(tmp_path):
    rec = tmp_path / "recordings"
    rec.mkdir()
    for take in (0, 5):
        _wav(rec / f"2_ann_{take}.wav")
    _wav(rec / "two_ann_6.wav")
    with pytest.raises(DataError, match=r"two_ann_6.wav: file name is not \{digit\}_\{speaker\}_\{take\}.wav"):
        import_fsdd(tmp_path, tmp_path / "o.h5")
    (rec / "two_ann_6.wav").unlink()
    _wav(rec / "2_ann_7.wav", samples=np.zeros(150, np.int16))
    with pytest.raises(DataError, match=r"2_ann_7.wav: 150 samples, too short for one 200-sample \(25 ms\) frame"):
        import_fsdd(tmp_path, tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


def test_import_needs_both_splits_and_files(tmp_path):
    with pytest.raises(DataError, match=r"no recordings/\*.wav files"):
        import_fsdd(tmp_path, tmp_path / "o.h5")
    _wav(tmp_path / "4_bo_9.wav")
    with pytest.raises(DataError, match=r"need recordings with takes 0-4 \(test\) and >= 5 \(train\)"):
        import_fsdd(tmp_path, tmp_path / "o.h5")
