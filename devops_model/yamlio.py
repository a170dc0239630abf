"""YAML that means the same to Go (kubectl, the API server, Helm) as to Python, both ways.

Writing (:func:`dump`): PyYAML writes the string ``"5e-5"`` unquoted because in YAML 1.1 a float
needs a dot; Go's parser then reads a number, and a learning rate written as a string (as the API
conventions ask) arrives as a float. Every string that a YAML 1.2 or 1.1 parser could read as
something else (numbers, booleans, null, octal/hex) is quoted here.

Reading (:func:`load_all`): what kubectl sends to the API server for a file, scalar by scalar
(go-yaml v2's rules, then JSON), so that ``devops-model validate`` sees the values the server sees.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

import yaml

_AMBIGUOUS = re.compile(
    r"""^(?:
        [-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?   # numbers, 5e-5, 1_000
      | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
      | [-+]?0[xX][0-9a-fA-F_]+ | [-+]?0[oO][0-7_]+ | [-+]?0[bB][01_]+
      | (?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)
      | (?:~|null|Null|NULL)
      | [0-9]+(?::[0-5]?[0-9])+(?:\.[0-9_]*)?                                # sexagesimal
    )$""",
    re.X,
)


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML ships no types
    pass


def _str(dumper: Any, value: str) -> Any:
    if _AMBIGUOUS.match(value) or value == "":
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def dump(obj: Any) -> str:
    return str(yaml.dump(obj, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120))


def dump_all(objs: Iterable[Any]) -> str:
    return str(yaml.dump_all(list(objs), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120))


# ----------------------------------------------------------------------------- reading like kubectl
#
# kubectl reads YAML with sigs.k8s.io/yaml, i.e. go-yaml v2 (go.yaml.in/yaml/v2), turns it into
# JSON, and the API server decodes that JSON. The scalar rules below are go-yaml v2's resolve()
# (resolve.go), then the JSON round trip, so that a file means here exactly what it means to the
# API server. Notably: 5e-5 (no dot) is a number, not PyYAML's string; yes/no/on/off/y/n are
# booleans; 0755 is octal; 1_000 is 1000; an out-of-range float such as 1e999 stays the string
# "1e999"; timestamps stay strings; a float with an integral value (1e2, 100.0) reaches the
# server as the integer 100; .inf and .nan cannot be sent at all.

_PLAIN = "tag:devops-model.io,2026:plain"
_INT64 = 2**63

_RESOLVE_MAP: dict[str, Any] = {}
for _words, _value in (
    (("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    (("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
    (("", "~", "null", "Null", "NULL"), None),
    ((".nan", ".NaN", ".NAN"), float("nan")),
    ((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), float("inf")),
    (("-.inf", "-.Inf", "-.INF"), float("-inf")),
):
    for _w in _words:
        _RESOLVE_MAP[_w] = _value

_YAML_STYLE_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_DOT_FLOAT = re.compile(r"^\.[0-9]+([eE][-+]?[0-9]+)?$")
_TIMESTAMP = re.compile(r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([Tt ][0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\.[0-9]*)?(Z|[-+][0-9]{2}:[0-9]{2})?)?$")
_DIGITS = {16: "0123456789abcdefABCDEF", 10: "0123456789", 8: "01234567", 2: "01"}


class YamlFloat(float):
    """A float read from YAML that remembers how it was written (for the hint "write it as a
    string: \"5e-5\"")."""

    text: str

    def __new__(cls, value: float, text: str) -> "YamlFloat":
        obj = super().__new__(cls, value)
        obj.text = text
        return obj


def _go_parse_int(s: str, unsigned: bool = False) -> int | None:
    """Go's strconv.ParseInt(s, 0, 64) (or ParseUint): sign, 0x/0o/0b prefixes, leading-0 octal."""
    t, sign = s, 1
    if t[:1] in ("+", "-"):
        if unsigned:
            return None
        sign, t = (-1 if t[0] == "-" else 1), t[1:]
    base = 10
    if t[:2] in ("0x", "0X"):
        base, t = 16, t[2:]
    elif t[:2] in ("0o", "0O"):
        base, t = 8, t[2:]
    elif t[:2] in ("0b", "0B"):
        base, t = 2, t[2:]
    elif t[:1] == "0" and len(t) > 1:
        base, t = 8, t[1:]
    if not t or any(c not in _DIGITS[base] for c in t):
        return None
    v = sign * int(t, base)
    if unsigned:
        return v if v < 2**64 else None
    return v if -_INT64 <= v < _INT64 else None


def _looks_like_timestamp(s: str) -> bool:
    return len(s) > 4 and s[:4].isdigit() and s[4] == "-" and bool(_TIMESTAMP.match(s))


def go_resolve(text: str) -> Any:
    """The value go-yaml v2 gives a plain (unquoted, untagged) scalar."""
    if text in _RESOLVE_MAP:
        return _RESOLVE_MAP[text]
    first = text[:1]
    if first == ".":
        if _DOT_FLOAT.match(text):
            v = float(text)
            if math.isfinite(v):
                return YamlFloat(v, text)
        return text
    if first and (first.isdigit() or first in "+-"):
        if _looks_like_timestamp(text):
            return text
        plain = text.replace("_", "")
        iv = _go_parse_int(plain)
        if iv is not None:
            return iv
        uv = _go_parse_int(plain, unsigned=True)
        if uv is not None:
            return uv
        if _YAML_STYLE_FLOAT.match(plain):
            v = float(plain)
            if math.isfinite(v):  # Go's ParseFloat fails on overflow: the scalar stays a string
                return YamlFloat(v, text)
    return text


class _KubectlLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    """PyYAML's parser with go-yaml v2's scalar resolution (see :func:`go_resolve`)."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            if value == "<<":
                return "tag:yaml.org,2002:merge"
            return _PLAIN
        return super().resolve(kind, value, implicit)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        # Keys become JSON strings one by one (PyYAML's dict would merge 1 and true).
        self.flatten_mapping(node)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            out[_json_key(key, node)] = self.construct_object(value_node, deep=deep)
        return out


def _json_key(key: Any, node: Any) -> str:
    """sigs.k8s.io/yaml's conversion of a YAML map key to a JSON object key."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, str):
        return key
    if isinstance(key, int):
        return str(key)
    if isinstance(key, float):
        if math.isnan(key):
            return ".nan"
        if math.isinf(key):
            return ".inf" if key > 0 else "-.inf"
        return _go_g32(key)
    raise yaml.constructor.ConstructorError(None, None, f"unsupported map key {key!r}", node.start_mark)


def _go_g32(x: float) -> str:
    """strconv.FormatFloat(x, 'g', -1, 32): the shortest float32 repr, Go's 'g' layout."""
    import struct

    f32 = struct.unpack("f", struct.pack("f", x))[0]
    for digits in range(1, 10):
        s = f"{f32:.{digits}g}"
        if struct.unpack("f", struct.pack("f", float(s)))[0] == f32:
            break
    mant, _, exp = s.partition("e")
    if exp:
        sign, num = exp[0], exp[1:].lstrip("0")
        return f"{mant}e{sign}{num.zfill(2)}"
    return mant


def _construct_plain(loader: _KubectlLoader, node: yaml.ScalarNode) -> Any:
    return go_resolve(node.value)


def _construct_tagged_scalar(loader: _KubectlLoader, suffix: str, node: Any) -> Any:
    """Explicit tags go-yaml does not know (``!foo``) leave the text as a string."""
    if isinstance(node, yaml.ScalarNode):
        return node.value
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


def _construct_explicit(tag: str) -> Any:
    def construct(loader: _KubectlLoader, node: yaml.ScalarNode) -> Any:
        value = go_resolve(node.value)
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "null": value is None,
        }[tag]
        if not ok:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot decode {node.value!r} as a !!{tag}", node.start_mark)
        return float(value) if tag == "float" else value
    return construct


_KubectlLoader.add_constructor(_PLAIN, _construct_plain)
_KubectlLoader.add_constructor("tag:yaml.org,2002:str", lambda loader, node: loader.construct_scalar(node))
_KubectlLoader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: node.value)
for _tag in ("int", "float", "bool", "null"):
    _KubectlLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _construct_explicit(_tag))
_KubectlLoader.add_multi_constructor("", _construct_tagged_scalar)


class NotJson(ValueError):
    """A YAML value that has no JSON form (kubectl refuses the file): .inf, .nan, binary keys."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def to_json_value(value: Any, path: str = "") -> Any:
    """What the API server receives for ``value``: kubectl's JSON, decoded the way the server
    decodes it (integral numbers below 2**63 become integers, larger ones floats)."""
    if isinstance(value, dict):
        return {k: to_json_value(v, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json_value(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJson(path or "<root>", f"{value} cannot be sent to the API server (JSON has no "
                          "infinity or NaN); write a finite number, as a string where the field is one")
        if value == int(value) and -_INT64 <= value < _INT64:
            return int(value)
        return value
    return value


def load_all(text: str) -> list[Any]:
    """Every document of a YAML stream, read as kubectl and the API server read it (see above);
    empty documents are skipped, as kubectl does."""
    docs = []
    for doc in yaml.load_all(text, Loader=_KubectlLoader):
        if doc is None:
            continue
        docs.append(to_json_value(doc))
    return docs
