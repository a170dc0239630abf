"""YAML output that means the same to Go (YAML 1.2: kubectl, the API server, Helm) as to Python.

PyYAML writes the string ``"5e-5"`` unquoted because in YAML 1.1 a float needs a dot; Go's YAML
1.2 parser then reads a number, and a learning rate written as a string (as the API conventions
ask) arrives as a float. Every string that a YAML 1.2 or 1.1 parser could read as something else
(numbers, booleans, null, octal/hex) is quoted here.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import yaml

_AMBIGUOUS = re.compile(
    r"""^(?:
        [-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?   # numbers, 5e-5, 1_000
      | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
      | 0x[0-9a-fA-F_]+ | 0o[0-7_]+ | 0b[01_]+
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
