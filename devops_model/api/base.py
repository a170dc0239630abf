"""Base class and cross-field rules shared by every typed resource.

Every spec and status type derives from :class:`ApiModel`: camelCase on the wire, snake_case in
Python, unknown fields refused (as the API server does with strict field validation), and no
type coercion the server would not do (strict mode: ``"100"`` is not an integer).

A cross-field rule is written once as a :class:`Rule`: the CEL expression goes into the CRD's
``x-kubernetes-validations`` (enforced by the API server on ``kubectl apply``) and the Python
predicate with the very same message runs locally (``devops-model run`` / ``render``), so a user
gets the same sentence before and after ``kubectl apply``. ``tests/api/test_api.py`` checks
that each rule's CEL and Python halves agree on the table of bad resources, and the control-plane
tests check the server side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Protocol

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Rule:
    """A cross-field validation rule with a CEL half (server) and a Python half (local).

    ``check`` receives the validated model instance and returns True when the object is valid.
    ``field`` names the offending field relative to the object carrying the rule (used both as
    the CEL rule's ``fieldPath`` and in the local message), e.g. ``".lora"``.
    ``transition`` marks rules that compare with ``oldSelf`` (only the server can evaluate
    those; locally there is no old object).
    """

    cel: str
    message: str
    check: Callable[[Any], bool] | None = None
    field: str = ""
    transition: bool = False
    reason: str = "FieldValueInvalid"
    #: A CEL expression for the server's message when it should name the value (e.g. the flag);
    #: ``explain`` is its Python half and receives the same value.
    message_expression: str = ""
    explain: Callable[[Any], str] | None = None

    def to_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.cel, "message": self.message}
        if self.message_expression:
            out["messageExpression"] = self.message_expression
        if self.field:
            out["fieldPath"] = self.field
        if self.reason != "FieldValueInvalid":
            out["reason"] = self.reason
        return out

    def describe(self, value: Any) -> str:
        """The local message for a failing value (the same words as the server's)."""
        return self.explain(value) if self.explain is not None else self.message


@dataclass(frozen=True)
class Checked:
    """Annotated metadata that attaches rules (:class:`Rule`) to one field (a scalar or a list item).

    ``Annotated[str, Field(...), Checked(Rule(...))]``: the CEL half goes into that field's own
    ``x-kubernetes-validations``, so the API server names the field itself (not its parent) even
    when evaluating the rule fails; the Python half runs after the field's own validation and
    receives the value. ``cel`` sees the value as ``self``.
    """

    rules: tuple[Rule, ...]

    def __init__(self, *rules: Rule):
        object.__setattr__(self, "rules", tuple(rules))

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        rules = self.rules

        def check(value: Any) -> Any:
            for rule in rules:
                if value is not None and rule.check is not None and not rule.check(value):
                    raise ValueError(_encode_rule(rule, rule.describe(value)))
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Any:
        out = handler(schema)
        target = handler.resolve_ref_schema(out)
        target.setdefault("x-kubernetes-validations", []).extend(r.to_schema() for r in self.rules)
        return out


class ApiModel(BaseModel):
    """Base of all typed API objects: camelCase aliases, no unknown fields, rules attached."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        # No coercion the API server would not do: "100" is not an integer, "true" not a boolean.
        strict=True,
        validate_default=False,
        use_attribute_docstrings=True,
    )

    #: Cross-field rules of this object (see :class:`Rule`).
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Any:
        for rule in type(self).rules:
            if rule.field == ".metadata.name":
                continue  # checked by parse_resource, which sees the name even when the spec is bad
            if rule.check is not None and not rule.transition and not rule.check(self):
                raise ValueError(_encode_rule(rule, rule.describe(self)))
        return self

    def to_dict(self) -> dict[str, Any]:
        """The object as it appears on the wire (camelCase, unset fields omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# Pydantic wraps ValueError messages; the rule's relative field path is encoded in front of the
# message so that the error formatter can place it ("spec.training" + ".lora").
_RULE_MARK = "\x00rule\x00"


def _encode_rule(rule: Rule, message: str | None = None) -> str:
    return f"{_RULE_MARK}{rule.field}{_RULE_MARK}{message if message is not None else rule.message}"


def decode_rule_message(msg: str) -> tuple[str, str] | None:
    """Return (relative field, message) when ``msg`` came from a :class:`Rule`."""
    if _RULE_MARK not in msg:
        return None
    _, rel, text = msg.split(_RULE_MARK, 2)
    return rel, text


@dataclass
class FieldError:
    """One validation problem: where (``spec.training.lora.rank``), what, and the value seen."""

    path: str
    message: str
    value: Any = field(default=None)
    has_value: bool = False

    def __str__(self) -> str:
        if self.has_value:
            return f"{self.path}: {self.message} (got {self.value!r})"
        return f"{self.path}: {self.message}"


class ObjectMeta(BaseModel):
    """The parts of Kubernetes' ObjectMeta the platform reads, typed. Every other field the API server
    sets (resourceVersion, managedFields, ownerReferences ...) is kept as it came (``extra="allow"``),
    so reading a resource and writing it back loses nothing. The name's rules are the CRDs' own
    (``root_rules``), checked by ``parse_resource``."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str = ""
    namespace: Optional[str] = None
    uid: Optional[str] = None
    generation: Optional[int] = None
    labels: Optional[dict[str, str]] = None
    annotations: Optional[dict[str, str]] = None
    creation_timestamp: Optional[str] = None


class Resource(Protocol):
    """What each of the five typed kinds has; the operator's builders and naming take this, so a
    misspelt metadata field is a type error (the spec stays per kind)."""

    @property
    def api_version(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def metadata(self) -> ObjectMeta: ...

    @property
    def spec(self) -> Any: ...

    @property
    def status(self) -> Any: ...

    def to_dict(self) -> dict[str, Any]: ...
