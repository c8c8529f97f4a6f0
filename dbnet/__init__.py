"""dbnet: DistBelief-style distributed training of deep networks on MPI.

The numerical core (kernels, models with one flat parameter vector, HDF5
datasets, single-process training) is importable without MPI; the distributed
algorithms import :mod:`mpi4py` only when they run.
"""

from dbnet import _tuning

_tuning.tune()  # before numpy/numba load: see dbnet/_tuning.py

__version__ = "0.1.0"
