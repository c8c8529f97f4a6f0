"""The sharded parameter server on MPI one-sided windows.

* :mod:`dbnet.ps.layout` - what lives where in each shard's windows (pure).
* :mod:`dbnet.ps.windows` - collective creation of the windows.
* :mod:`dbnet.ps.shard` - the shard's service loop: apply pushed gradients
  with the update rule, keep MPI progressing, count staleness.
* :mod:`dbnet.ps.client` - fetch and push, as replicas (and the lead) do them.
"""

from dbnet.ps.client import PSClient
from dbnet.ps.layout import Ctrl, ShardLayout, Slot
from dbnet.ps.shard import ShardServer
from dbnet.ps.windows import PSWindows

__all__ = ["Ctrl", "PSClient", "PSWindows", "ShardLayout", "ShardServer", "Slot"]
