#!/usr/bin/env python3
"""The project's container images, built here without a Docker engine, cached, loaded into the node.

    python3 tests/cluster/images.py build [NAME ...]   # build what is not cached (default: all)
    python3 tests/cluster/images.py load  [NAME ...]   # build if needed, load into the node (make images)
    python3 tests/cluster/images.py list               # names, input hashes, cached or not

Images (NAME):
    debian     the base: `debootstrap --variant=minbase trixie` from Debian's archive, plus python3,
               python3-venv and python-is-python3 (Debian 13's Python is 3.13, which the lock files
               resolve to exactly the same pins as 3.12: checked with `uv pip compile --python-version 3.13`)
    busybox    Debian's busybox-static on an empty root: the node's sandbox ("pause") image and the
               image of plain test pods; its command sleeps forever
    operator, workload, serve
               images/<NAME>.Dockerfile, built with `buildah bud --isolation chroot` on the debian base
               (the Dockerfiles' base-image and Python build arguments; every other line is the one a
               GPU cluster builds with docker and the CUDA default bases)

Every image is tagged localhost/devops-model/<NAME>:local (what charts/devops-model/ci/local-node-values.yaml
names) and localhost/devops-model/<NAME>:in-<hash>, where <hash> covers everything the image is made from:
the Dockerfile and its .dockerignore, the files it copies, the build arguments and the base's own hash.
The buildah store is the cache (~/.cache/devops-model/images/, outside the checkout); an image whose hash is
there is not rebuilt, and one that the node's containerd already has under that hash is not loaded again.
Python wheels come through uv's cache (~/.cache/uv, mounted into the build), so a rebuild downloads nothing
twice. Set DEVOPS_MODEL_IMAGES_STORAGE_DRIVER=vfs where overlay is not available.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
IMAGES_DIR = REPO / "images"
REGISTRY = "localhost/devops-model"
LOCAL_TAG = "local"
DEBIAN_SUITE = "trixie"
DEBIAN_MIRROR = os.environ.get("DEVOPS_MODEL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
# The Dockerfiles' build arguments for the CPU variant on the Debian base (their defaults are the CUDA images).
PYTHON = "python3.13"
# Recipe versions: bump to rebuild an image whose inputs did not change but whose recipe here did.
RECIPE = {"debian": "2", "busybox": "3", "operator": "1", "workload": "1", "serve": "1"}
ORDER = ("debian", "busybox", "operator", "workload", "serve")
DOCKERFILE_IMAGES = ("operator", "workload", "serve")


class ImageError(RuntimeError):
    pass


def cache_root() -> Path:
    root = os.environ.get("DEVOPS_MODEL_IMAGES_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "devops-model" / "images"


def uv_cache() -> Path:
    return Path(os.environ.get("UV_CACHE_DIR") or Path.home() / ".cache" / "uv")


def log(msg: str) -> None:
    print(f"[images] {msg}", flush=True)


def buildah(*args: str, check: bool = True, capture: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    driver = os.environ.get("DEVOPS_MODEL_IMAGES_STORAGE_DRIVER", "overlay")
    runroot = os.environ.get("DEVOPS_MODEL_IMAGES_RUNROOT", "/run/devops-model-buildah")
    cmd = ["buildah", "--root", str(cache_root() / "storage"), "--runroot", runroot,
           "--storage-driver", driver, *args]
    r = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout)
    if check and r.returncode != 0:
        err = (r.stderr or "").strip()[-4000:] if capture else "(see the output above)"
        raise ImageError(f"`buildah {' '.join(args[:3])} ...` failed (exit {r.returncode}):\n{err}")
    return r


def ref(name: str, tag: str = LOCAL_TAG) -> str:
    return f"{REGISTRY}/{name}:{tag}"


# --- input hashes ---------------------------------------------------------------------------------

def _dockerignore_patterns(name: str) -> list[str]:
    lines = (IMAGES_DIR / f"{name}.Dockerfile.dockerignore").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!p` re-includes; a directory pattern covers its files."""
    ignored = False
    for p in patterns:
        neg = p.startswith("!")
        pat = p[1:] if neg else p
        pat = pat.rstrip("/")
        hit = fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/") \
            or (pat.startswith("**/") and (fnmatch.fnmatch(rel, pat[3:]) or fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pat[3:])
                                           or any(fnmatch.fnmatch(part, pat[3:]) for part in rel.split("/"))))
        if hit:
            ignored = not neg
    return ignored


def context_files(name: str) -> list[Path]:
    """The files of the build context that the image's .dockerignore lets through (git-tracked or not,
    but never caches or virtualenvs)."""
    patterns = _dockerignore_patterns(name)
    out = []
    for root, dirs, files in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO)
        dirs[:] = sorted(d for d in dirs if d not in (".git", ".venv", ".cluster", "node_modules", "__pycache__")
                         and not d.endswith(".egg-info"))
        for f in sorted(files):
            rel = f if rel_root == "." else f"{rel_root}/{f}"
            if not _ignored(rel, patterns):
                out.append(REPO / rel)
    return out


def build_args(name: str, hashes: dict[str, str]) -> dict[str, str]:
    base = ref("debian", "in-" + hashes["debian"])
    if name == "operator":
        return {"PYTHON_IMAGE": base}
    return {"BASE_DEVEL_IMAGE": base, "BASE_RUNTIME_IMAGE": base, "PYTHON": PYTHON,
            # Wheels through the machine's uv cache (mounted at /uv-cache); the default is --no-cache.
            "UV_NO_CACHE": "0", "UV_CACHE_DIR": "/uv-cache", "UV_LINK_MODE": "copy",
            # DeepSpeed's ops prebuilt for this machine's CPU (the workload image; ignored by the others):
            # a training pod of the 2-core node would otherwise spend minutes compiling CPU Adam.
            **({"DS_ACCELERATOR": "cpu", "DS_PREBUILD_OPS": "1"} if name == "workload" else {})}


def input_hashes() -> dict[str, str]:
    hashes: dict[str, str] = {}
    h = hashlib.sha256(f"{RECIPE['debian']} {DEBIAN_SUITE} {DEBIAN_MIRROR} {' '.join(DEBIAN_PACKAGES)}".encode())
    hashes["debian"] = h.hexdigest()[:16]
    busybox = shutil.which("busybox") or "/bin/busybox"
    h = hashlib.sha256(RECIPE["busybox"].encode())
    if os.path.exists(busybox):
        h.update(Path(busybox).read_bytes())
    hashes["busybox"] = h.hexdigest()[:16]
    for name in DOCKERFILE_IMAGES:
        h = hashlib.sha256(RECIPE[name].encode())
        for f in (IMAGES_DIR / f"{name}.Dockerfile", IMAGES_DIR / f"{name}.Dockerfile.dockerignore"):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        for f in context_files(name):
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
        h.update(json.dumps(build_args(name, hashes), sort_keys=True).encode())
        hashes[name] = h.hexdigest()[:16]
    return hashes


def cached(name: str, digest: str) -> bool:
    return buildah("inspect", "--type", "image", ref(name, "in-" + digest), check=False).returncode == 0


def _loaded_marker(name: str, digest: str) -> Path:
    """Written when the node's containerd (its store outlives the node) got this image: `build` then has
    nothing to do for it even though its buildah copy was removed. load() still asks containerd."""
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    root = Path(os.environ.get("DEVOPS_MODEL_NODE_CACHE") or Path(xdg) / "devops-model" / "node")
    return root / "loaded" / f"{name}-{digest}"


@contextlib.contextmanager
def store_lock():
    """One image build at a time per buildah store: a second build waits (loading a cached image does not),
    and the holder removes the working containers that a killed build left behind (each can hold
    gigabytes of a half-built layer): no other build is running, so none of them is in use."""
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".lock", "w") as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another image build ({cache_root() / '.lock'})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        remove_stale_containers()
        yield


def remove_stale_containers() -> None:
    """Working containers of builds that did not finish (killed, out of disk). Only called under the lock."""
    stale = buildah("containers", "--quiet", check=False).stdout.split()
    if stale:
        log(f"removing {len(stale)} working container(s) a build left behind")
        buildah("rm", *stale, check=False)


def diff_ids(image: str) -> list[str]:
    """The image's layers, bottom first (uncompressed digests); [] when there is no such image."""
    r = buildah("inspect", "--type", "image", image, check=False)
    if r.returncode != 0:
        return []
    return list((json.loads(r.stdout).get("OCIv1") or {}).get("rootfs", {}).get("diff_ids") or [])


def drop_runtime_stage(image: str, base: str, *tags: str) -> int:
    """Removes an image that the node now holds from the buildah store together with the cached layers of
    its last (runtime) stage: the images whose layers are a prefix of the final image's, beyond the base.
    The other stages' cached layers stay (the dependency install, ~7 GB and the longest step), so a code
    change still rebuilds only the project wheel and the runtime stage. Without this the store kept the
    venv twice (build-stage cache and runtime copy) next to containerd's copy, and the second torch image
    did not fit on an 80 GB disk. Returns how many images were removed."""
    final, below = diff_ids(image), diff_ids(base)
    if not final or final[:len(below)] != below:
        return 0
    drop = []
    for image_id in buildah("images", "--all", "--noheading", "--no-trunc", "--format", "{{.ID}}", check=False).stdout.split():
        ids = diff_ids(image_id)
        if len(below) < len(ids) <= len(final) and final[:len(ids)] == ids:
            drop.append(image_id)
    buildah("rmi", image, *tags, check=False)
    if drop:
        buildah("rmi", "--force", *drop, check=False)
    return len(drop)


# --- builders -------------------------------------------------------------------------------------

def _commit(container: str, name: str, digest: str) -> None:
    # With its history: buildah's layer cache (--layers) matches a step only when the image's history
    # accounts for every layer, base included; with --omit-history no step was ever reused (measured).
    buildah("commit", "--rm", container, ref(name, "in-" + digest))
    buildah("tag", ref(name, "in-" + digest), ref(name))


def build_debian(digest: str) -> None:
    if not shutil.which("debootstrap"):
        raise ImageError("debootstrap is missing: apt-get install debootstrap (or `make node-deps`)")
    work = Path(tempfile.mkdtemp(prefix="debian-", dir=cache_root()))
    rootfs = work / "rootfs"
    try:
        log(f"debootstrap --variant=minbase {DEBIAN_SUITE} from {DEBIAN_MIRROR} (+ {', '.join(DEBIAN_PACKAGES)})")
        r = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
                            DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR], capture_output=True, text=True)
        if r.returncode != 0:
            raise ImageError(f"debootstrap failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
        # apt inside a chroot-isolated build cannot switch to its _apt sandbox user.
        (rootfs / "etc/apt/apt.conf.d/99devops-model").write_text('APT::Sandbox::User "root";\n')
        for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / d).glob("*"):
                if p.is_file():
                    p.unlink()
        for p in ("dev", "proc", "sys", "run"):
            (rootfs / p).mkdir(exist_ok=True)
        tarball = work / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        c = buildah("from", "scratch").stdout.strip()
        buildah("add", c, str(tarball), "/")
        buildah("config", "--cmd", "/bin/bash", "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--label", f"org.opencontainers.image.description=Debian {DEBIAN_SUITE} minbase (debootstrap)", c)
        _commit(c, "debian", digest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_busybox(digest: str) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        raise ImageError("busybox is missing: apt-get install busybox-static (or `make node-deps`)")
    r = subprocess.run(["file", "-L", busybox], capture_output=True, text=True)
    if r.returncode == 0 and "statically linked" not in r.stdout:
        raise ImageError(f"{busybox} is not statically linked: apt-get install busybox-static")
    work = Path(tempfile.mkdtemp(prefix="busybox-", dir=cache_root()))
    try:
        root = work / "root"
        (root / "bin").mkdir(parents=True)
        shutil.copy2(busybox, root / "bin" / "busybox")
        for applet in ("sh", "sleep", "seq", "cat", "echo", "ls", "wget", "nslookup", "nc", "env", "id", "hostname",
                       "true", "sed", "grep", "head", "tail", "test"):
            (root / "bin" / applet).symlink_to("busybox")
        (root / "tmp").mkdir()
        c = buildah("from", "scratch").stdout.strip()
        buildah("copy", c, str(root), "/")
        buildah("config", "--cmd", '["/bin/busybox", "sleep", "2147483647"]', "--user", "65534:65534",
                "--label", "org.opencontainers.image.description=busybox-static: sandbox (pause) and test image", c)
        _commit(c, "busybox", digest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bud_command(dockerfile: Path, ignorefile: Path | None, tags: list[str], args: dict[str, str], context: Path) -> list[str]:
    """`buildah bud` as the images are built. --layers: every step is cached, matched through the images'
    history (so no --omit-history: with it no step was ever reused), and a code change rebuilds the project
    stage and what follows it, not the dependency install."""
    cmd = ["bud", "--isolation", "chroot", "--layers", "-f", str(dockerfile)]
    if ignorefile is not None:
        cmd += ["--ignorefile", str(ignorefile)]
    for t in tags:
        cmd += ["-t", t]
    for k, v in args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    if "UV_CACHE_DIR" in args:
        uv_cache().mkdir(parents=True, exist_ok=True)
        cmd += ["-v", f"{uv_cache()}:{args['UV_CACHE_DIR']}"]
    # The machine's CA bundle (a TLS-inspecting proxy's CA, if any) for pip and uv during the build:
    # mounted read-only, so it is in no layer; not part of the input hash (the image does not change).
    ca = next((os.environ[v] for v in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE")
               if os.environ.get(v) and os.path.isfile(os.environ[v])), None)
    if ca:
        cmd += ["-v", f"{os.path.realpath(ca)}:/run/build-ca.crt:ro",
                "--build-arg", "SSL_CERT_FILE=/run/build-ca.crt", "--build-arg", "PIP_CERT=/run/build-ca.crt"]
    return cmd + [str(context)]


def build_dockerfile(name: str, digest: str, hashes: dict[str, str]) -> None:
    cmd = bud_command(IMAGES_DIR / f"{name}.Dockerfile", IMAGES_DIR / f"{name}.Dockerfile.dockerignore",
                      [ref(name, "in-" + digest), ref(name)], build_args(name, hashes), REPO)
    log(f"buildah {' '.join(cmd)}")
    buildah(*cmd, capture=False)


def build(names: list[str], socket: Path | None = None, hashes: dict[str, str] | None = None) -> dict[str, float]:
    """Builds what the buildah store lacks (socket: the node's containerd, when the caller has one open;
    hashes: the caller's, so that a file edited meanwhile cannot make it tag under another hash)."""
    cache_root().mkdir(parents=True, exist_ok=True)
    hashes = hashes or input_hashes()
    # A Dockerfile image needs the base first.
    wanted = [n for n in ORDER if n in names or (n == "debian" and set(names) & set(DOCKERFILE_IMAGES))]
    times = {}
    for name in wanted:
        digest = hashes[name]
        if cached(name, digest):
            buildah("tag", ref(name, "in-" + digest), ref(name))
            log(f"{name}: cached ({ref(name, 'in-' + digest)})")
            continue
        if _loaded_marker(name, digest).exists() and name in DOCKERFILE_IMAGES:
            log(f"{name}: cached in the node's containerd store ({ref(name, 'in-' + digest)})")
            continue
        with store_lock():
            if cached(name, digest):  # built by the process we waited for
                log(f"{name}: cached ({ref(name, 'in-' + digest)})")
                continue
            if name in DOCKERFILE_IMAGES:
                # The node's older builds go first, whatever the free space: the load after this build
                # would remove them anyway, and a torch build's peak is hard to bound from outside.
                removed = prune_node_store(hashes, socket)
                if removed:
                    log(f"removed {len(removed)} older build(s) from the node's containerd: {', '.join(removed)}")
            make_room(name, hashes, socket=socket)
            t = time.monotonic()
            log(f"{name}: building (inputs {digest})")
            if name == "debian":
                build_debian(digest)
            elif name == "busybox":
                build_busybox(digest)
            else:
                build_dockerfile(name, digest, hashes)
        times[name] = time.monotonic() - t
        size = buildah("images", "--format", "{{.Size}}", ref(name), check=False).stdout.strip().splitlines()
        log(f"{name}: built in {times[name]:.0f}s" + (f" ({size[0]})" if size else ""))
    return times


# --- loading into the node's containerd -----------------------------------------------------------

def _ctr(socket: Path, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    r = subprocess.run(["ctr", "--address", str(socket), "-n", "k8s.io", *args], capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise ImageError(f"`ctr {' '.join(args[:3])}` failed (exit {r.returncode}): {r.stderr.strip()}")
    return r


def loaded(socket: Path, name: str, digest: str) -> bool:
    out = _ctr(socket, "images", "ls", "-q", check=False).stdout.split()
    return ref(name, "in-" + digest) in out and ref(name) in out


def remove_stale_node_images(socket: Path, name: str, digest: str) -> list[str]:
    """Removes the node's older builds of an image (other ``in-<hash>`` tags) before a new one is imported:
    each torch image takes ~10 GB in containerd (compressed content and its unpacked snapshot), and every
    code change makes a new hash, so they would pile up until the disk is full. Nothing runs them any more: the
    chart and the tests name ``:local``, which is moved to the new build (and removed first when it names an
    older one, so that the old build's layers are free before the new ones land). containerd's garbage collector
    frees their content and snapshots (``--sync`` waits for it)."""
    current = ref(name, "in-" + digest)
    out = _ctr(socket, "images", "ls", "-q", check=False).stdout.split()
    stale = [r for r in out if r.startswith(f"{REGISTRY}/{name}:in-") and r != current]
    if current not in out and ref(name) in out:
        stale.append(ref(name))  # :local names an older build too; it is tagged again after the import
    if stale:
        _ctr(socket, "images", "rm", "--sync", *stale, check=False)
    # The kubelet's CRI also names every image it used by its config digest (`sha256:...`); such a name
    # keeps an old build's layers alive after its tags are gone. Those that no named image shares go too.
    rows = [line.split() for line in _ctr(socket, "images", "ls", check=False).stdout.splitlines()[1:]]
    named = {r[2] for r in rows if len(r) > 2 and not r[0].startswith("sha256:")}
    orphans = [r[0] for r in rows if len(r) > 2 and r[0].startswith("sha256:") and r[2] not in named]
    if orphans:
        _ctr(socket, "images", "rm", "--sync", *orphans, check=False)
    return stale + orphans


# --- disk -------------------------------------------------------------------------------------------

# Free disk (GiB) that building each image needs at its peak. Measured with df every 10 s on 2026-12-03: a
# rebuild of the workload image over its cached dependency layers (a code change) peaked 10 GB above where it
# started (the runtime stage's copy of the ~7 GB venv and its commit), its load 4 GB more before the runtime
# stage was dropped. A cold build also writes the dependency layer and its commit (~14 GB) and uv's
# downloads; it runs on a fresh machine's disk. A later rebuild still ran out of disk with about 26 GB free
# at its start (the commit writes the 7 GB layer while the working container still holds it), hence 32.
BUILD_NEED_GIB = {"debian": 2, "busybox": 1, "operator": 4, "workload": 32, "serve": 32}
# Loading: the zstd archive, then containerd's compressed copy and its unpacked snapshot.
LOAD_NEED_GIB = {"debian": 1, "busybox": 1, "operator": 2, "workload": 14, "serve": 14}


def free_gib(path: Path | None = None) -> float:
    path = path or cache_root()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 2**30


def _marker_dir() -> Path:
    return _loaded_marker("x", "y").parent


def stale_markers(hashes: dict[str, str]) -> list[Path]:
    """Markers of builds that the node's containerd got and that are no longer current: the node still
    holds those images (~10 GB each for the torch ones) until a load replaces them."""
    d = _marker_dir()
    if not d.is_dir():
        return []
    current = {f"{n}-{h}" for n, h in hashes.items()}
    return sorted(p for p in d.iterdir() if p.name not in current and p.name.rsplit("-", 1)[0] in ORDER)


@contextlib.contextmanager
def node_store(socket: Path | None = None, root: Path | None = None, timeout: float = 30):
    """A containerd socket on the node's image store: the node's own while it runs, else a private
    containerd started on the store for as long as the block lasts (no CRI, no network: it only edits
    images), so old builds can be removed while the node is down. Yields None when there is no store or
    it is in use by something else (a mount under it, or a containerd that does not answer)."""
    sys.path.insert(0, str(HERE))
    import node
    socket = socket or node.containerd_socket()
    root = root or node.containerd_root()
    if socket.exists() and _ctr(socket, "version", check=False, timeout=10).returncode == 0:
        yield socket
        return
    if not root.is_dir():
        yield None
        return
    if any(m.startswith(str(root)) for m in node._mounts()) or node._pids_with(str(root)):
        log(f"the node's image store {root} is in use (mounts or a process) but its containerd does not answer")
        yield None
        return
    run = Path(tempfile.mkdtemp(prefix="devops-model-images-containerd-", dir="/run"))
    sock = run / "containerd.sock"
    (run / "config.toml").write_text(f"""version = 2
root = "{root}"
state = "{run / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.opt",
                    "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{run / 'containerd.ttrpc.sock'}"
[debug]
  address = ""
[metrics]
  address = ""
""")
    with open(run / "containerd.log", "w") as out:
        proc = subprocess.Popen(["containerd", "--config", str(run / "config.toml")], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not (sock.exists() and _ctr(sock, "version", check=False, timeout=10).returncode == 0):
            if proc.poll() is not None or time.monotonic() > deadline:
                log(f"could not start a containerd on {root}: {(run / 'containerd.log').read_text()[-800:]}")
                sock = None
                break
            time.sleep(0.2)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(run, ignore_errors=True)


def prune_node_store(hashes: dict[str, str], socket: Path | None = None, root: Path | None = None) -> list[str]:
    """Removes the node's older builds (those stale_markers names) from its containerd, running or not."""
    stale = stale_markers(hashes)
    if not stale:
        return []
    removed: list[str] = []
    with node_store(socket, root) as socket:
        if socket is None:
            return []
        for name in sorted({p.name.rsplit("-", 1)[0] for p in stale}):
            removed += remove_stale_node_images(socket, name, hashes[name])
    for p in stale:
        p.unlink(missing_ok=True)
    return removed


def unneeded_images(rows: list[tuple[str, list[str], list[str]]], keep: set[str]) -> list[str]:
    """The buildah store's images that no current build uses: rows are (id, names, diff_ids). Kept: the
    images named in `keep` and every image whose layers are a prefix of a kept one's (its base and the
    cached steps below it). Everything else is a cached step of an older build, or of a stage whose
    result is not named (a dependency stage: rebuilt, from uv's cache, when it is needed again)."""
    kept = [ids for _, names, ids in rows if keep & set(names)]
    return [i for i, names, ids in rows
            if not keep & set(names) and not any(k[:len(ids)] == ids for k in kept)]


def prune_build_store(hashes: dict[str, str]) -> list[str]:
    keep = {ref(n, "in-" + h) for n, h in hashes.items()}
    rows = []
    for image in json.loads(buildah("images", "--all", "--json", check=False).stdout or "[]"):
        rows.append((image["id"], list(image.get("names") or []), diff_ids(image["id"])))
    drop = unneeded_images(rows, keep)
    if drop:
        buildah("rmi", "--force", *drop, check=False)
    return drop


def _usage(paths: list[Path]) -> str:
    out = []
    for p in paths:
        if p.exists():
            r = subprocess.run(["du", "-sxh", str(p)], capture_output=True, text=True, timeout=300)
            out.append((r.stdout.split() or ["?"])[0] + f" {p}")
    return "; ".join(out)


def drop_stale_builds(hashes: dict[str, str]) -> list[str]:
    """Removes the buildah store's finished builds of older inputs (``in-<hash>`` tags that are not current)
    with their runtime stage's cached layers, as drop_runtime_stage does after a load; the dependency
    stages' cached layers stay."""
    base = ref("debian", "in-" + hashes["debian"])
    current = {ref(n, "in-" + h) for n, h in hashes.items()}
    stale = {ref(n, "in-") for n in DOCKERFILE_IMAGES}
    dropped = []
    for image in json.loads(buildah("images", "--json", check=False).stdout or "[]"):
        names = list(image.get("names") or [])
        old = [n for n in names if any(n.startswith(p) for p in stale) and n not in current]
        if old and not current & set(names):
            drop_runtime_stage(old[0], base, *[n for n in names if n != old[0]])
            dropped += old
    return dropped


def make_room(name: str, hashes: dict[str, str], need: float | None = None, what: str = "building",
              socket: Path | None = None) -> None:
    """Before a build or a load: enough free disk for it. Frees, in this order and only while short of
    space: the node's replaced builds; the buildah store's finished builds of older inputs; then every
    cached step that no current image uses (the dependency stages too: the next build reinstalls from
    uv's cache). Still short: a clear error before anything is written. A CI run once died half-way
    through a layer with ~20 GB of replaced images in the node's store, which only a load removed."""
    need = need if need is not None else BUILD_NEED_GIB.get(name, 4)
    if free_gib() >= need:
        return
    log(f"{name}: {free_gib():.0f} GiB free, {what} it needs ~{need} GiB: removing older builds")
    removed = prune_node_store(hashes, socket)
    if removed:
        log(f"removed {len(removed)} older build(s) from the node's containerd: {', '.join(removed)}")
    if free_gib() < need:
        dropped = drop_stale_builds(hashes)
        if dropped:
            log(f"removed {len(dropped)} older build(s) from the buildah store: {', '.join(dropped)}")
    if free_gib() < need:
        pruned = prune_build_store(hashes)
        log(f"removed {len(pruned)} cached image layer(s) that no current build uses from the buildah store "
            "(a later build reinstalls the dependencies from uv's cache)")
    free = free_gib()
    if free < need:
        sys.path.insert(0, str(HERE))
        import node
        home = Path.home() / ".cache"
        raise ImageError(
            f"{what} {name} needs ~{need} GiB free on the disk of {cache_root()}, and only {free:.1f} GiB is "
            f"after removing older builds. Largest caches: "
            + _usage([cache_root() / "storage", node.containerd_root(), uv_cache(), home / "go-build",
                      Path(os.environ.get("GOMODCACHE") or Path.home() / "go" / "pkg" / "mod")])
            + ". Free some space (uv cache clean; go clean -cache; or remove the checkout's other clones) and run again.")
    log(f"{name}: {free:.0f} GiB free now")


def load(names: list[str], socket: Path | None = None) -> dict[str, float]:
    """Imports each image into the node's containerd under both its tags, building what neither the
    node nor the buildah store has. The node's store (~/.cache/devops-model/node/containerd) is the
    cache of the large images: once one is imported, its buildah image is removed with its runtime
    stage's cached layers (drop_runtime_stage); the other stages' cached layers (``--layers``) stay, so a
    code change does not reinstall the dependencies (docs/control-plane.md, "Disk is the limit here").
    The node need not run: a private containerd on its store imports them (node_store), so `make test`
    loads each image as soon as it is built, while Go compiles, and the buildah store never holds both
    torch images' runtime stages at once."""
    sys.path.insert(0, str(HERE))
    import node
    if socket is None:
        node.containerd_root().mkdir(parents=True, exist_ok=True)
    with node_store(socket) as sock:
        if sock is None:
            raise ImageError(f"no containerd answers on the node's image store {node.containerd_root()} "
                             "(see the messages above); `make cluster-down` stops a node that is half up")
        return _load(names, sock)


def _load(names: list[str], socket: Path) -> dict[str, float]:
    t0 = time.monotonic()
    hashes = input_hashes()
    todo = [n for n in ORDER if n in names and not loaded(socket, n, hashes[n])]
    for n in [n for n in ORDER if n in names and n not in todo]:
        log(f"{n}: already in the node's containerd ({ref(n, 'in-' + hashes[n])})")
    times: dict[str, float] = {}
    for name in todo:
        _loaded_marker(name, hashes[name]).unlink(missing_ok=True)  # containerd lacks it after all
        times.update(build([name], socket, hashes))
        digest = hashes[name]
        t = time.monotonic()
        stale = remove_stale_node_images(socket, name, digest)
        for p in stale_markers(hashes):
            if p.name.rsplit("-", 1)[0] == name:
                p.unlink(missing_ok=True)
        if stale:
            log(f"{name}: removed {len(stale)} older build(s) from the node's containerd: {', '.join(stale)}")
        make_room(name, hashes, LOAD_NEED_GIB.get(name, 2), "loading", socket)
        with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
            archive = Path(tmp) / f"{name}.tar"
            # zstd: fast, and about half the size of the raw layers in containerd's content store.
            buildah("push", "--compression-format", "zstd", "--compression-level", "1", ref(name, "in-" + digest),
                    f"oci-archive:{archive}:{ref(name, 'in-' + digest)}")
            _ctr(socket, "images", "import", "--base-name", f"{REGISTRY}/{name}", str(archive))
        _ctr(socket, "images", "tag", "--force", ref(name, "in-" + digest), ref(name))
        marker = _loaded_marker(name, digest)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{ref(name, 'in-' + digest)}\n")
        if name in DOCKERFILE_IMAGES:
            dropped = drop_runtime_stage(ref(name, "in-" + digest), ref("debian", "in-" + hashes["debian"]), ref(name))
            log(f"{name}: removed from the buildah store with its runtime stage's {dropped} cached layer image(s)")
        times[f"{name} (load)"] = time.monotonic() - t
        log(f"{name}: loaded into the node in {times[f'{name} (load)']:.0f}s")
    log(f"images ready in the node in {time.monotonic() - t0:.0f}s: " + ", ".join(ref(n) for n in names))
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["build", "load", "list"])
    ap.add_argument("names", nargs="*", help=f"images (default: busybox operator workload serve); any of {', '.join(ORDER)}")
    a = ap.parse_args(argv)
    names = a.names or ["busybox", *DOCKERFILE_IMAGES]
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        print(f"[images] ERROR: unknown image {', '.join(unknown)}; the images are {', '.join(ORDER)}", file=sys.stderr)
        return 2
    try:
        if a.command == "list":
            for n, d in input_hashes().items():
                print(f"{ref(n, 'in-' + d):70s} {'cached' if cached(n, d) else 'not built'}")
        elif a.command == "build":
            t = time.monotonic()
            build(names)
            log(f"done in {time.monotonic() - t:.0f}s")
        else:
            load(names)
    except ImageError as e:
        print(f"[images] ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
