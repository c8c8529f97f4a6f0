"""Process-level performance settings, applied before numpy and numba load.

Two settings matter on CPUs like this project's 2-core AMD Zen 5 machines:

* **OpenBLAS kernel.**  OpenBLAS (the BLAS inside numpy's PyPI wheels) picks
  its kernels when it is loaded, from ``OPENBLAS_CORETYPE`` or its own CPU
  detection.  Either can land on the AVX2 "Haswell" kernels on a CPU that has
  AVX-512 (OpenBLAS does not know Zen 4/5 as AVX-512 parts; some machines set
  ``OPENBLAS_CORETYPE=Haswell`` globally): a 2048^3 float32 matmul then runs at
  107 GFLOP/s instead of 430 GFLOP/s with the "SkylakeX" kernels.  When
  ``/proc/cpuinfo`` shows AVX-512 (F, CD, BW, DQ, VL) and the kernel named is
  not an AVX-512 one, dbnet sets ``OPENBLAS_CORETYPE=SkylakeX``.  The CPU
  check makes this safe: on a CPU without AVX-512 nothing changes.
* **OpenMP wait policy.**  Numba's parallel kernels (OpenMP threading layer)
  and OpenBLAS's threads alternate on the same cores; OpenMP threads that
  spin after a parallel region steal the cores from the next matmul (a
  2560x2560 layer's forward took 28 ms instead of 18 ms).  dbnet sets
  ``OMP_WAIT_POLICY=passive`` unless it is set.

``DBNET_TUNE=0`` disables both.  Child processes (mpiexec ranks, benchmark
workers) inherit the settings.  ``dbnet info`` reports what was applied.
"""

from __future__ import annotations

import os
import sys

_AVX512 = {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"}
_AVX512_KERNELS = {"skylakex", "cooperlake", "sapphirerapids"}

#: Human-readable list of the settings :func:`tune` changed, for ``dbnet info``.
applied: list[str] = []


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


def tune() -> None:
    """Apply the settings described in the module docstring (idempotent)."""
    if os.environ.get("DBNET_TUNE", "1") == "0" or applied:
        return
    if "numpy" not in sys.modules:  # later, OpenBLAS has already chosen its kernels
        current = os.environ.get("OPENBLAS_CORETYPE", "")
        if current.lower() not in _AVX512_KERNELS and _AVX512 <= cpu_flags():
            os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
            was = f"was {current}" if current else "was unset"
            applied.append(f"OPENBLAS_CORETYPE=SkylakeX ({was}; this CPU has AVX-512)")
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "passive"
        applied.append("OMP_WAIT_POLICY=passive")
