"""A partition's devices by their next deadline (timeout, retry, schedule). Pure."""

from __future__ import annotations

import heapq


class DeadlineHeap:
    """Devices by next deadline, with lazy invalidation (a device's last note wins)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._at: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._at)

    def note(self, key: str, deadline: int | None) -> None:
        if deadline is None:
            self._at.pop(key, None)
        elif self._at.get(key) != deadline:
            self._at[key] = deadline
            heapq.heappush(self._heap, (deadline, key))

    def pop_due(self, now: int) -> list[str]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            deadline, key = heapq.heappop(self._heap)
            if self._at.get(key) == deadline:
                del self._at[key]
                due.append(key)
        return due
