"""The image builds' layer cache (tests/cluster/images.py), on a real buildah store with a tiny base.

A torch image's dependency install takes ~20 minutes here; a code change must not repeat it. Two things
broke that before: the base committed with --omit-history (buildah matches a cached step through the
image's history, so no step was ever reused), and the disk: after an image is loaded into the node, its
runtime stage's cached layers are dropped while the other stages' stay. Both are checked here with a
three-stage Dockerfile shaped like images/*.Dockerfile (dependencies, project, runtime).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import images  # noqa: E402  (tests/cluster/images.py)

pytestmark = [pytest.mark.node, pytest.mark.timeout(300)]


def _prerequisites() -> None:
    if os.geteuid() != 0:
        pytest.fail("the image builds need root (buildah with chroot isolation)")
    for tool in ("buildah", "busybox"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: make node-deps")


def _read(image: str, path: str) -> str:
    c = images.buildah("from", image).stdout.strip()
    try:
        return images.buildah("run", "--isolation", "chroot", c, "--", "/bin/cat", path).stdout
    finally:
        images.buildah("rm", c, check=False)


def test_a_code_change_after_the_runtime_stage_was_dropped_reuses_the_dependency_step(tmp_path, monkeypatch):
    _prerequisites()
    monkeypatch.setenv("DEVOPS_MODEL_IMAGES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEVOPS_MODEL_IMAGES_RUNROOT", str(tmp_path / "run"))  # a store of its own
    images.cache_root().mkdir(parents=True)
    try:
        images.build_busybox("t0")  # committed like the Debian base (images._commit)
        base = images.ref("busybox", "in-t0")
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "code.txt").write_text("v1\n")
        dockerfile = ctx / "Dockerfile"
        dockerfile.write_text(
            f"FROM {base} AS build\n"
            "USER 0:0\n"  # the busybox image runs as nobody
            "RUN echo deps $(date +%s%N) > /deps\n"  # a new value each time the step really runs
            "FROM build AS project\n"
            "COPY code.txt /code\n"
            f"FROM {base}\n"
            "USER 0:0\n"
            "COPY --from=build /deps /deps\n"
            "COPY --from=project /code /code\n"
            "RUN cat /deps /code > /both\n")

        def bud(tag: str) -> str:
            images.buildah(*images.bud_command(dockerfile, None, [tag], {}, ctx))
            return images.buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", tag).stdout.strip()

        first = bud("localhost/t/app:1")
        assert first.startswith("sha256:") or len(first) == 64, first
        deps = _read("localhost/t/app:1", "/deps")
        assert deps.startswith("deps ")
        # An unchanged rebuild reuses every step: the very same image.
        assert bud("localhost/t/app:1") == first, "an unchanged rebuild must come from the cache"

        final = images.diff_ids("localhost/t/app:1")
        dropped = images.drop_runtime_stage("localhost/t/app:1", base)
        assert dropped >= 1
        assert images.diff_ids("localhost/t/app:1") == []
        below = images.diff_ids(base)
        left = [images.diff_ids(i) for i in images.buildah("images", "--all", "-q", "--no-trunc").stdout.split()]
        assert not [ids for ids in left if len(below) < len(ids) <= len(final) and final[:len(ids)] == ids], \
            "the runtime stage's cached layers must be gone"
        assert any(len(ids) > len(below) and ids[:len(below)] == below for ids in left), \
            "the dependency stage's cached layer must stay"

        # A code change: the dependency step comes from the cache (same /deps), the rest is rebuilt.
        (ctx / "code.txt").write_text("v2\n")
        assert bud("localhost/t/app:2") != first
        assert _read("localhost/t/app:2", "/deps") == deps, "the dependency step ran again"
        assert _read("localhost/t/app:2", "/both") == deps + "v2\n"
    finally:
        images.buildah("rmi", "--all", "--force", check=False)


def test_loading_a_new_build_removes_the_older_builds_and_the_cri_names_that_kept_them(monkeypatch):
    """The CRI's `sha256:<config>` names kept ~20 GB of replaced builds alive until the disk was full."""
    listing = [
        "REF TYPE DIGEST SIZE PLATFORMS LABELS",
        "localhost/devops-model/serve:in-old application/vnd.oci.image.manifest.v1+json sha256:m-old 3.0 GiB linux/amd64 -",
        "localhost/devops-model/serve:local application/vnd.oci.image.manifest.v1+json sha256:m-old 3.0 GiB linux/amd64 -",
        "localhost/devops-model/busybox:local application/vnd.oci.image.manifest.v1+json sha256:m-bb 1.1 MiB linux/amd64 -",
        "sha256:c-old application/vnd.oci.image.manifest.v1+json sha256:m-old 3.0 GiB linux/amd64 -",
        "sha256:c-bb application/vnd.oci.image.manifest.v1+json sha256:m-bb 1.1 MiB linux/amd64 -",
    ]
    removed: list[str] = []

    class R:
        def __init__(self, out):
            self.stdout = out

    def ctr(socket, *args, check=True, timeout=0):
        rows = [l for l in listing[1:] if l.split()[0] not in removed]
        if args[:2] == ("images", "ls"):
            return R("\n".join(l.split()[0] for l in rows) if "-q" in args else "\n".join([listing[0], *rows]))
        if args[:2] == ("images", "rm"):
            removed.extend(a for a in args[2:] if a != "--sync")
            return R("")
        raise AssertionError(args)

    monkeypatch.setattr(images, "_ctr", ctr)
    gone = images.remove_stale_node_images(images.Path("/run/containerd.sock"), "serve", "new")
    assert sorted(gone) == sorted(removed) == sorted(
        ["localhost/devops-model/serve:in-old", "localhost/devops-model/serve:local", "sha256:c-old"])


def test_older_builds_leave_the_node_store_while_the_node_is_down(tmp_path, monkeypatch):
    """make_room frees the node's replaced builds before a build, when only a load did so before: the
    node is down then (CI builds the images while Go compiles), so a private containerd edits its store."""
    _prerequisites()
    for tool in ("containerd", "ctr"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: make node-deps")
    import node  # tests/cluster/node.py

    monkeypatch.setenv("DEVOPS_MODEL_IMAGES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEVOPS_MODEL_IMAGES_RUNROOT", str(tmp_path / "run"))
    monkeypatch.setenv("DEVOPS_MODEL_NODE_CACHE", str(tmp_path / "node"))
    images.cache_root().mkdir(parents=True)
    down = tmp_path / "no-node.sock"  # the node's socket: absent, the node is down
    root = node.containerd_root()
    try:
        images.build_busybox("t0")
        c = images.buildah("from", images.ref("busybox", "in-t0")).stdout.strip()
        (tmp_path / "big").write_bytes(os.urandom(1 << 20))
        images.buildah("copy", c, str(tmp_path / "big"), "/big")
        images.buildah("commit", "--rm", c, images.ref("serve", "in-old"))

        def layers(sock) -> set[str]:
            return set(images._ctr(sock, "content", "ls", "-q").stdout.split())

        with images.node_store(down, root) as sock:  # no store: nothing to start on
            assert sock is None
        root.mkdir(parents=True)
        # Seed the store as load() does, through a private containerd on it.
        with images.node_store(down, root) as sock:
            assert sock is not None and sock != down
            for image in (images.ref("busybox", "in-t0"), images.ref("serve", "in-old")):
                archive = tmp_path / "a.tar"
                images.buildah("push", image, f"oci-archive:{archive}:{image}")
                images._ctr(sock, "images", "import", str(archive))
                archive.unlink()
            images._ctr(sock, "images", "tag", "--force", images.ref("serve", "in-old"), images.ref("serve"))
            before = layers(sock)
        marks = images._marker_dir()
        marks.mkdir(parents=True)
        for m in ("busybox-t0", "serve-old"):
            (marks / m).write_text("x\n")

        removed = images.prune_node_store({"busybox": "t0", "serve": "new"}, down, root)
        assert sorted(removed) == sorted([images.ref("serve"), images.ref("serve", "in-old")])
        assert sorted(p.name for p in marks.iterdir()) == ["busybox-t0"]
        assert not node._pids_with(str(root)), "the private containerd must be gone"
        assert not [m for m in node._mounts() if m.startswith(str(root))]
        with images.node_store(down, root) as sock:
            names = images._ctr(sock, "images", "ls", "-q").stdout.split()
            assert names == [images.ref("busybox", "in-t0")]
            assert len(layers(sock)) < len(before), "the old build's content must be garbage-collected"
    finally:
        images.buildah("rmi", "--all", "--force", check=False)
