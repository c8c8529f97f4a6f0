"""The sharded parameter server on lock-free MPI one-sided windows.

* :mod:`dbnet.ps.layout` - what lives where in each shard's windows, and the push protocol (pure).
* :mod:`dbnet.ps.windows` - collective creation of the windows.
* :mod:`dbnet.ps.shard` - the shard's service step: apply pushed gradients with
  the update rule, answer checkpoint snapshots, count staleness.
* :mod:`dbnet.ps.service` - a shard rank's life: take its slice, serve until stopped.
* :mod:`dbnet.ps.client` - fetch, push and snapshot, as clients (replica partitions, each on its range)
  and the lead do them.
* :mod:`dbnet.ps.transport` - a replica's fetch/push schedule, in its training thread or overlapped.
"""

from dbnet.ps.client import PSClient
from dbnet.ps.layout import ShardLayout
from dbnet.ps.shard import ShardServer
from dbnet.ps.windows import PSWindows

__all__ = ["PSClient", "PSWindows", "ShardLayout", "ShardServer"]
