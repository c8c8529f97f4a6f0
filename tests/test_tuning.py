"""dbnet._tuning: the OPENBLAS_CORETYPE decision (a pure function), finding OpenBLAS's version
without loading it, and what ``import dbnet`` does in a fresh process."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from dbnet import _tuning
from dbnet._tuning import MIN_OPENBLAS, decide, find_openblas, parse_version

AVX512 = {"fpu", "sse2", "avx2", "fma", "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_bf16"}
AVX2 = {"fpu", "sse2", "avx2", "fma"}
GOOD, OLD = "0.3.31.188.0", "0.3.27.44.1"


@pytest.mark.parametrize("text, expect", [
    ("0.3.31.188.0", (0, 3, 31)), ("0.3.28", (0, 3, 28)), ("0.3.27.dev", (0, 3, 27)), (" 1.0.0", (1, 0, 0)),
    ("0.3", None), ("dev", None), ("", None), (None, None),
])
def test_parse_version(text, expect):
    assert parse_version(text) == expect


def test_threshold_is_0_3_28():
    assert MIN_OPENBLAS == (0, 3, 28)


@pytest.mark.parametrize("env", [{}, {"OPENBLAS_CORETYPE": "Haswell"}, {"OPENBLAS_CORETYPE": "Zen"}])
def test_overrides_on_avx512_with_a_known_good_openblas(env):
    d = decide(AVX512, GOOD, env)
    assert d.override
    assert "0.3.31.188.0 >= 0.3.28" in d.reason
    if env:  # a value the machine set on purpose is replaced only with a known-good OpenBLAS, and it says so
        assert f"replaced OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} set by the environment" in d.reason
        assert "DBNET_TUNE=0" in d.reason
    else:
        assert "it was unset" in d.reason


@pytest.mark.parametrize("version", ["0.3.28", "0.3.28.0.2", "0.4.0", "1.0.0"])
def test_threshold_and_later_versions_are_known_good(version):
    assert decide(AVX512, version, {"OPENBLAS_CORETYPE": "Haswell"}).override


@pytest.mark.parametrize("version", [OLD, "0.3.21", "0.3.20", "0.2.20"])
@pytest.mark.parametrize("env", [{}, {"OPENBLAS_CORETYPE": "Haswell"}])
def test_never_overrides_an_older_openblas(version, env):
    d = decide(AVX512, version, env)
    assert not d.override
    assert f"OpenBLAS {version} is older than 0.3.28" in d.reason
    expect = "keeping OPENBLAS_CORETYPE=Haswell from the environment" if env else "OpenBLAS's own detection"
    assert expect in d.reason


@pytest.mark.parametrize("version", [None, "", "unknown"])
def test_never_overrides_an_unknown_openblas(version):
    d = decide(AVX512, version, {"OPENBLAS_CORETYPE": "Haswell"})
    assert not d.override
    assert "version unknown" in d.reason and "keeping OPENBLAS_CORETYPE=Haswell" in d.reason


def test_user_opt_out_wins():
    d = decide(AVX512, GOOD, {"DBNET_TUNE": "0", "OPENBLAS_CORETYPE": "Haswell"})
    assert not d.override and d.reason.startswith("DBNET_TUNE=0") and "keeping OPENBLAS_CORETYPE=Haswell" in d.reason
    assert decide(AVX512, GOOD, {"DBNET_TUNE": "1"}).override


@pytest.mark.parametrize("missing", ["avx512f", "avx512bw", "avx512vl"])
def test_needs_every_avx512_subset(missing):
    d = decide(AVX512 - {missing}, GOOD, {"OPENBLAS_CORETYPE": "Haswell"})
    assert not d.override and missing in d.reason and "lacks AVX-512" in d.reason
    assert not decide(AVX2, GOOD, {}).override
    assert not decide(set(), GOOD, {}).override  # no /proc/cpuinfo (macOS, Windows)


@pytest.mark.parametrize("value", ["SkylakeX", "skylakex", "COOPERLAKE", "SapphireRapids"])
def test_leaves_an_avx512_coretype_alone(value):
    d = decide(AVX512, GOOD, {"OPENBLAS_CORETYPE": value})
    assert not d.override and "already selects AVX-512 kernels" in d.reason


def test_too_late_once_numpy_is_loaded():
    d = decide(AVX512, GOOD, {"OPENBLAS_CORETYPE": "Haswell"}, numpy_loaded=True)
    assert not d.override and "numpy was imported before dbnet" in d.reason


# --- find_openblas: the version numpy will load, read without loading it ---------------------------

def _fake_numpy(monkeypatch, root):
    pkg = root / "numpy"
    pkg.mkdir()
    spec = importlib.machinery.ModuleSpec("numpy", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "numpy" else None)
    return pkg


def test_find_openblas_reads_the_bundled_library(tmp_path, monkeypatch):
    pkg = _fake_numpy(monkeypatch, tmp_path)
    (tmp_path / "numpy.libs").mkdir()
    (tmp_path / "numpy.libs" / "libgfortran-1234.so.5").write_bytes(b"\0OpenBLAS 9.9.9 not this one\0")
    lib = tmp_path / "numpy.libs" / "libscipy_openblas64_-abcd.so"
    lib.write_bytes(b"\x7fELF" + b"\0" * 5000 + b"OpenBLAS : an error message\0OpenBLAS 0.3.27.dev  DYNAMIC_ARCH\0")
    (pkg / "__config__.py").write_text('"blas": {"name": "scipy-openblas", "version": "0.3.99"},')
    assert find_openblas() == (("0.3.27", str(lib)))


def test_find_openblas_falls_back_to_numpy_build_config(tmp_path, monkeypatch):
    pkg = _fake_numpy(monkeypatch, tmp_path)
    (pkg / "__config__.py").write_text(textwrap.dedent('''
        CONFIG = {"Build Dependencies": {
            "blas": {"name": "openblas", "found": True, "version": "0.3.26", "detection method": "pkgconfig"},
            "lapack": {"name": "openblas", "version": "0.3.26"}}}
    '''))
    found = find_openblas()
    assert found.version == "0.3.26" and "build-time" in found.source


def test_find_openblas_does_not_take_another_blas_for_openblas(tmp_path, monkeypatch):
    pkg = _fake_numpy(monkeypatch, tmp_path)
    (pkg / "__config__.py").write_text('"blas": {"name": "mkl-sdl", "version": "2024.1"},')
    assert find_openblas().version is None


def test_find_openblas_agrees_with_the_loaded_library():
    """On this installation, the version read from the file is the one the loaded OpenBLAS reports."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numpy  # noqa: F401 - loads OpenBLAS

    loaded = [p for p in threadpoolctl.threadpool_info() if p["internal_api"] == "openblas"]
    if not loaded:
        pytest.skip("numpy does not use OpenBLAS here")
    found = find_openblas()
    assert found.version == loaded[0]["version"]
    assert os.path.realpath(found.source) == os.path.realpath(loaded[0]["filepath"])


# --- import dbnet in a fresh process ------------------------------------------------------------------

_PROBE = """
import json, os, sys
{first}
from dbnet import _tuning
import numpy as np
from threadpoolctl import threadpool_info
arch = [p.get("architecture") for p in threadpool_info() if p["internal_api"] == "openblas"]
print(json.dumps({{"coretype": os.environ.get("OPENBLAS_CORETYPE"), "override": _tuning.decision.override,
                  "reason": _tuning.decision.reason, "arch": arch[0] if arch else None}}))
"""


def _run(env_update, first=""):
    pytest.importorskip("threadpoolctl")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "DBNET_TUNE")}
    env.update(env_update)
    out = subprocess.run([sys.executable, "-c", _PROBE.format(first=first)], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _expect_override() -> bool:
    return decide(_tuning.cpu_flags(), find_openblas().version, {"OPENBLAS_CORETYPE": "Haswell"}).override


def test_import_dbnet_replaces_a_machine_setting_only_when_known_good():
    r = _run({"OPENBLAS_CORETYPE": "Haswell"})
    if _expect_override():
        assert r["override"] and r["coretype"] == "SkylakeX" and r["arch"] == "SkylakeX", r
        assert "replaced OPENBLAS_CORETYPE=Haswell set by the environment" in r["reason"]
    else:
        assert not r["override"] and r["coretype"] == "Haswell" and r["arch"] == "Haswell", r


def test_import_dbnet_respects_dbnet_tune_0():
    r = _run({"OPENBLAS_CORETYPE": "Haswell", "DBNET_TUNE": "0"})
    assert not r["override"] and r["coretype"] == "Haswell" and r["arch"] == "Haswell", r


def test_import_dbnet_after_numpy_changes_nothing():
    r = _run({"OPENBLAS_CORETYPE": "Haswell"}, first="import numpy")
    assert not r["override"] and r["coretype"] == "Haswell" and "numpy was imported before" in r["reason"], r


_SGEMM_CHECK = """
import json, numpy as np
from threadpoolctl import threadpool_info
rng = np.random.default_rng(3)
worst = 0.0
for m, k, n in [(33, 17, 65), (256, 300, 129), (64, 700, 96), (5, 600, 7)]:
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    for x, y in [(a, b), (b.T, a.T)]:  # and transposed operands (sgemm's trans flags)
        got = (x @ y).astype(np.float64)
        ref = np.einsum("ik,kj->ij", x.astype(np.float64), y.astype(np.float64), optimize=False)
        g = k * 2.0**-24 / (1 - k * 2.0**-24)
        bound = g * np.einsum("ik,kj->ij", np.abs(x).astype(np.float64), np.abs(y).astype(np.float64), optimize=False)
        worst = max(worst, float((np.abs(got - ref) / bound).max()))
arch = [p.get("architecture") for p in threadpool_info() if p["internal_api"] == "openblas"]
print(json.dumps({"arch": arch[0] if arch else None, "worst": worst}))
"""


@pytest.mark.parametrize("coretype", ["SkylakeX", "Haswell"])
def test_forced_kernel_computes_sgemm_correctly_here(coretype):
    """The kernel dbnet forces (and the one machines force instead), on this CPU and OpenBLAS:
    float32 products within the worst-case float32 error bound of a float64 reference without BLAS."""
    pytest.importorskip("threadpoolctl")
    if coretype == "SkylakeX" and not _tuning._AVX512 <= _tuning.cpu_flags():
        pytest.skip("no AVX-512 on this CPU")
    env = {k: v for k, v in os.environ.items() if k != "DBNET_TUNE"}
    env.update(OPENBLAS_CORETYPE=coretype, DBNET_TUNE="0")
    out = subprocess.run([sys.executable, "-c", _SGEMM_CHECK], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["arch"] is not None and r["arch"].lower() != coretype.lower():
        pytest.skip(f"this OpenBLAS ran {r['arch']} for OPENBLAS_CORETYPE={coretype}")
    assert r["worst"] <= 1.0, r


def test_dbnet_info_reports_what_was_decided_and_the_running_kernel():
    from dbnet.info import blas_report

    r = blas_report()
    assert list(r) == ["openblas found", "cpu AVX-512", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                       "coretype decision", "blas"]
    assert r["coretype decision"].startswith(("override: ", "no override: "))
    assert r["coretype decision"].endswith(_tuning.decision.reason)
    assert "the environment had" in r["OPENBLAS_CORETYPE"] and "never changed" in r["OPENBLAS_L2_SIZE"]
    if "threadpoolctl" in sys.modules:
        assert "kernel " in r["blas"]
