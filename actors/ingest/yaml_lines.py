"""YAML with line numbers, and pydantic errors turned into one line naming line and key.

``parse_yaml`` composes the YAML node tree once, records the line of every mapping key
and sequence item by path (``("transforms", 1, "op") -> 12``), refuses duplicate keys
(PyYAML would keep the last silently), then constructs the plain data from the same
tree. Booleans follow YAML 1.2 (only ``true``/``false``): under YAML 1.1 the lookup
key ``on:`` would load as ``True`` and ``values: [NO, SE]`` as ``[False, 'SE']``.

``explain`` maps a pydantic ``ValidationError`` back onto that data: it walks the
error's location through the document (skipping the union tags pydantic inserts) to the
deepest key that exists, and words the problem and its fix by error type.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from actors.ingest.pipeline_errors import PipelineConfigError
from cluster.settings import redact_url

Path = tuple[str | int, ...]
TAG_KEYS = ("type", "op", "rule")
EXAMPLE = "see configs/pipelines/orders.yaml for a complete example"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BOOL_TAG = "tag:yaml.org,2002:bool"
_MAX_VALUE_CHARS = 80


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass(frozen=True)
class Document:
    """Parsed YAML data and the line (1-based) of each key and item, by path."""

    data: Any
    lines: Mapping[Path, int]
    source: str

    def line_of(self, path: Path) -> int | None:
        """The line of ``path`` or of its deepest recorded ancestor."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


def dotted(path: Sequence[str | int]) -> str:
    """``("transforms", 1, "op")`` -> ``transforms[1].op``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def parse_yaml(text: str, *, source: str) -> Document:
    """Parse one YAML document; syntax errors and duplicate keys name their line."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise PipelineConfigError(
            source=source, line=line, key="(yaml)", problem=problem, fix="correct the YAML syntax"
        ) from None
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise PipelineConfigError(
            source=source, line=None, key="(yaml)", problem=problem, fix="correct the YAML"
        ) from None
    finally:
        loader.dispose()
    lines: dict[Path, int] = {(): 1 if node is None else node.start_mark.line + 1}
    if node is not None:
        _record(node, (), lines, source)
    return Document(data, lines, source)


def substitute_env(doc: Document, env: Mapping[str, str]) -> Document:
    """Replace ``${NAME}`` in string values by ``env[NAME]``; a missing name is an error."""
    return Document(_substitute(doc.data, (), doc, env), doc.lines, doc.source)


def explain(exc: ValidationError, doc: Document, model: type[BaseModel]) -> PipelineConfigError:
    """The first validation error as one line: file, line, key path, problem and fix."""
    errors = exc.errors(include_url=False)
    # A misspelt key also makes the real key "missing": name the misspelling first.
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    path, rest = _data_path(first["loc"], doc.data)
    key_path, problem, fix = _wording(first, path, rest, model)
    others = {dotted(_joined(*_data_path(e["loc"], doc.data))) for e in errors[1:]}
    others.discard(dotted(key_path))
    return PipelineConfigError(
        source=doc.source,
        line=doc.line_of(key_path),
        key=dotted(key_path),
        problem=problem,
        fix=fix,
        more=len(others),
    )


# ---------------------------------------------------------------- parsing


def _record(node: yaml.Node, path: Path, lines: dict[Path, int], source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise PipelineConfigError(
                    source=source,
                    line=line,
                    key=dotted((*path, key)),
                    problem=f"the key appears twice (first on line {seen[key]})",
                    fix="keep one of them",
                )
            seen[key] = line
            lines[(*path, key)] = line
            _record(value_node, (*path, key), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _record(item, (*path, index), lines, source)


def _substitute(value: Any, path: Path, doc: Document, env: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, (*path, k), doc, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*path, i), doc, env) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    for name in _ENV_REF.findall(value):
        if name not in env:
            raise PipelineConfigError(
                source=doc.source,
                line=doc.line_of(path),
                key=dotted(path),
                problem=f"environment variable {name} (written ${{{name}}}) is not set",
                fix=f"export {name} where the pipeline runs, or write the value itself",
            )
    return _ENV_REF.sub(lambda m: env[m.group(1)], value)


# ---------------------------------------------------------------- explaining


def _data_path(loc: Sequence[str | int], data: Any) -> tuple[Path, Path]:
    """Split ``loc`` into the keys present in ``data`` and the rest (a missing key)."""
    path: list[str | int] = []
    current = data
    for index, part in enumerate(loc):
        if _has(current, part):
            current = current[part]
            path.append(part)
        elif part == "[key]" or (
            isinstance(current, dict) and any(current.get(k) == part for k in TAG_KEYS)
        ):
            continue  # pydantic's marks for dict keys and for the union member chosen
        else:
            return tuple(path), tuple(p for p in loc[index:] if p != "[key]")
    return tuple(path), ()


def _has(container: Any, part: str | int) -> bool:
    if isinstance(container, dict):
        return part in container
    return isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container)


def _joined(path: Path, rest: Path) -> Path:
    return path + rest[:1]


def _wording(error: Any, path: Path, rest: Path, model: type[BaseModel]) -> tuple[Path, str, str]:
    kind, ctx, loc = error["type"], error.get("ctx") or {}, error["loc"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        disc = str(ctx.get("discriminator", "type")).strip("'\"")
        tags = _tags(loc, model)
        if kind == "union_tag_not_found":
            return (*path, disc), "is missing", f"add {disc}: one of {', '.join(tags)}"
        tag = ctx.get("tag")
        return (*path, disc), f"{tag!r} is not one of {', '.join(tags)}", _choose(tag, tags)
    if kind == "missing":
        info = _walk(loc, model)[1]
        hint = f" ({info.description})" if info is not None and info.description else ""
        return (*path, *rest[:1]), "is required but missing", f"add {rest[:1][0]}: ...{hint}"
    if kind == "extra_forbidden":
        parent = _walk(loc[:-1], model)[0]
        allowed = list(parent.model_fields) if parent is not None else []
        fix = _choose(path[-1] if path else loc[-1], allowed, "remove it")
        return path, "is not a key here", fix
    shown = _shown(error.get("input"), path)
    if kind == "literal_error":
        options = [o.strip("'") for o in re.split(r", | or ", str(ctx.get("expected", "")))]
        return path, f"{shown} is not one of {', '.join(options)}", _choose(shown, options)
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if "; fix: " in message:
        problem, fix = message.split("; fix: ", 1)
        return path, problem, fix
    info = _walk(loc, model)[1]
    described = f" ({info.description})" if info is not None and info.description else ""
    if kind in ("value_error", "assertion_error"):
        return path, message, f"change the value{described}; {EXAMPLE}"
    name = next((p for p in reversed(path) if isinstance(p, str)), "it")
    return (
        path,
        f"{shown} is not valid: {message[:1].lower()}{message[1:]}",
        (f"give {name} a valid value{described}"),
    )


def _choose(value: Any, options: Sequence[str], otherwise: str = "") -> str:
    close = difflib.get_close_matches(str(value).strip("'"), list(options), n=1, cutoff=0.6)
    listed = f"use one of {', '.join(options)}" if options else otherwise
    if close:
        return f"did you mean {close[0]!r}? ({listed})"
    return listed if options else otherwise or EXAMPLE


def _shown(value: Any, path: Path) -> str:
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if isinstance(value, str) and "url" in path:
        value = redact_url(value)
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


# ---------------------------------------------------------------- model introspection


def _walk(
    loc: Sequence[str | int], model: type[BaseModel]
) -> tuple[type[BaseModel] | None, FieldInfo | None, list[type[BaseModel]]]:
    """The model at ``loc``, the last field on the way, and union members still open."""
    current: type[BaseModel] | None = model
    info: FieldInfo | None = None
    pending: list[type[BaseModel]] = []
    for part in loc:
        if not isinstance(part, str) or part == "[key]":
            continue
        if current is not None and part in current.model_fields:
            info = current.model_fields[part]
            found = _models_in(info.annotation)
            current, pending = (found[0], []) if len(found) == 1 else (None, found)
        elif pending:
            current = next((m for m in pending if part in _tags_of(m)), None)
            pending = []
        else:
            break
    return current, info, pending


def _tags(loc: Sequence[str | int], model: type[BaseModel]) -> list[str]:
    return [tag for member in _walk(loc, model)[2] for tag in _tags_of(member)]


def _tags_of(member: type[BaseModel]) -> list[str]:
    for key in TAG_KEYS:
        info = member.model_fields.get(key)
        if info is not None:
            return [str(a) for a in typing.get_args(info.annotation)]
    return []


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(m for m in _models_in(arg) if m not in found)
    return found
