"""Bytes a rank sends to synchronise data parallelism, counted where it happens.

Each synchronisation variant (a DDP communication hook, the parameter server,
the model averager) calls `Traffic.record(op, payload_bytes)` for every
collective it issues, with the size of the tensor it hands to torch.distributed.
`Traffic` turns that payload into the bytes one rank sends with a
bandwidth-optimal algorithm over n ranks (ring all-reduce and all-gather,
scatter + gather for reduce and broadcast), the usual cost model:

    all_reduce  S bytes per rank   -> 2 (n-1)/n * S
    all_gather  s bytes per rank   -> (n-1) * s
    reduce      S bytes (to one)   -> (n-1)/n * S   (mean over ranks)
    broadcast   S bytes (from one) -> (n-1)/n * S   (mean over ranks)

With n = 2 every one of these is exactly the payload a rank gives away. The
counter says what the algorithm moves, not how gloo or NCCL schedules it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.profile import bus_factor

# op -> (the ring collective with the same traffic, buffer = n payloads?)
AS_RING = {"all_reduce": ("all_reduce", False), "all_gather": ("all_gather", True),
           "reduce": ("reduce_scatter", False), "broadcast": ("all_gather", False)}


def sent_bytes(op: str, payload_bytes: float, n: int) -> float:
    """Bytes one rank sends (mean over ranks) for collective `op` over n ranks
    on a payload of `payload_bytes` (the tensor one rank passes in): the
    ring's bus factor (`sandbox.profile.bus_factor`) times the buffer, which
    for all-gather is the n payloads gathered."""
    if op not in AS_RING:
        raise ValueError(f"unknown collective {op!r}; choose one of {', '.join(AS_RING)}")
    ring, gathered = AS_RING[op]
    return bus_factor(ring, n) * payload_bytes * (n if gathered else 1) if n > 1 else 0.0


@dataclass
class Traffic:
    """Running count of the bytes this rank sends for dp synchronisation.

    n: ranks in the data-parallel group. `take()` returns the bytes since
    the previous `take()` (one training step when called once per step).
    """

    n: int
    total_bytes: float = 0.0
    by_op: dict[str, float] = field(default_factory=dict)
    _mark: float = 0.0

    def record(self, op: str, payload_bytes: float) -> None:
        sent = sent_bytes(op, payload_bytes, self.n)
        self.total_bytes += sent
        self.by_op[op] = self.by_op.get(op, 0.0) + sent

    def take(self) -> float:
        """Bytes sent since the last call."""
        delta, self._mark = self.total_bytes - self._mark, self.total_bytes
        return delta
