"""Room on the disk for an image build (tests/cluster/images.py make_room).

A clean-clone CI run failed with "no space left on device" half-way through copying the serve image's
venv: the node's containerd still held the replaced builds of both torch images (~20 GB), which only a
load removed, after the build. The build now frees older builds first, or stops with an error that
says how much it needs and what holds the disk.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import images  # noqa: E402  (tests/cluster/images.py)


def test_only_images_of_the_current_builds_and_their_cached_steps_are_needed():
    rows = [
        ("base", ["localhost/devops-model/debian:in-d1", "localhost/devops-model/debian:local"], ["L0"]),
        ("app-step1", [], ["L0", "A1"]),  # a cached step of the current build
        ("app", ["localhost/devops-model/serve:in-s2"], ["L0", "A1", "A2"]),
        ("old-app", ["localhost/devops-model/serve:in-s1"], ["L0", "B1", "B2"]),
        ("old-step", [], ["L0", "B1"]),  # only an older build used it
        ("deps-step", [], ["L0", "C1", "C2"]),  # a dependency stage: its result is not named
        ("env-only", [], ["L0"]),  # an ENV/LABEL step on the base: no layer of its own
    ]
    keep = {"localhost/devops-model/debian:in-d1", "localhost/devops-model/serve:in-s2"}
    assert images.unneeded_images(rows, keep) == ["old-app", "old-step", "deps-step"]
    assert images.unneeded_images(rows, set()) == [r[0] for r in rows]


def test_markers_of_older_builds_are_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("DEVOPS_MODEL_NODE_CACHE", str(tmp_path))
    d = tmp_path / "loaded"
    d.mkdir()
    for n in ("serve-aaaa", "serve-bbbb", "workload-cccc", "busybox-dddd", "notes.txt"):
        (d / n).write_text("x\n")
    assert images._marker_dir() == d
    stale = images.stale_markers({"serve": "bbbb", "workload": "cccc", "busybox": "dddd"})
    assert [p.name for p in stale] == ["serve-aaaa"]


def test_a_build_without_room_frees_old_builds_then_fails_naming_what_it_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("DEVOPS_MODEL_IMAGES_CACHE", str(tmp_path / "images"))
    free = {"gib": 3.0}
    calls: list[str] = []
    monkeypatch.setattr(images, "free_gib", lambda path=None: free["gib"])

    def prune_node(hashes, socket=None):
        calls.append("node")
        free["gib"] += 3
        return ["localhost/devops-model/serve:in-old"]

    def drop_stale(hashes):
        calls.append("stale")
        free["gib"] += 2
        return ["localhost/devops-model/serve:in-older"]

    def prune_build(hashes):
        calls.append("build")
        free["gib"] += 4
        return ["sha256:x"]

    monkeypatch.setattr(images, "prune_node_store", prune_node)
    monkeypatch.setattr(images, "drop_stale_builds", drop_stale)
    monkeypatch.setattr(images, "prune_build_store", prune_build)
    monkeypatch.setattr(images, "_usage", lambda paths: "7.0G /root/.cache/uv")
    with pytest.raises(images.ImageError) as e:
        images.make_room("serve", {"serve": "new"})
    msg = str(e.value)
    assert calls == ["node", "stale", "build"]
    assert f"~{images.BUILD_NEED_GIB['serve']} GiB" in msg and "12.0 GiB" in msg and "/root/.cache/uv" in msg

    # Enough once the node's older builds are gone: the build store's cache is left alone.
    calls.clear()
    free["gib"] = images.BUILD_NEED_GIB["serve"] - 2
    images.make_room("serve", {"serve": "new"})
    assert calls == ["node"]

    # Enough to begin with: nothing is removed.
    calls.clear()
    images.make_room("serve", {"serve": "new"})
    assert calls == []


def test_finished_builds_of_older_inputs_leave_the_buildah_store_with_their_runtime_stage(monkeypatch):
    listing = [
        {"id": "a", "names": ["localhost/devops-model/serve:in-old", "localhost/devops-model/serve:local"]},
        {"id": "b", "names": ["localhost/devops-model/serve:in-new"]},
        {"id": "c", "names": ["localhost/devops-model/workload:in-w0"]},
        {"id": "d", "names": ["localhost/devops-model/debian:in-d0", "localhost/devops-model/debian:local"]},
        {"id": "e", "names": ["localhost/devops-model/debian:in-older"]},  # a base: not a Dockerfile image
    ]

    class R:
        stdout = images.json.dumps(listing)

    monkeypatch.setattr(images, "buildah", lambda *a, check=True: R())
    dropped: list[tuple] = []
    monkeypatch.setattr(images, "drop_runtime_stage", lambda image, base, *tags: dropped.append((image, base, *tags)) or 1)
    out = images.drop_stale_builds({"debian": "d0", "serve": "new", "workload": "w1", "operator": "o"})
    assert out == ["localhost/devops-model/serve:in-old", "localhost/devops-model/workload:in-w0"]
    assert dropped == [
        ("localhost/devops-model/serve:in-old", "localhost/devops-model/debian:in-d0", "localhost/devops-model/serve:local"),
        ("localhost/devops-model/workload:in-w0", "localhost/devops-model/debian:in-d0"),
    ]
