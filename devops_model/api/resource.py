"""Load and validate a resource (a dict or a YAML file) into its typed model.

Errors name the field path, the value and the fix, in the same words as the API server's
schema and CEL rules: ``spec.finetuning.lora: lora settings are only allowed with type: lora``.

One answer before and after ``kubectl apply``: files are read as kubectl reads them
(:func:`devops_model.yamlio.load_all`), values are validated strictly (no coercion the server would
not do), and the rules on metadata.name are the CRDs' own. ``cluster=True`` is the API server's
view (``devops-model validate``): ``file://`` URIs are refused there, since they only mean
something to ``devops-model run`` on this machine.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from ..yamlio import NotJson, load_all
from . import API_VERSION, KINDS
from .base import ApiModel, FieldError, ObjectMeta, decode_rule_message
from .common import MAX_NAME_LENGTH  # noqa: F401  (re-exported: the longest name per kind)


class InvalidResource(ValueError):
    """A resource failed validation; ``errors`` lists every problem found."""

    def __init__(self, errors: list[FieldError], source: str = ""):
        self.errors = errors
        self.source = source
        where = f"{source}: " if source else ""
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{where}invalid resource ({len(errors)} problem{'s' if len(errors) != 1 else ''}):\n{lines}")


class UnreadableFile(InvalidResource):
    """A resource file that cannot be read (missing, a folder, not permitted): one line, ``PATH: problem``,
    so that the CLI prints ``error: nope.yaml: no such file`` and exits as for any bad input."""

    def __init__(self, path: str, problem: str):
        ValueError.__init__(self, f"{path}: {problem}")
        self.errors = [FieldError("<file>", problem)]
        self.source = path


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    """All YAML documents of a file (``-`` reads standard input), skipping empty ones."""
    import sys

    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidResource([FieldError("<file>", f"not UTF-8 text (byte {exc.start}); save it as UTF-8")], str(path)) from None
    except FileNotFoundError:
        raise UnreadableFile(str(path), "no such file") from None
    except IsADirectoryError:
        raise UnreadableFile(str(path), "is a directory, not a YAML file") from None
    except PermissionError:
        raise UnreadableFile(str(path), "permission denied") from None
    except OSError as exc:
        raise UnreadableFile(str(path), exc.strerror or str(exc)) from None
    return parse_documents(text, str(path))


def parse_documents(text: str, source: str = "") -> list[Any]:
    """The documents of a YAML text as the API server would receive them from kubectl."""
    try:
        return load_all(text)
    except NotJson as exc:
        raise InvalidResource([FieldError(exc.path, exc.message)], source) from None
    except yaml.YAMLError as exc:
        raise InvalidResource([FieldError("<yaml>", f"not valid YAML: {exc}")], source) from None


def parse_resource(obj: dict[str, Any], source: str = "", *, cluster: bool = False) -> ApiModel:
    """Validate one resource dict and return the typed model (PretrainRun, SFTRun, ...).
    ``cluster=True`` checks it as the API server would (file:// refused)."""
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
    model = KINDS[kind].model
    if not name:
        errors.append(FieldError("metadata.name", "is required"))
    elif not isinstance(name, str):
        errors.append(FieldError("metadata.name", "must be a string", name, True))
    else:
        # The CRD's rules on metadata.name (root_rules), evaluated here even when the spec is
        # invalid too, as the server reports both.
        shim = _NameOnly(name)
        for rule in model.rules:
            if rule.field == ".metadata.name" and rule.check is not None and not rule.check(shim):
                errors.append(FieldError("metadata.name", rule.message, name, True))
    try:
        parsed = model.model_validate({**obj, "apiVersion": API_VERSION}, context={"cluster": cluster})
    except ValidationError as exc:
        errors.extend(format_errors(exc, model))
        parsed = None
    if errors:
        raise InvalidResource(errors, source or f"{kind}/{name or '?'}")
    assert parsed is not None
    return parsed


class _NameOnly:
    def __init__(self, name: str):
        self.metadata = ObjectMeta(name=name)


def load_resources(path: str | Path, *, cluster: bool = False) -> list[ApiModel]:
    """Parse and validate every resource in a YAML file."""
    return [parse_resource(d, f"{path}", cluster=cluster) for d in load_documents(path)]


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
                if rel == ".metadata.name":
                    continue  # reported by parse_resource, with the name
                path = (_join(loc) + rel).lstrip(".")
                out.append(FieldError(path or "<root>", text))
                continue
            msg = msg.removeprefix("Value error, ")
            if isinstance(value, str) and repr(value) in msg:
                has_value = False  # the message already quotes it
        elif etype == "missing":
            msg = "is required"
        elif etype == "extra_forbidden":
            msg = "unknown field" + _did_you_mean(model, loc)
            has_value = False
        elif etype == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            msg = f"unsupported value; supported values: {expected}"
        elif etype == "string_pattern_mismatch":
            hint = _pattern_hint(err["ctx"]["pattern"])
            # A known format is named in words; the server's message shows the expression itself.
            msg = f"must be {hint[2:-1]}" if hint else f"does not match the expected format {err['ctx']['pattern']}"
        elif etype == "string_type" and isinstance(value, (int, float)) and not isinstance(value, bool):
            # An unquoted number where the API wants a string (learning rates, fractions).
            written = getattr(value, "text", None) or _go_number(value)
            msg = f'must be a string, not a number; write it as a string: "{written}"'
        elif etype == "string_type" and isinstance(value, bool):
            msg = "must be a string, not a boolean (yes/no/on/off/true/false are booleans in YAML); quote it"
        elif etype in ("int_type", "bool_type") and isinstance(value, str):
            kind_of = "an integer" if etype == "int_type" else "a boolean"
            msg = f"must be {kind_of}, not a string; write it without quotes: {value}"
        elif etype == "int_type" and isinstance(value, float):
            msg = "must be an integer"
        else:
            msg = msg[0].lower() + msg[1:]
        out.append(FieldError(_join(loc) or "<root>", msg, value, has_value))
    return out


def _go_number(value: float | int) -> str:
    """How Go prints a number (what kubectl would send): 5e-05, 0.5, 100."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


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
    from .common import (
        DECIMAL_PATTERN,
        DURATION_PATTERN,
        LABEL_VALUE_PATTERN,
        QUANTITY_PATTERN,
        RUN_NAME_PATTERN,
        URI_PATTERN,
        VAL_SIZE_PATTERN,
    )
    from ..uris import URI_HELP

    hints = {
        URI_PATTERN: f" (a URI: {URI_HELP})",
        DECIMAL_PATTERN: ' (a number written as a string, e.g. "5e-5" or "0.05"; exponents have at most 2 digits)',
        DURATION_PATTERN: ' (a duration such as "30m" or "1h30m")',
        QUANTITY_PATTERN: ' (a Kubernetes quantity such as "8", "500m", "64Gi" or "1e3")',
        LABEL_VALUE_PATTERN: " (a label value: at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends)",
        RUN_NAME_PATTERN: " (a run name: starts with a lowercase letter; lowercase letters, digits and '-')",
        VAL_SIZE_PATTERN: ' (a fraction below 1 such as "0.01", or a whole row count such as "200")',
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


def _find_field(model: Any, name: str) -> Any:
    for n, f in getattr(model, "model_fields", {}).items():
        if name in (n, f.alias):
            return f
    return None


def _model_of(annotation: Any) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
