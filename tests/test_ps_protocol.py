"""The parameter server's push / apply / fetch / snapshot protocol on 3 and 4 ranks, both MPI libraries.

The cases live in tests/mpi_ps_protocol.py (run under a real mpiexec): exact
results of the sharded update rules against single-process application,
bit for bit; a replica that claimed slots and stopped (no lock held) does not
stall the others; NaN gradients are consumed, never applied; a shard never
waits longer than ``snapshot_seconds`` for a stopped lead; two replicas pushing
at once through one slot lose nothing; checkpoint reads under a stream of
pushes are never torn.
"""

from pathlib import Path

import pytest

from mpirun import run_mpi

SCRIPT = str(Path(__file__).with_name("mpi_ps_protocol.py"))
CASES = ["exact-sgd", "exact-momentum", "exact-adagrad", "stalled-claim", "nan-rejected", "snapshot-broken",
         "concurrent", "snapshot-consistent"]


@pytest.mark.parametrize("n, impl", [(3, "openmpi"), (4, "openmpi"), (4, "mpich")])
@pytest.mark.parametrize("case", CASES)
def test_ps_protocol(case, n, impl):
    r = run_mpi(n, [case], impl=impl, timeout=60, script=SCRIPT)
    assert r.returncode == 0 and f"PASS {case}" in r.stdout, r.stdout + r.stderr
