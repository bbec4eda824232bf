"""What the Grafana dashboard tests share: the dashboards, their PromQL, and the metric
names an expression reads (a small PromQL tokenizer) or a `/metrics` scrape holds.

The tokenizer is deliberately small: it knows enough PromQL to tell a metric name from a
function, an aggregation, a keyword, a label name (inside ``{}`` or a ``by``/``on``
clause), a string, a number, a duration and a Grafana variable. A name it cannot place
is reported as a metric, so a typo fails the live check instead of slipping through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GRAFANA_DIR = REPO / "configs" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
DASHBOARDS = ("overview", "gateway", "lake", "stream", "cortex", "forge")

# PromQL's functions and aggregation operators (Prometheus 2.x/3.x); a name followed by
# `(` must be one of these, which the unit test checks.
_FUNCTION_WORDS = """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil
    changes clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week
    day_of_year days_in_month deg delta deriv exp floor histogram_avg histogram_count
    histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum holt_winters hour idelta increase irate label_join label_replace
    last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month
    pi predict_linear present_over_time quantile_over_time rad rate resets round scalar
    sgn sin sinh sort sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time
    stdvar_over_time sum_over_time tan tanh time timestamp vector year sum min max avg
    group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
"""
FUNCTIONS = frozenset(_FUNCTION_WORDS.split())
# Binary operators, modifiers and literals; `start`/`end` follow `@`.
_KEYWORD_WORDS = """
    and or unless bool offset by without on ignoring group_left group_right inf nan
    start end atan2
"""
KEYWORDS = frozenset(_KEYWORD_WORDS.split())
# Clauses whose parenthesised list holds label names, not metrics.
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GRAFANA_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
_TOKENS = re.compile(
    r"(?P<number>0x[0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][-+]?\d+|(?:ms|[smhdwy])+)?)"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?"
)
# A histogram's series; the declared (ray.util.metrics) name has none of these suffixes.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
RAY_PREFIX = "ray_"  # Ray's exporter prefixes every ray.util.metrics name with it.


def tokens(expr: str) -> Iterator[tuple[str, bool]]:
    """``(identifier, is_call)`` for each identifier outside strings, label matchers,
    ranges, label lists and Grafana variables."""
    text = _STRINGS.sub('""', expr)
    text = _GRAFANA_VARIABLES.sub(" ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers: names and operators only
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _LABEL_LISTS.sub(" ", text)
    for match in _TOKENS.finditer(text):
        if match["name"]:
            yield match["name"], bool(match["call"])


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` reads."""
    return {name for name, call in tokens(expr) if not call and name.lower() not in KEYWORDS}


def function_names(expr: str) -> set[str]:
    """The functions and aggregations ``expr`` calls."""
    return {name for name, call in tokens(expr) if call}


def declared_name(name: str) -> str:
    """The name a ``ray.util.metrics`` series was declared with in our code: without
    Ray's ``ray_`` prefix and a histogram's ``_bucket``/``_sum``/``_count`` suffix."""
    name = name.removeprefix(RAY_PREFIX)
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def scraped_names(text: str) -> set[str]:
    """The sample names in a Prometheus text-format scrape."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every shipped dashboard by file stem."""
    return {
        path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def expressions(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(panel title, PromQL)`` for every target of every panel."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield str(panel.get("title")), str(target.get("expr", ""))


def dashboard_metric_names() -> dict[str, set[str]]:
    """Each metric name any dashboard reads, with where (``board: panel``)."""
    found: dict[str, set[str]] = {}
    for stem, board in load_dashboards().items():
        for title, expr in expressions(board):
            for name in metric_names(expr):
                found.setdefault(name, set()).add(f"{stem}: {title}")
    return found
