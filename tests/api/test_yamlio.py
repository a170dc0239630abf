"""YAML both ways: what the local loader reads is what kubectl sends (go-yaml v2's scalar rules,
then JSON as the API server decodes it), and every string the dumper writes reads back as that
string. tests/cluster/test_api_server.py compares the loader with the real kubectl."""

from __future__ import annotations

import math

import pytest

from devops_model.yamlio import NotJson, YamlFloat, dump, load_all


@pytest.mark.parametrize("text,value", [
    ("5e-5", 5e-5), ("1e2", 100), ("100.0", 100), ("0.1e1", 1), (".5", 0.5), ("1.5e+3", 1500),
    ("1e999", "1e999"), ("1e-400", 0), ("._5", "._5"),
    ("yes", True), ("Yes", True), ("on", True), ("y", True), ("NO", False), ("off", False), ("n", False),
    ("true", True), ("False", False), ("~", None), ("null", None), ("", None),
    ("0755", 493), ("08", 8), ("0o17", 15), ("0b11", 3), ("-0b101", -5), ("0x1F", 31), ("1_000", 1000), ("1__0", 10),
    ("+5", 5), ("-0", 0), ("9223372036854775807", 9223372036854775807), ("9223372036854775808", 9.223372036854776e18),
    ("2026-01-01", "2026-01-01"), ("2026-01-01T10:00:00Z", "2026-01-01T10:00:00Z"), ("1:30", "1:30"),
    ("'5e-5'", "5e-5"), ('"yes"', "yes"), ("!!str 12", "12"), ("!thing 5", "5"),
])
def test_plain_scalars_read_as_kubectl_reads_them(text, value):
    got = load_all(f"v: {text}\n")[0]["v"]
    assert got == value and type(got) in ((float, YamlFloat) if isinstance(value, float) else (type(value),)), (got, value)


def test_keys_become_json_strings_like_kubectl():
    assert load_all("1: a\ny: b\nn: c\ntrue: d\n")[0] == {"1": "a", "true": "d", "false": "c"}


def test_duplicate_keys_keep_the_last_like_kubectl():
    assert load_all("a: 1\na: 2\n")[0] == {"a": 2}


def test_merge_keys_and_anchors():
    assert load_all("base: &b {x: 1}\nm:\n  <<: *b\n  z: 2\n")[0]["m"] == {"x": 1, "z": 2}


@pytest.mark.parametrize("text", ["v: .inf", "v: -.Inf", "v: .nan", "v: [1, .inf]"])
def test_values_without_a_json_form_are_refused_with_their_path(text):
    with pytest.raises(NotJson, match=r"^v"):
        load_all(text)


def test_unquoted_float_remembers_its_text_for_the_hint():
    v = load_all("lr: 5e-5\n")[0]["lr"]
    assert isinstance(v, YamlFloat) and v.text == "5e-5" and math.isclose(v, 5e-5)


@pytest.mark.parametrize("s", [
    "5e-5", "1e999", "yes", "no", "on", "y", "N", "0755", "08", "0x1F", "-0b101", "+0o17", "1_000", ".5", "-.inf",
    ".nan", "~", "null", "", "100", "1.0", "2026-01-01", "1:30", "true", "plain words", "a: b", "- x", "#c", "@x",
])
def test_dumped_strings_read_back_as_strings(s):
    assert load_all(dump({"v": s}))[0]["v"] == s
