"""Process-level performance settings, applied before numpy and numba load.

Two settings matter on CPUs like this project's 2-core AMD Zen 4/5 machines:

* **OpenBLAS kernel.**  OpenBLAS (the BLAS inside numpy's PyPI wheels) picks
  its kernels once, when it is loaded, from ``OPENBLAS_CORETYPE`` or its own
  CPU detection.  Some machines set ``OPENBLAS_CORETYPE=Haswell`` globally (the
  AVX2 kernels): a 2048^3 float32 matmul then runs at 107 GFLOP/s instead of
  430 GFLOP/s with the AVX-512 "SkylakeX" kernels.  Such a setting can be
  deliberate, because older OpenBLAS releases ran the AVX-512 kernels badly on
  AMD CPUs, so dbnet replaces it with ``SkylakeX`` only when all of these hold
  (:func:`decide`, a pure function):

  - ``DBNET_TUNE`` is not ``0`` and numpy is not loaded yet;
  - ``/proc/cpuinfo`` shows AVX-512 F, CD, BW, DQ and VL;
  - ``OPENBLAS_CORETYPE`` does not already name an AVX-512 kernel set;
  - the OpenBLAS that numpy *will* load is at least :data:`MIN_OPENBLAS`.  An
    unknown version counts as too old: nothing is changed.

  A value set by the environment is replaced only under that last condition,
  and :data:`decision` records that it was (``dbnet info`` shows it).
  ``OPENBLAS_L2_SIZE`` is left alone: it only tells OpenBLAS (>= 0.3.28) the
  L2 size a VM misreports, which is a property of the machine and sizes the
  cache blocking; it does not select kernels.

  **Why 0.3.28.**  OpenBLAS itself selects the AVX-512 Cooperlake/SkylakeX
  kernels on AVX-512 Zen 4 (CPU family 0x19) since 0.3.21 (commit 2c62096f,
  "Expand cpu mapping for future Zen cpus"); before that, SkylakeX on an AMD
  CPU was a combination upstream never chose, and AVX-512 OpenBLAS < 0.3.21
  gave wrong results on new Intel AVX-512 parts (numpy#24903,
  rocker-versioned2#836).  Unknown families such as Zen 5 (0x1A) reach the
  AVX-512 kernels through the feature-based fallback, fixed in 0.3.24 and
  0.3.25 ("fixed feature-based cputype fallback in DYNAMIC_ARCH"); 0.3.29
  adds Zen 5 to the build-time detection as well (PR 4923).  Fixes to AVX-512 kernels that compute
  wrong results kept coming up to 0.3.28 (CASUM/ZASUM 0.3.26, an accuracy bug
  in ZSCAL fixed in 0.3.28), and 0.3.28 is also the first release that reads
  ``OPENBLAS_L2_SIZE``.  So 0.3.28 is the conservative line: from there on,
  forcing SkylakeX does what OpenBLAS would choose itself on an AVX-512 Zen.
  (0.3.34 adds Zen 4/5 blocking sizes that are reported to overflow the
  *AVX2* kernels' buffers when ``OPENBLAS_CORETYPE`` forces Haswell/Zen on
  such a CPU, OpenBLAS issues 6013/6021, fixed after 0.3.34 by PR 6027, which
  keeps those sizes for the AVX-512 kernels only; so in an AVX-512 build of
  0.3.34, replacing a forced Haswell with SkylakeX avoids that crash.)

  The version is found without loading OpenBLAS (loading it would fix the
  kernel choice before the decision): :func:`find_openblas` locates the
  library bundled with numpy (``numpy.libs/`` or ``numpy/.libs/``) and reads
  the ``"OpenBLAS 0.3.x ..."`` configuration string out of the file (it lies
  in ``.rodata``, about 1 MB into numpy 2.4's 25 MB library; the memory-mapped
  search and the rest of the lookup add about 1 ms to ``import dbnet``).  Without a
  bundled library it falls back to the BLAS recorded in ``numpy/__config__.py``
  (read as text, not imported), which is the build-time version.
* **OpenMP wait policy.**  Numba's parallel kernels (OpenMP threading layer)
  and OpenBLAS's threads alternate on the same cores; OpenMP threads that
  spin after a parallel region steal the cores from the next matmul (a
  2560x2560 layer's forward took 28 ms instead of 18 ms).  dbnet sets
  ``OMP_WAIT_POLICY=passive`` unless it is set.

``DBNET_TUNE=0`` disables both.  Child processes (mpiexec ranks, benchmark
workers) inherit the settings.  ``dbnet info`` reports what was decided.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from collections.abc import Mapping
from typing import NamedTuple

_AVX512 = {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"}
_AVX512_KERNELS = {"skylakex", "cooperlake", "sapphirerapids"}

#: The oldest OpenBLAS for which dbnet forces the SkylakeX kernels (see the module docstring).
MIN_OPENBLAS = (0, 3, 28)
_MIN_TEXT = ".".join(map(str, MIN_OPENBLAS))

_VERSION_IN_BINARY = re.compile(rb"OpenBLAS (\d+\.\d+\.\d+[0-9.]*)")
_CONFIG_BLAS = re.compile(r'"blas":\s*\{(.*?)\}', re.S)


class Decision(NamedTuple):
    """What :func:`decide` concluded about ``OPENBLAS_CORETYPE``."""

    override: bool  #: set ``OPENBLAS_CORETYPE=SkylakeX``
    reason: str  #: one sentence, for ``dbnet info``


class OpenBLAS(NamedTuple):
    """The OpenBLAS numpy will load, as found before loading it."""

    version: str | None  #: e.g. ``"0.3.31.188.0"``; None if not found
    source: str  #: where the version was read


#: Human-readable list of the settings :func:`tune` changed, for ``dbnet info`` and the benchmarks.
applied: list[str] = []
#: The coretype decision of :func:`tune` (None until it ran), the OpenBLAS it was based on,
#: and the ``OPENBLAS_CORETYPE`` the process started with.
decision: Decision | None = None
openblas: OpenBLAS | None = None
environment_coretype: str | None = None
_done = False


def cpu_flags() -> set[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (empty if unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return set()


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """``"0.3.31.188.0"`` -> ``(0, 3, 31)``; None if ``text`` does not start with three numbers."""
    m = re.match(r"\s*(\d+)\.(\d+)\.(\d+)", text or "")
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def decide(flags: set[str], version: str | None, env: Mapping[str, str], numpy_loaded: bool = False) -> Decision:
    """Whether to set ``OPENBLAS_CORETYPE=SkylakeX``, and why.  Pure: no I/O.

    ``flags``: the CPU's ``/proc/cpuinfo`` flags; ``version``: the OpenBLAS
    version numpy will load (None if unknown); ``env``: the environment
    (``DBNET_TUNE``, ``OPENBLAS_CORETYPE``).
    """
    current = env.get("OPENBLAS_CORETYPE", "").strip()
    keep = (f"keeping OPENBLAS_CORETYPE={current} from the environment" if current
            else "leaving the kernel to OpenBLAS's own detection")
    if env.get("DBNET_TUNE", "1") == "0":
        return Decision(False, "DBNET_TUNE=0: " + keep)
    if numpy_loaded:
        return Decision(False, "numpy was imported before dbnet, so OpenBLAS had already chosen its kernels")
    missing = _AVX512 - flags
    if missing:
        return Decision(False, f"the CPU lacks AVX-512 ({' '.join(sorted(missing))} missing): {keep}")
    if current.lower() in _AVX512_KERNELS:
        return Decision(False, f"OPENBLAS_CORETYPE={current} from the environment already selects AVX-512 kernels")
    parsed = parse_version(version)
    if parsed is None:
        return Decision(False, f"OpenBLAS version unknown, so not known to run SkylakeX correctly here: {keep}")
    if parsed < MIN_OPENBLAS:
        return Decision(False, f"OpenBLAS {version} is older than {_MIN_TEXT}, the first release known to run the "
                               f"SkylakeX kernels correctly on AVX-512 AMD CPUs: {keep}")
    why = f"OpenBLAS {version} >= {_MIN_TEXT} and the CPU has AVX-512"
    if current:
        return Decision(True, f"replaced OPENBLAS_CORETYPE={current} set by the environment with SkylakeX: {why} "
                              f"(DBNET_TUNE=0 keeps the environment's value)")
    return Decision(True, f"set OPENBLAS_CORETYPE=SkylakeX (it was unset): {why}")


def _version_in_binary(path: Path) -> str | None:
    """The ``OpenBLAS x.y.z`` string compiled into a library file, found without loading it."""
    import mmap

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            m_ = _VERSION_IN_BINARY.search(m)
            return m_[1].decode("ascii").rstrip(".") if m_ else None
    except (OSError, ValueError):
        return None


def find_openblas() -> OpenBLAS:
    """The OpenBLAS numpy will load and its version, without importing numpy or loading the library."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("numpy")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return OpenBLAS(None, "numpy not found")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    for libs in (pkg.parent / "numpy.libs", pkg / ".libs"):  # auditwheel's folder; old wheels' folder
        try:
            candidates = sorted(p for p in libs.iterdir() if "openblas" in p.name.lower())
        except OSError:
            continue
        for lib in candidates:
            version = _version_in_binary(lib)
            if version:
                return OpenBLAS(version, str(lib))
    try:
        config = (pkg / "__config__.py").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return OpenBLAS(None, f"no OpenBLAS bundled with numpy in {pkg.parent}, and no numpy/__config__.py")
    m = _CONFIG_BLAS.search(config)
    if m and "openblas" in m[1].lower():
        v = re.search(r'"version":\s*"([^"]+)"', m[1])
        if v:
            return OpenBLAS(v[1], f"{pkg / '__config__.py'} (numpy's build-time BLAS; the library loaded may differ)")
    return OpenBLAS(None, f"numpy in {pkg} bundles no OpenBLAS and its build configuration names none")


def tune() -> None:
    """Apply the settings described in the module docstring (once per process)."""
    global _done, decision, openblas, environment_coretype
    if _done:
        return
    _done = True
    environment_coretype = os.environ.get("OPENBLAS_CORETYPE")
    if os.environ.get("DBNET_TUNE", "1") == "0":
        decision = decide(set(), None, os.environ)
        return
    numpy_loaded = "numpy" in sys.modules
    flags = cpu_flags()
    needs_version = not numpy_loaded and _AVX512 <= flags and \
        os.environ.get("OPENBLAS_CORETYPE", "").strip().lower() not in _AVX512_KERNELS
    openblas = find_openblas() if needs_version else None
    decision = decide(flags, openblas.version if openblas else None, os.environ, numpy_loaded)
    if decision.override:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
        was = f"replaced {environment_coretype} from the environment" if environment_coretype else "was unset"
        applied.append(f"OPENBLAS_CORETYPE=SkylakeX ({was}; AVX-512 CPU, OpenBLAS {openblas.version})")
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "passive"
        applied.append("OMP_WAIT_POLICY=passive")
