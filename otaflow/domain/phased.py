"""Phased (GRAY) batches: a percentage of the devices the batch could update.

The console doc: "IoT Platform calculates the number of devices to update based on
this percentage and rounds the result down"; the platform's API doc: at least one
device. "The devices the batch could update" are the product's devices whose module
is on a version the batch accepts (``Batch.accepts_version``: not the destination, a
differential package's source version, the source-version filter). Only the device
partitions know devices' versions, so a phased START is settled in two steps:

1. every device partition counts its devices the batch could update and reports the
   count to the control plane (``PhasedCount``, through the command topic);
2. once every partition has reported, the control plane takes floor(N x percent),
   at least one (``rules.phased_count``), splits it over the partitions in
   proportion to their counts (``quotas``: largest remainder, so the shares add up
   exactly), and sends each partition its share (``PhasedQuota``); the partition
   gives a task to that many of its devices, the ones of smallest ``rank``.

A device whose version changes between the two steps may drop out; the batch then
has fewer tasks than its quota, never more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


def rank(batch_id: str, device_name: str) -> bytes:
    """A device's place in a batch's pseudo-random order (deterministic)."""
    return hashlib.sha256(f"{batch_id}|{device_name}".encode()).digest()


def pick(batch_id: str, names: Iterable[str], count: int) -> list[str]:
    """The ``count`` names of smallest rank."""
    return sorted(names, key=lambda name: rank(batch_id, name))[:count]


def quotas(total: int, counts: Mapping[int, int]) -> dict[int, int]:
    """Split ``total`` over partitions in proportion to ``counts`` (largest remainder).

    The shares add up to ``total`` (when it is at most the sum of counts) and none
    exceeds its partition's count.
    """
    eligible = sum(counts.values())
    if eligible == 0 or total <= 0:
        return {p: 0 for p in counts}
    total = min(total, eligible)
    shares = {p: total * n // eligible for p, n in counts.items()}
    left = total - sum(shares.values())
    # Largest remainder first; ties by partition number, so every reader agrees.
    order = sorted(counts, key=lambda p: (-(total * counts[p] % eligible), p))
    for p in order[:left]:
        shares[p] += 1
    return shares
