"""Who does what: one frozen :class:`Topology` value per rank.

World ranks are laid out as ``[replicas x partitions | shards | coordinator]``:

* replica r, partition p  ->  world rank ``r * P + p``  (world rank 0 is
  replica 0, partition 0: the *lead*, which evaluates, decides when to stop
  and writes the run directory);
* shard k                 ->  world rank ``R * P + k``;
* the Sandblaster coordinator (when configured) -> the last rank.

:func:`rank_layout` is pure (any rank can compute any other's role);
:func:`build_topology` is collective over the communicator it is given: it
duplicates it once (nothing in dbnet touches the caller's communicator
afterwards) and splits per-role and per-replica communicators.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from dbnet.errors import ConfigError


class Role(enum.Enum):
    REPLICA = "replica"
    SHARD = "shard"
    COORDINATOR = "coordinator"


@dataclass(frozen=True)
class RankRole:
    role: Role
    replica_id: int | None = None
    partition_id: int | None = None
    shard_id: int | None = None

    def ids(self) -> dict:
        return {"replica_id": self.replica_id, "partition_id": self.partition_id, "shard_id": self.shard_id}

    def describe(self) -> str:
        if self.role is Role.REPLICA:
            return f"replica {self.replica_id}" + (f" partition {self.partition_id}" if self.partition_id else "")
        if self.role is Role.SHARD:
            return f"shard {self.shard_id}"
        return "coordinator"


def world_size(shards: int, replicas: int, partitions: int = 1, coordinator: bool = False) -> int:
    return shards + replicas * partitions + int(coordinator)


def size_error(shards: int, replicas: int, partitions: int, coordinator: bool, got: int) -> str:
    need = world_size(shards, replicas, partitions, coordinator)
    parts = f"{shards} shard{'s' * (shards != 1)} + {replicas} replica{'s' * (replicas != 1)} x {partitions} partition{'s' * (partitions != 1)}"
    if coordinator:
        parts += " + 1 coordinator"
    hint = f"run mpiexec -n {need} (or dbnet launch CONFIG)"
    spare = got - shards - int(coordinator)
    if spare > 0 and spare % partitions == 0:
        hint += f" or set topology.replicas = {spare // partitions}"
    return f"need {need} ranks ({parts}), got {got}: {hint}"


def rank_layout(shards: int, replicas: int, partitions: int = 1, coordinator: bool = False) -> list[RankRole]:
    """The role of every world rank, in rank order (pure)."""
    roles = [RankRole(Role.REPLICA, replica_id=r, partition_id=p) for r in range(replicas) for p in range(partitions)]
    roles += [RankRole(Role.SHARD, shard_id=k) for k in range(shards)]
    if coordinator:
        roles.append(RankRole(Role.COORDINATOR))
    return roles


@dataclass(frozen=True)
class Topology:
    """This rank's role, the job's shape, and the communicators it may use.

    ``comm`` is dbnet's duplicate of the world communicator; ``group`` spans
    the ranks of this rank's role (all shards, or all replica partitions);
    ``replica_comm`` spans the partitions of this rank's replica (None on
    shards and the coordinator).
    """

    comm: Any
    group: Any
    replica_comm: Any
    me: RankRole
    shards: int
    replicas: int
    partitions: int
    coordinator: bool
    roles: tuple = ()  # every rank's RankRole, in rank order
    lead_rank: int = 0

    def ranks_of(self, role: Role) -> list[int]:
        return [i for i, r in enumerate(self.roles) if r.role is role]

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    @property
    def role(self) -> Role:
        return self.me.role

    @property
    def is_lead(self) -> bool:
        return self.rank == self.lead_rank

    def replica_rank(self, replica: int, partition: int = 0) -> int:
        for i, r in enumerate(self.roles):
            if r.role is Role.REPLICA and r.replica_id == replica and r.partition_id == partition:
                return i
        raise KeyError(f"no replica {replica} partition {partition}")

    def shard_rank(self, shard: int) -> int:
        return self.shard_ranks[shard]

    @property
    def shard_ranks(self) -> list[int]:
        return sorted(self.ranks_of(Role.SHARD), key=lambda i: self.roles[i].shard_id)

    def describe(self) -> dict:
        return {"shards": self.shards, "replicas": self.replicas, "partitions": self.partitions,
                "coordinator": self.coordinator, "world_size": self.size}

    def free(self) -> None:
        """Free the communicators (collective over ``comm``)."""
        for c in (self.replica_comm, self.group):
            if c is not None:
                c.Free()
        self.comm.Free()


def lead_of(roles: list[RankRole]) -> int:
    """The lead: the lowest-numbered rank of the lowest replica's partition 0 (pure)."""
    replicas = [(r.replica_id, i) for i, r in enumerate(roles) if r.role is Role.REPLICA and not r.partition_id]
    return min(replicas)[1] if replicas else 0


def build_topology(comm, shards: int, replicas: int, partitions: int = 1, coordinator: bool = False,
                   roles: list[RankRole] | None = None) -> Topology:
    """Collective over ``comm``.  Raises :class:`ConfigError` (on every rank alike) if the size is wrong.

    ``roles`` (one per rank of ``comm``) overrides :func:`rank_layout`: a job
    rebuilt on a shrunk communicator keeps each survivor's role.
    """
    size = comm.Get_size()
    if roles is None:
        if size != world_size(shards, replicas, partitions, coordinator):
            raise ConfigError(size_error(shards, replicas, partitions, coordinator, size))
        roles = rank_layout(shards, replicas, partitions, coordinator)
    elif len(roles) != size:
        raise ValueError(f"{len(roles)} roles for {size} ranks")
    dup = comm.Dup()
    me = roles[dup.Get_rank()]
    group = dup.Split(list(Role).index(me.role), dup.Get_rank())
    replica_color = me.replica_id if me.role is Role.REPLICA else -1
    from mpi4py import MPI

    rc = dup.Split(replica_color if replica_color >= 0 else MPI.UNDEFINED, dup.Get_rank())
    return Topology(dup, group, rc if rc != MPI.COMM_NULL else None, me, shards, replicas, partitions, coordinator,
                    tuple(roles), lead_of(roles))
