"""Load and validate a resource (a dict or a YAML file) into its typed model.

Errors name the field path, the value and the fix, in the same words as the API server's
schema and CEL rules: ``spec.finetuning.lora: lora settings are only allowed with type: lora``.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from . import API_VERSION, KINDS
from .base import ApiModel, FieldError, decode_rule_message

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: Child names are "<run>-<suffix>" and must stay DNS labels; 52 leaves room for the suffix
#: without hashing in the common case (the builders still hash-cut longer names).
MAX_NAME_LENGTH = 63


class InvalidResource(ValueError):
    """A resource failed validation; ``errors`` lists every problem found."""

    def __init__(self, errors: list[FieldError], source: str = ""):
        self.errors = errors
        self.source = source
        where = f"{source}: " if source else ""
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{where}invalid resource ({len(errors)} problem{'s' if len(errors) != 1 else ''}):\n{lines}")


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    """All YAML documents of a file (``-`` reads standard input), skipping empty ones."""
    import sys

    text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidResource([FieldError("<yaml>", f"not valid YAML: {exc}")], str(path)) from None
    return docs


def parse_resource(obj: dict[str, Any], source: str = "") -> ApiModel:
    """Validate one resource dict and return the typed model (PretrainRun, SFTRun, ...)."""
    if not isinstance(obj, dict):
        raise InvalidResource([FieldError("<root>", "a resource must be a mapping with apiVersion, kind, metadata and spec")], source)
    errors: list[FieldError] = []
    kind = obj.get("kind")
    if kind not in KINDS:
        known = ", ".join(KINDS)
        hint = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        msg = f"unknown kind; expected one of {known}" + (f" (did you mean {hint[0]}?)" if hint else "")
        raise InvalidResource([FieldError("kind", msg, kind, True)], source)
    if obj.get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION}", obj.get("apiVersion"), True))
    meta = obj.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, dict) else None
    if not name:
        errors.append(FieldError("metadata.name", "is required"))
    elif not (_NAME_RE.match(name) and len(name) <= MAX_NAME_LENGTH):
        errors.append(FieldError(
            "metadata.name",
            f"must be a DNS label: lowercase letters, digits and '-', at most {MAX_NAME_LENGTH} characters",
            name, True,
        ))
    model = KINDS[kind].model
    try:
        parsed = model.model_validate({**obj, "apiVersion": API_VERSION})
    except ValidationError as exc:
        errors.extend(format_errors(exc, model))
        parsed = None
    if errors:
        raise InvalidResource(errors, source or f"{kind}/{name or '?'}")
    assert parsed is not None
    return parsed


def load_resources(path: str | Path) -> list[ApiModel]:
    """Parse and validate every resource in a YAML file."""
    return [parse_resource(d, f"{path}") for d in load_documents(path)]


def format_errors(exc: ValidationError, model: type[BaseModel]) -> list[FieldError]:
    out: list[FieldError] = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        msg = err["msg"]
        etype = err["type"]
        value = err.get("input")
        has_value = etype not in ("missing", "model_type") and not isinstance(value, (dict, list))
        if etype == "value_error":
            ctx_err = err.get("ctx", {}).get("error")
            decoded = decode_rule_message(str(ctx_err)) if ctx_err is not None else None
            if decoded:
                rel, text = decoded
                path = _join(loc) + rel
                out.append(FieldError(path or "<root>", text))
                continue
            msg = msg.removeprefix("Value error, ")
        elif etype == "missing":
            msg = "is required"
        elif etype == "extra_forbidden":
            msg = "unknown field" + _did_you_mean(model, loc)
            has_value = False
        elif etype == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            msg = f"unsupported value; supported values: {expected}"
        elif etype == "string_pattern_mismatch":
            msg = f"does not match the expected format {err['ctx']['pattern']}" + _pattern_hint(err["ctx"]["pattern"])
        else:
            msg = msg[0].lower() + msg[1:]
        out.append(FieldError(_join(loc) or "<root>", msg, value, has_value))
    return out


def _join(loc: Iterable[Any]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part).startswith(("function-", "literal[")):
            continue
        else:
            path += ("." if path else "") + str(part)
    return path


def _pattern_hint(pattern: str) -> str:
    from .common import DECIMAL_PATTERN, DURATION_PATTERN, URI_HELP, URI_PATTERN

    hints = {
        URI_PATTERN: f" (a URI: {URI_HELP})",
        DECIMAL_PATTERN: ' (a number written as a string, e.g. "5e-5" or "0.05")',
        DURATION_PATTERN: ' (a duration such as "30m" or "1h30m")',
    }
    return hints.get(pattern, "")


def _did_you_mean(model: type[BaseModel], loc: list[Any]) -> str:
    """Suggest the closest known field name for an unknown one."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        field = _find_field(current, str(part))
        current = _model_of(field.annotation) if field is not None else None
    if current is None:
        return ""
    names = [f.alias or n for n, f in current.model_fields.items()]
    hint = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return f"; did you mean {hint[0]}?" if hint else f"; known fields: {', '.join(names)}"


def _find_field(model: Any, name: str):
    for n, f in getattr(model, "model_fields", {}).items():
        if name in (n, f.alias):
            return f
    return None


def _model_of(annotation: Any):
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
