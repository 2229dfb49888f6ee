"""Which devices a static batch covers, and how a partition finds them cheaply.

- ``ALL``: every device of the product.
- ``REGIONAL``: devices registered in the batch's province (``region``) and, if the
  batch names one, its city.
- ``GROUP``: devices directly in the static group or in any of its subgroups,
  transitively (or, for a dynamic group, devices its expression matches at start).
- ``TARGETED``: the devices the control plane named, one ``BatchTarget`` per device.
  A partition never scans for them.
- ``PHASED``: a percentage of the devices the batch could update; the partitions
  count theirs and the control plane sends each its share (``otaflow.domain.phased``).

Every scope then applies the version rules of ``Batch.accepts_version`` (skip the
destination version; a differential package only fits its source version; the
source-version filter).

Scanning: a partition reads only the product's key prefix, and ``scan_needles``
lists byte strings a device's *encoded* state must contain to possibly match (Avro
writes strings as their UTF-8 bytes), so most devices that cannot match are never
decoded. Needles are a prefilter only: every candidate is still checked in full.
"""

from __future__ import annotations

from otaflow.domain.batches import Batch, BatchScope
from otaflow.domain.devices import DeviceState
from otaflow.domain.groups import GroupRegistry

Needles = list[frozenset[bytes]]


def scans_at_start(batch: Batch) -> bool:
    """Does the batch's START make each partition look at its devices?"""
    return batch.scope not in (BatchScope.TARGETED, BatchScope.PHASED)


def in_static_scope(batch: Batch, state: DeviceState, groups: GroupRegistry) -> bool:
    if state.product_key != batch.product_key:
        return False
    if batch.scope is BatchScope.ALL:
        return True
    if batch.scope is BatchScope.REGIONAL:
        return (
            batch.region is not None
            and state.province == batch.region
            and (batch.city is None or state.city == batch.city)
        )
    if batch.scope is BatchScope.GROUP and batch.group_id is not None:
        if batch.group_type == "DYNAMIC":
            return groups.is_member(batch.group_id, state)
        subtree = groups.subtree(batch.group_id)
        return any(g in subtree for g in state.groups)
    return False  # TARGETED: named by BatchTarget records; PHASED: by its quotas


def version_needles(batch: Batch) -> frozenset[bytes] | None:
    """Versions a device's state must mention to fit the batch (None: any version)."""
    if batch.firmware.is_diff and batch.firmware.src_version is not None:
        return frozenset({batch.firmware.src_version.encode()})
    if batch.src_versions:
        return frozenset(v.encode() for v in batch.src_versions)
    return None


def scan_needles(batch: Batch, groups: GroupRegistry) -> Needles:
    """For a static batch's START: each set must have a member in the encoded state."""
    needles: Needles = []
    versions = version_needles(batch)
    if versions is not None:
        needles.append(versions)
    if batch.scope is BatchScope.REGIONAL and batch.region is not None:
        needles.append(frozenset({(batch.city or batch.region).encode()}))
    elif (
        batch.scope is BatchScope.GROUP
        and batch.group_id is not None
        and batch.group_type != "DYNAMIC"
    ):
        needles.append(frozenset(g.encode() for g in groups.subtree(batch.group_id)))
    return needles


def passes(raw: bytes, needles: Needles) -> bool:
    return all(any(n in raw for n in needle_set) for needle_set in needles)
