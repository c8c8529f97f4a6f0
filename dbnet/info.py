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
    try:
        from threadpoolctl import threadpool_info  # optional

        blas = [f"{p['internal_api']} {p['version']} {p.get('architecture', '')} threads={p['num_threads']}"
                for p in threadpool_info() if p["user_api"] == "blas"]
        info["blas"] = "; ".join(blas)
    except ImportError:
        info["blas"] = f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(auto-detect)')}"
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


def _touch(a):
    for i in prange(a.size):  # a parallel region, to start numba's thread pool
        a[i] += 1.0


def format_info(info: dict[str, str]) -> str:
    width = max(map(len, info))
    return "\n".join(f"{k:<{width}}  {v}" for k, v in info.items())
