"""The 10-match cap of version-based dynamic batches.

A device can be matched at most 10 times by one version-based dynamic batch; after
that the batch never triggers an update for it again, whatever it reports. Group-based
dynamic batches are not capped (a device that failed, left and rejoined the group is
matched again).
"""

from __future__ import annotations

MATCH_CAP = 10


def may_match_again(matches_so_far: int) -> bool:
    return matches_so_far < MATCH_CAP
