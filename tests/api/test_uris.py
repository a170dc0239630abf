"""URIs cannot escape: one grammar (the CRDs' pattern and devops_model.uris alike), and one
resolver that keeps pvc:// inside its claim and registry file names inside their folder."""

from __future__ import annotations

import json
import re

import pytest

from devops_model.uris import (
    CLUSTER_URI_PATTERN,
    LOCAL_URI_PATTERN,
    UriError,
    check_uri,
    local_path,
    parse_uri,
    resolve_within,
)

GOOD = [
    "hf://Qwen/Qwen2.5-7B", "hf://Qwen/Qwen2.5-7B@v1.0", "hf://Qwen/Qwen2.5-0.5B@refs/pr/1",
    "modelscope://codefuse-ai/CodeFuse-DevOps-Model-7B-Base", "pvc://models", "pvc://models/",
    "pvc://models/qwen/7b", "pvc://models/qwen/7b/", "pvc://data/.cache/x", "pvc://data/.../x",
    "pvc://data/..x", "pvc://data/运维问答.jsonl", "s3://bucket/models/qwen/", "s3://my.bucket-1/k",
    "file:///data/model", "file:///data/model/",
]
BAD = {
    "pvc://runs/../../escaped-out": "'..' segment",
    "pvc://runs/..": "'..' segment",
    "pvc://runs/./x": "'..' segment",
    "pvc://runs//x": "empty path segment",
    "pvc:///x": "without a claim",
    "pvc://Bad_Claim/x": "not a PersistentVolumeClaim name",
    "pvc://" + "c" * 64 + "/x": "not a PersistentVolumeClaim name",
    "pvc://runs/a b": "space",
    "pvc://runs/a\\b": "backslash",
    "pvc://runs/a\x00b": "control character",
    "file:///../..": "'..' segment",
    "file:///": "absolute path",
    "file://relative/path": "absolute path",
    "hf://Qwen": "ORG/NAME",
    "hf://Qwen/": "ORG/NAME",
    "hf://Qwen/a/b": "ORG/NAME",
    "hf://Qwen/..": "ORG/NAME",
    "hf://Qwen/x@../main": "ORG/NAME",
    "hf://Qwen/x@": "ORG/NAME",
    "modelscope://org": "ORG/NAME",
    "s3://Bucket/k": "not an S3 bucket name",
    "s3://b/k/../../x": "'..' segment",
    "http://example.com/m": "unsupported URI",
    "runs/x": "unsupported URI",
}


@pytest.mark.parametrize("uri", GOOD)
def test_good_uris_parse_and_match_the_schema_pattern(uri):
    parse_uri(uri)
    assert re.match(LOCAL_URI_PATTERN, uri)
    assert bool(re.match(CLUSTER_URI_PATTERN, uri)) == (not uri.startswith("file:"))


@pytest.mark.parametrize("uri,needle", sorted(BAD.items()), ids=lambda x: repr(x)[:40])
def test_bad_uris_are_refused_with_the_reason(uri, needle):
    with pytest.raises(UriError, match=re.escape(needle)):
        parse_uri(uri)
    assert not re.match(LOCAL_URI_PATTERN, uri), "the schema pattern must refuse what the parser refuses"


def test_file_uris_are_refused_for_the_cluster():
    with pytest.raises(UriError, match="only for runs on this machine"):
        check_uri("file:///etc/passwd", allow_file=False)


@pytest.mark.parametrize("uri", [u for u in GOOD if u.startswith("pvc://")])
def test_pvc_paths_stay_inside_their_claim(uri, monkeypatch, tmp_path):
    monkeypatch.setenv("DEVOPS_MODEL_STORAGE", str(tmp_path))
    p = local_path(uri)
    claim = tmp_path / parse_uri(uri).authority
    assert p == claim or claim in p.parents


@pytest.mark.parametrize("name,ok", [
    ("train.jsonl", True), ("sub/train.jsonl", True), ("a/../b.jsonl", True), (".", True),
    ("../x.jsonl", False), ("a/../../x", False), ("/etc/passwd", False), ("..", False), ("a\\..\\b", False),
])
def test_resolve_within_keeps_relative_names_inside(name, ok, tmp_path):
    if ok:
        p = resolve_within(tmp_path, name)
        assert p == tmp_path or tmp_path in p.parents
    else:
        with pytest.raises(UriError):
            resolve_within(tmp_path, name)


def test_registry_file_name_cannot_leave_the_registry(tmp_path, monkeypatch):
    """A dataset_info.json entry with file_name ../../x fails as bad data, before any read."""
    from devops_model.api.common import DataSpec
    from devops_workloads.runner import WorkloadError
    from devops_workloads.train.data import resolve_sources

    reg = tmp_path / "reg"
    reg.mkdir()
    (tmp_path / "outside.jsonl").write_text('{"text": "secret"}\n')
    (reg / "dataset_info.json").write_text(json.dumps({"evil": {"file_name": "../outside.jsonl"}}))
    spec = DataSpec.model_validate({"registry": f"file://{reg}", "datasets": [{"name": "evil"}]})
    with pytest.raises(WorkloadError, match="leaves") as info:
        resolve_sources(spec, "sft")
    assert info.value.reason == "BadData" and info.value.exit_code == 3
