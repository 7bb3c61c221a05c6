"""Pydantic's validation errors of a configuration turned into one line each:
``section.field=value: what to change`` (the bounds, the literal's choices, the type), and the
unknown fields of a section on one line with the closest known names
(:func:`describe`, used by :meth:`rxt_dist.train.config.TrainConfig.load`)."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

_TYPE_FIXES = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping of fields",
    "tuple_type": "must be a list",
}
_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def describe(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per error of ``root``'s validation: ``section.field=value: what to change``;
    the unknown fields of one section share a line."""
    unknown: dict[tuple, list[str]] = {}
    lines = []
    for err in exc.errors():
        if err["type"] == "extra_forbidden":
            unknown.setdefault(err["loc"][:-1], []).append(str(err["loc"][-1]))
        else:
            lines.append(_line(err, root))
    return [_unknown_line(root, loc, names) for loc, names in unknown.items()] + lines


def _line(err: dict[str, Any], root: type[BaseModel]) -> str:
    loc = err["loc"]
    section, info = _place(root, loc)
    path = _path(loc)
    if err["type"] == "value_error":
        message = str(err["ctx"]["error"])
        if section is not None:  # a section's own cross-field check names its fields
            return f"{path}.{message}" if path else message
        return f"{path}={err['input']!r}: {message}"
    return f"{path or 'config'}={err['input']!r}: {_fix(err, info)}"


def _fix(err: dict[str, Any], info: FieldInfo | None) -> str:
    kind, ctx = err["type"], err.get("ctx", {})
    if kind in _BOUND_ERRORS:
        declared = {k: getattr(m, k) for m in (info.metadata if info else ())
                    for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}
        return "must be " + _interval(declared or ctx)
    if kind == "literal_error":
        return f"must be {ctx['expected']}"
    if kind in _TYPE_FIXES:
        return _TYPE_FIXES[kind]
    return err["msg"][:1].lower() + err["msg"][1:]  # pydantic's own words for the rare rest


def _interval(bounds: dict[str, Any]) -> str:
    """``{gt: 0, lt: 1}`` → ``in (0, 1)``; ``{ge: 1}`` → ``≥ 1``."""
    low = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    high = (")", bounds["lt"]) if "lt" in bounds else ("]", bounds["le"]) if "le" in bounds else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{'>' if low[0] == '(' else '≥'} {low[1]}"
    return f"{'<' if high[0] == ')' else '≤'} {high[1]}"


def _unknown_line(root: type[BaseModel], loc: tuple, names: list[str]) -> str:
    section, _ = _place(root, loc)
    known = sorted(section.model_fields) if section else []
    close = [m for n in names for m in difflib.get_close_matches(n, known, 1)]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"{_path(loc) or 'config'}: unknown field(s) {sorted(names)}{hint}; known: {known}"


def _place(root: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The section at ``loc`` (None when ``loc`` ends on a plain field) and its last field."""
    section: type[BaseModel] | None = root
    info = None
    for part in loc:
        if section is None or part not in section.model_fields:
            return None, info
        info = section.model_fields[part]
        section = next((k for k in union_members(info.annotation) if is_section(k)), None)
    return section, info


def _path(loc: tuple) -> str:
    """``("stages", "smat", "lr")`` → ``stages.smat.lr``; list items and dict keys in brackets."""
    return "".join(f"[{p}]" if isinstance(p, int) else p if p.startswith("[") else f".{p}"
                   for p in loc).lstrip(".")


def union_members(annotation: Any) -> tuple:
    """The members of ``X | Y``, or ``(X,)``."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return typing.get_args(annotation) if union else (annotation,)


def is_section(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)
