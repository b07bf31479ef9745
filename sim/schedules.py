"""Pipeline schedules: the order of work on each pipeline rank.

An op is `(kind, microbatch, chunk)`: kind "F" (forward), "B" (backward; the
input-gradient half only under zero-bubble) or "W" (weight gradient, zero
bubble only); `chunk` is the model chunk (virtual stage `chunk * p + rank`)
for interleaved 1F1B, else 0. Dependencies (F of virtual stage k waits for F
of k-1, B of k waits for B of k+1, W after its own B) are the engine's; the
schedule only fixes each rank's order, as Megatron-LM and ZB-H1 do. With
several flushes per step a rank's ops are the flushes' schedules in turn: the
next flush's first forward waits only for the rank's own last op, and the
fill / drain bubble is paid once per flush.
"""

from __future__ import annotations

Op = tuple[str, int, int]


def gpipe(p: int, m: int, rank: int) -> list[Op]:
    """All forwards, then all backwards (Huang et al. 2019)."""
    return [("F", i, 0) for i in range(m)] + [("B", i, 0) for i in range(m)]


def one_f_one_b(p: int, m: int, rank: int) -> list[Op]:
    """PipeDream-flush / Megatron 1F1B: p-rank-1 warm-up forwards, then
    alternate one forward and one backward, then the cool-down backwards."""
    warm = min(p - rank - 1, m)
    ops: list[Op] = [("F", i, 0) for i in range(warm)]
    f, b = warm, 0
    while f < m:
        ops += [("F", f, 0), ("B", b, 0)]
        f += 1
        b += 1
    ops += [("B", i, 0) for i in range(b, m)]
    return ops


def _interleaved_ids(p: int, m: int, v: int, backward: bool) -> list[tuple[int, int]]:
    """(microbatch, chunk) in Megatron-LM's order: groups of p microbatches,
    each group through every chunk (reversed chunks for backward)."""
    out = []
    for start in range(0, m, p):
        group = range(start, min(start + p, m))
        chunks = range(v - 1, -1, -1) if backward else range(v)
        for c in chunks:
            out += [(i, c) for i in group]
    return out


def interleaved(p: int, m: int, rank: int, v: int) -> list[Op]:
    """Interleaved 1F1B (Narayanan et al. 2021) with v chunks per rank."""
    fwd = _interleaved_ids(p, m, v, backward=False)
    bwd = _interleaved_ids(p, m, v, backward=True)
    total = m * v
    warm = min(total, (p - rank - 1) * 2 + (v - 1) * p)
    ops: list[Op] = [("F", i, c) for i, c in fwd[:warm]]
    f, b = warm, 0
    while f < total:
        ops += [("F", *fwd[f]), ("B", *bwd[b])]
        f += 1
        b += 1
    ops += [("B", *x) for x in bwd[b:]]
    return ops


def zero_bubble_h1(p: int, m: int, rank: int) -> list[Op]:
    """ZB-H1 (Qi et al. 2024): 1F1B order with each microbatch's weight-gradient
    W split from its input-gradient B. Rank i defers up to i W's (the last
    stage the most), so input gradients run back to the first stage without
    waiting behind W and the deferred W's fill the cool-down: the bubble
    shrinks from (p-1)(T_F + T_B + T_W) to (p-1)(T_F + T_B - T_W); the peak
    activation memory (the first stage's p microbatches) is that of 1F1B."""
    ops: list[Op] = []
    pending: list[int] = []
    for kind, i, c in one_f_one_b(p, m, rank):
        ops.append((kind, i, c))
        if kind == "B":
            pending.append(i)
            while len(pending) > rank:
                ops.append(("W", pending.pop(0), 0))
    return ops + [("W", i, 0) for i in pending]


def schedule(name: str, p: int, m: int, rank: int, v: int = 1, flushes: int = 1) -> list[Op]:
    """The op order of pipeline rank `rank` (0-based) for `m` microbatches,
    run as `flushes` schedules one after another (`Parallel.pipeline_flushes`:
    micro-batches split as evenly as possible, numbered on), each filling
    and draining the pipeline."""
    if flushes > 1 and m > 1:
        ops: list[Op] = []
        start = 0
        for i in range(min(flushes, m)):
            n = m // flushes + (1 if i < m % flushes else 0)
            ops += [(k, mb + start, c) for k, mb, c in schedule(name, p, n, rank, v)]
            start += n
        return ops
    if name == "gpipe":
        return gpipe(p, m, rank)
    if name == "interleaved-1f1b" and v > 1:
        return interleaved(p, m, rank, v)
    if name == "zero-bubble":
        return zero_bubble_h1(p, m, rank)
    return one_f_one_b(p, m, rank)
