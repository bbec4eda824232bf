"""Brute-force per-event reference for the stream engine tests (plain Python, slow, obvious)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

Event = tuple[str, int, int]  # (key, time in whole seconds, value)
US = 1_000_000


def windows_of(t: int, window: dict[str, Any]) -> list[tuple[int, int]]:
    """Every window (in seconds) that contains ``t``, by enumeration."""
    if window["kind"] == "session":
        return [(t, t + window["gap_s"])]
    size = window["size_s"]
    slide = window.get("slide_s", size)
    first = (t - size) // slide * slide
    return [(s, s + size) for s in range(first, t + 1, slide) if s <= t < s + size]


def sessionize(events: list[tuple[str, int, int, int]], gap: int) -> dict[tuple, list]:
    """Group accepted (key, t, v, seq) into sessions split where the gap is >= ``gap``."""
    out: dict[tuple, list] = {}
    by_key: dict[str, list] = defaultdict(list)
    for e in events:
        by_key[e[0]].append(e)
    for key, evs in by_key.items():
        evs.sort(key=lambda e: e[1])
        current: list = []
        end = 0
        for e in evs:
            if current and e[1] >= end:
                out[(key, current[0][1], end)] = current
                current = []
            end = e[1] + gap  # sorted by time: the last event decides the end
            current.append(e)
        out[(key, current[0][1], end)] = current
    return out


def run(
    batches: list[list[Event]], window: dict[str, Any], delay: int, lateness: int
) -> tuple[dict[tuple, dict[str, Any]], int]:
    """Final window aggregates and the number of late (event, window) pairs."""
    watermark = -(2**62)
    accepted: dict[tuple, list] = defaultdict(list)
    flat: list[tuple[str, int, int, int]] = []
    late, seq = 0, 0
    for batch in batches:
        for key, t, v in batch:
            for start, end in windows_of(t, window):
                if end + lateness <= watermark:
                    late += 1
                else:
                    accepted[(key, start, end)].append((key, t, v, seq))
                    flat.append((key, t, v, seq))
            seq += 1
        if batch:
            watermark = max(watermark, max(t for _, t, _ in batch) - delay)
    if window["kind"] == "session":
        accepted = sessionize(flat, window["gap_s"])  # type: ignore[assignment]
    return {(k, s * US, e * US): aggregates(evs) for (k, s, e), evs in accepted.items()}, late


def nearest_rank(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def aggregates(events: list[tuple[str, int, int, int]]) -> dict[str, Any]:
    values = [v for _, _, v, _ in events]
    first = min(events, key=lambda e: (e[1], e[3]))
    last = max(events, key=lambda e: (e[1], e[3]))
    return {
        "n": len(events),
        "total": sum(values),
        "avg": sum(values) / len(values),
        "lo": min(values),
        "hi": max(values),
        "first_v": first[2],
        "last_v": last[2],
        "uniq": len(set(values)),
        "p50": nearest_rank(values, 0.5),
        "p90": nearest_rank(values, 0.9),
    }
