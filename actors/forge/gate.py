"""The promotion gate: whether a candidate's score may replace the current holder's.

Pure functions of (scores, mode) and nothing else, so the rule is tested on its own and
``ModelRegistry.promote`` only carries the decision out.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from cluster.errors import InvalidInputError

__all__ = ["MODES", "Mode", "explain", "gate"]

Mode = Literal["min", "max"]
MODES: tuple[str, ...] = get_args(Mode)


def gate(candidate: float, incumbent: float | None, mode: Mode) -> bool:
    """Whether a candidate scoring ``candidate`` may replace one scoring ``incumbent``.

    "At least as good": ``>=`` when higher is better (``max``), ``<=`` when lower is
    (``min``). No incumbent, or one that scored NaN, lets any real score through; a
    candidate that scored NaN never passes.
    """
    if mode not in MODES:
        raise InvalidInputError(field="mode", value=mode, allowed="min or max")
    if math.isnan(candidate):
        return False
    if incumbent is None or math.isnan(incumbent):
        return True
    return candidate >= incumbent if mode == "max" else candidate <= incumbent


def explain(candidate: float, incumbent: float | None, mode: Mode, promoted: bool) -> str:
    """One line saying why ``gate`` decided as it did (kept with the decision)."""
    if math.isnan(candidate):
        return "the candidate scored NaN"
    if incumbent is None:
        return "no version holds the alias"
    if math.isnan(incumbent):
        return "the current holder scored NaN"
    better = "higher" if mode == "max" else "lower"
    verdict = "at least as good" if promoted else "worse"
    return f"{candidate:.6g} vs {incumbent:.6g}: {verdict} ({better} is better)"
