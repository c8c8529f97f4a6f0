"""``dbnet info``: what this process runs on (versions, MPI library, threads, BLAS)."""

from __future__ import annotations

import os
import platform

from numba import prange


def collect() -> dict[str, str]:
    """Versions and runtime settings, as display strings.  Initializes no MPI."""
    import h5py
    import numba
    import numpy

    from dbnet import __version__, _tuning

    info = {
        "dbnet": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "cpu_count": str(os.cpu_count()),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "h5py": f"{h5py.__version__} (HDF5 {h5py.version.hdf5_version}, MPI-parallel: {h5py.get_config().mpi})",
    }
    info.update(blas_report())
    info["dbnet tuning"] = "; ".join(_tuning.applied) or "none (DBNET_TUNE=0 or already set)"
    try:
        import mpi4py

        mpi4py.rc.initialize = False  # report the library without starting MPI
        from mpi4py import MPI

        info["mpi4py"] = mpi4py.__version__
        info["MPI library"] = " ".join(MPI.Get_library_version().split())[:160]
        info["MPI standard"] = "%d.%d" % MPI.Get_version()
    except Exception as e:  # noqa: BLE001 - report whatever is wrong with MPI
        info["mpi4py"] = f"unavailable ({e})"
    try:
        numba.njit(parallel=True)(_touch)(numpy.zeros(2))
        info["numba threading layer"] = f"{numba.threading_layer()} ({numba.get_num_threads()} threads)"
    except Exception as e:  # noqa: BLE001
        info["numba threading layer"] = f"unavailable ({e})"
    return info


def blas_report() -> dict[str, str]:
    """What ``import dbnet`` decided about the OpenBLAS kernel and why, and the kernel running now."""
    from dbnet import _tuning

    found = _tuning.openblas or _tuning.find_openblas()
    flags = _tuning.cpu_flags()
    missing = sorted(_tuning._AVX512 - flags)
    decision = _tuning.decision
    env_had = _tuning.environment_coretype
    report = {
        "openblas found": f"{found.version or 'version unknown'} ({found.source})",
        "cpu AVX-512": (f"no ({' '.join(missing)} missing)" if missing
                        else "yes (" + " ".join(sorted(f for f in flags if f.startswith("avx512"))) + ")"),
        "OPENBLAS_CORETYPE": f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')} "
                             f"(the environment had {env_had if env_had is not None else 'it unset'})",
        "OPENBLAS_L2_SIZE": f"{os.environ.get('OPENBLAS_L2_SIZE', 'unset')} (never changed by dbnet)",
        "coretype decision": (f"{'override' if decision.override else 'no override'}: {decision.reason}"
                              if decision else "not made (dbnet._tuning.tune did not run)"),
    }
    try:
        from threadpoolctl import threadpool_info  # optional
    except ImportError:
        report["blas"] = "unknown at run time (pip install threadpoolctl to show the kernel in use)"
        return report
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    report["blas"] = "; ".join(
        f"{p['internal_api']} {p['version']}, kernel {p.get('architecture', '?')}, {p['num_threads']} threads, "
        f"{os.path.basename(p['filepath'])}" for p in blas) or "no BLAS loaded"
    arch = {str(p.get("architecture", "")).lower() for p in blas if p["internal_api"] == "openblas"}
    if decision and decision.override and arch and arch != {"skylakex"}:
        report["blas"] += "  (!) expected SkylakeX: OpenBLAS did not honour OPENBLAS_CORETYPE"
    return report


def _touch(a):
    for i in prange(a.size):  # a parallel region, to start numba's thread pool
        a[i] += 1.0


def format_info(info: dict[str, str]) -> str:
    width = max(map(len, info))
    return "\n".join(f"{k:<{width}}  {v}" for k, v in info.items())
