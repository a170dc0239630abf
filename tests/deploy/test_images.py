"""Static checks of the container images (images/*.Dockerfile); no Docker engine runs here.

    .venv/bin/python -m pytest tests/deploy/test_images.py -q

Each Dockerfile is parsed into instructions (continuation lines joined) and checked:
- every base image is pinned by an exact version tag or a digest (no `latest`, no bare major);
- the final stage runs as a numeric non-root USER that matches the UID the chart / operator config
  gives its pods (operator.runAsUser, workloads.runAsUser), and is compatible with a read-only root
  file system (no bytecode written at run time, HOME in /tmp);
- no secrets: no credential-looking ENV/ARG, no copied credential files, no `curl | sh`;
- Python packages come from images/requirements/<image>.txt, whose pins lie in pyproject.toml's ranges
  and equal constraints.txt's versions (images/requirements.py --check), the project itself is installed with --no-deps, the operator's
  has no torch, and the CUDA base matches the CUDA major of torch's wheels.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO / "images"

def _load_image_requirements():
    """images/requirements.py under a name that cannot clash with an installed `requirements` package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("devops_model_image_requirements", IMAGES_DIR / "requirements.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


image_requirements = _load_image_requirements()

DOCKERFILES = {p.name.split(".")[0]: p for p in sorted(IMAGES_DIR.glob("*.Dockerfile"))}
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}
# The UID each image must run as: what the pods' securityContext says (the chart, the operator config).
CHART_VALUES = yaml.safe_load((REPO / "charts" / "devops-model" / "values.yaml").read_text())
EXPECTED_UID = {
    "operator": CHART_VALUES["operator"]["runAsUser"],
    "workload": CHART_VALUES["operator"]["config"]["workloads"]["runAsUser"],
    "serve": CHART_VALUES["operator"]["config"]["workloads"]["runAsUser"],
}


def parse(text: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with `\\` continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued RUN
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        if word.upper() not in INSTRUCTIONS:
            raise AssertionError(f"unknown instruction {word!r} in {buf!r}")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, f"dangling continuation: {buf!r}"
    return out


def stages(instrs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instrs:
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def args_defaults(instrs: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for word, rest in instrs:
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def base_images(instrs: list[tuple[str, str]]) -> list[str]:
    """The images FROM names, with ARG defaults substituted and stage aliases left out."""
    defaults = args_defaults(instrs)
    aliases = set()
    out = []
    for word, rest in instrs:
        if word != "FROM":
            continue
        parts = [p for p in rest.split() if not p.startswith("--")]
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m.group(1) or m.group(2), m.group(0)), parts[0])
        if image not in aliases:
            out.append(image)
        if len(parts) >= 3 and parts[1].upper() == "AS":
            aliases.add(parts[2])
    return out


def is_pinned(image: str) -> bool:
    if re.search(r"@sha256:[a-f0-9]{64}$", image):
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag or tag in ("latest", "") or "$" in image:
        return False
    # An exact version: at least major.minor.patch (3.12 alone moves; 3.12.12 does not).
    return re.match(r"^v?\d+\.\d+\.\d+", tag) is not None


@pytest.fixture(params=sorted(DOCKERFILES), scope="module")
def image(request):
    name = request.param
    return name, parse(DOCKERFILES[name].read_text())


def test_every_image_has_a_dockerfile():
    assert set(DOCKERFILES) == {"operator", "workload", "serve"} == set(image_requirements.IMAGES)


def test_bases_are_pinned(image):
    name, instrs = image
    bases = base_images(instrs)
    assert bases, f"{name}: no FROM"
    for b in bases:
        assert is_pinned(b), f"{name}: base image {b!r} is not pinned to an exact version or digest"


def test_pin_checker():
    assert is_pinned("python:3.12.12-slim-bookworm") and is_pinned("nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04")
    assert is_pinned("python@sha256:" + "a" * 64)
    for bad in ("python", "python:latest", "python:3.12", "python:3-slim", "nvidia/cuda:${TAG}"):
        assert not is_pinned(bad), bad


def test_runs_as_the_non_root_uid_the_pods_expect(image):
    name, instrs = image
    final = stages(instrs)[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, f"{name}: the final stage sets no USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and uid != "0", f"{name}: USER must be a numeric non-root UID (runAsNonRoot checks numbers), got {users[-1]!r}"
    assert gid == "" or (gid.isdigit() and gid != "0")
    assert int(uid) == EXPECTED_UID[name], f"{name}: USER {uid} but the pods run as {EXPECTED_UID[name]}"
    # Nothing after USER switches back to root.
    after = final[[i for i, (w, _) in enumerate(final) if w == "USER"][-1] + 1:]
    assert not any(w == "USER" for w, _ in after)


def test_read_only_root_filesystem_compatible(image):
    name, instrs = image
    env = " ".join(rest for word, rest in stages(instrs)[-1] if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env, f"{name}: Python would write .pyc files next to the code"
    assert "HOME=/tmp" in env, f"{name}: HOME must be on the writable /tmp volume"
    assert any(w == "RUN" and "compileall" in r for w, r in instrs), f"{name}: precompile bytecode at build time"


SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|CREDENTIAL|PRIVATE_KEY)", re.I)
SECRET_FILES = re.compile(r"(\.netrc|\.npmrc|\.pypirc|id_rsa|id_ed25519|\.env\b|credentials|\.aws|\.kube|kubeconfig|\.pem\b|\.key\b)", re.I)


def secret_problems(instrs: list[tuple[str, str]]) -> list[str]:
    out = []
    for word, rest in instrs:
        if word in ("ENV", "ARG"):
            for token in shlex.split(rest):
                key = token.split("=", 1)[0]
                if SECRET_NAME.search(key):
                    out.append(f"{word} {key}: credentials must come from a Secret at run time, not the image")
        if word in ("COPY", "ADD") and SECRET_FILES.search(rest):
            out.append(f"{word} {rest}: copies a credential file into the image")
        if word == "RUN" and re.search(r"(curl|wget)[^|]*\|\s*(ba)?sh", rest):
            out.append(f"RUN pipes a download into a shell: {rest[:80]}")
        if word == "ADD" and re.match(r"https?://", rest):
            out.append(f"ADD of a URL is unpinned: {rest}")
    return out


def test_no_secrets(image):
    name, instrs = image
    assert secret_problems(instrs) == []
    ignore = (DOCKERFILES[name].parent / f"{DOCKERFILES[name].name}.dockerignore")
    assert ignore.exists() and ignore.read_text().splitlines()[2] == "*", \
        f"{name}: {ignore.name} must exclude everything by default"


def test_secret_checker_catches():
    bad = parse("FROM python:3.12.12-slim\nENV HF_TOKEN=hf_abc\nARG AWS_SECRET_ACCESS_KEY\n"
                "COPY .netrc /root/\nRUN curl -sSL https://x.sh | sh\n")
    assert len(secret_problems(bad)) == 4


def test_requirements_agree_with_pyproject():
    r = subprocess.run([sys.executable, str(IMAGES_DIR / "requirements.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_requirements_checker_catches_a_drift(tmp_path, monkeypatch):
    lock = (IMAGES_DIR / "requirements" / "operator.txt").read_text()
    tested = image_requirements.constraints()["kopf"]
    assert f"kopf=={tested}\n" in lock
    monkeypatch.setattr(image_requirements, "LOCK_DIR", tmp_path)
    # below pyproject.toml's range
    (tmp_path / "operator.txt").write_text(lock.replace(f"kopf=={tested}", "kopf==1.40.0"))
    assert any("kopf is 1.40.0, outside pyproject.toml's" in p for p in image_requirements.problems("operator"))
    # inside the range but not the version constraints.txt says the project is tested with
    (tmp_path / "operator.txt").write_text(lock.replace(f"kopf=={tested}", "kopf==1.99.0"))
    assert image_requirements.problems("operator") == \
        [f"{tmp_path}/operator.txt: kopf is 1.99.0, constraints.txt has {tested}"]
    # a transitive package counts too
    (tmp_path / "operator.txt").write_text(lock.replace("\nidna==", "\nidna==0.1\n#"))
    assert any("idna is 0.1, constraints.txt has" in p for p in image_requirements.problems("operator"))
    # a direct requirement missing from the lock
    (tmp_path / "operator.txt").write_text(lock.replace(f"kopf=={tested}", "# kopf"))
    assert any("kopf is absent" in p for p in image_requirements.problems("operator"))


def _requirements():
    from packaging.requirements import Requirement

    project = image_requirements.pyproject()["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return [(group, Requirement(r)) for group, reqs in groups.items() for r in reqs]


def test_pyproject_declares_ranges_that_admit_the_tested_versions():
    """`pip install devops-model[serve]` must be able to share an environment: no exact pins, an upper
    bound on every requirement (the next major at most), and the tested version inside the range."""
    tested = image_requirements.constraints()
    for group, req in _requirements():
        ops = {s.operator for s in req.specifier}
        assert "==" not in ops and "===" not in ops, f"{group}: {req} pins an exact version; constraints.txt holds those"
        assert ops & {"<", "~="}, f"{group}: {req} has no upper bound"
        name = image_requirements.normalize(req.name)
        assert name in tested, f"{group}: {req.name} is not in constraints.txt (refresh it from the dev venv)"
        assert req.specifier.contains(tested[name]), f"{group}: constraints.txt's {name}=={tested[name]} is outside {req}"


def test_unconstrained_packages_really_differ():
    """Each UNCONSTRAINED exception is still needed: some lock file has another version than constraints.txt."""
    tested = image_requirements.constraints()
    locks = [image_requirements.pins((IMAGES_DIR / "requirements" / f"{i}.txt").read_text().splitlines())
             for i in image_requirements.IMAGES]
    for name in image_requirements.UNCONSTRAINED:
        assert any(name in lock and lock[name] != tested.get(name) for lock in locks), \
            f"{name} is UNCONSTRAINED in images/requirements.py but every lock has constraints.txt's version"


def test_make_venv_installs_with_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    rule = re.search(r"^\$\(BIN\)/\.installed:(.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert rule and "constraints.txt" in rule.group(1).split(), "the venv must be rebuilt when constraints.txt changes"
    assert re.search(r"uv pip install .*-c constraints\.txt .*-e ", rule.group(2))


def test_each_image_installs_its_lock_and_the_project_without_deps(image):
    name, instrs = image
    copies = [rest for word, rest in instrs if word == "COPY"]
    assert any(f"images/requirements/{name}.txt" in c for c in copies), f"{name}: does not copy its lock file"
    runs = [rest for word, rest in instrs if word == "RUN"]
    # The lock whole, or all of it but packages that a later RUN installs from the same lock on their own
    # (DeepSpeed, built against the installed torch): nothing of the lock may be left out.
    held_back = [m for r in runs for m in re.findall(r"grep -v '\^([\w.-]+)==' /tmp/requirements\.txt > (\S+)", r)]
    assert any("-r /tmp/requirements.txt" in r for r in runs) or (
        held_back and all(any(f"-r {rest}" in r for r in runs) for _, rest in held_back)), \
        f"{name}: does not install the lock file"
    for pkg, _ in held_back:
        assert any(f"grep '^{pkg}==' /tmp/requirements.txt" in r and "--no-deps" in r for r in runs), \
            f"{name}: {pkg} is held back from the lock's install but never installed from the lock"
    assert any("uv build --wheel" in r and "/src" in r for r in runs), f"{name}: builds no wheel of the project"
    project_installs = [r for r in runs if "/opt/devops-model/wheels" in r and "install" in r]
    assert project_installs and all("--no-deps" in r and "--no-index" in r for r in project_installs), \
        f"{name}: the project must be installed from its wheel with --no-deps (its dependencies are the lock's)"
    # No other pip/uv install of an unpinned package.
    for r in runs:
        for m in re.finditer(r"(?:pip|uv pip) install ([^&;]+)", r):
            assert unpinned_packages(m.group(1)) == [], f"{name}: unpinned install in {r[:100]!r}"


# pip/uv options whose next word is a value, not a package.
_VALUE_OPTIONS = {"-r", "--requirement", "--python", "-c", "--constraint", "--no-build-isolation-package",
                  "--index-url", "--extra-index-url", "-p"}


def unpinned_packages(arguments: str) -> list[str]:
    """Packages named on a pip/uv install line without ==VERSION (paths and lock files are fine)."""
    words, out, skip = shlex.split(arguments), [], False
    for w in words:
        if skip:
            skip = False
        elif w in _VALUE_OPTIONS:
            skip = True
        elif not w.startswith("-") and not w.startswith("/") and "==" not in w:
            out.append(w)
    return out


def test_unpinned_install_checker():
    assert unpinned_packages("uv==0.13.9") == []
    assert unpinned_packages("--python /opt/venv/bin/python -r /tmp/r.txt --no-build-isolation-package gptqmodel") == []
    assert unpinned_packages("--no-cache torch") == ["torch"]


def test_operator_image_is_slim():
    lock = image_requirements.pins((IMAGES_DIR / "requirements" / "operator.txt").read_text().splitlines())
    for heavy in ("torch", "transformers", "deepspeed", "gptqmodel", "peft"):
        assert heavy not in lock, f"the operator image would carry {heavy}"
    assert "kopf" in lock and "kubernetes" in lock


def test_workload_image_has_the_training_stack():
    lock = image_requirements.pins((IMAGES_DIR / "requirements" / "workload.txt").read_text().splitlines())
    for pkg in ("torch", "deepspeed", "peft", "gptqmodel", "transformers", "accelerate"):
        assert pkg in lock, f"the workload image lacks {pkg}"


@pytest.mark.parametrize("name", ["workload", "serve"])
def test_cuda_base_matches_torchs_cuda(name):
    lock = image_requirements.pins((IMAGES_DIR / "requirements" / f"{name}.txt").read_text().splitlines())
    runtime = lock.get("nvidia-cuda-runtime") or lock.get("nvidia-cuda-runtime-cu12")
    assert runtime, f"{name}: torch's CUDA runtime is not in the lock"
    bases = [b for b in base_images(parse(DOCKERFILES[name].read_text())) if b.startswith("nvidia/cuda:")]
    assert bases
    for b in bases:
        cuda_major = b.split(":")[1].split(".")[0]
        assert cuda_major == runtime.split(".")[0], f"{name}: base {b} vs torch's CUDA {runtime}"


def test_images_match_the_operator_defaults():
    """The image names the operator config defaults to are the ones these Dockerfiles build."""
    images = CHART_VALUES["operator"]["config"]["images"]
    for name in ("workload", "serve"):
        text = DOCKERFILES[name].read_text()
        assert f"-t {images[name]} " in text, f"{name}.Dockerfile's build line should tag {images[name]}"
    assert f"-t {CHART_VALUES['operator']['image']['repository']}:0.1.0 " in DOCKERFILES["operator"].read_text()


# What each image runs, as source folders: every third-party module they import must be in the lock.
IMAGE_CODE = {
    "operator": ["operator/devops_operator", "devops_model"],
    "workload": ["workloads/devops_workloads/train", "workloads/devops_workloads/evaluate",
                 "workloads/devops_workloads/quantize", "workloads/devops_workloads/runner.py",
                 "workloads/devops_workloads/progress.py", "workloads/devops_workloads/sources.py",
                 "workloads/devops_workloads/templates.py", "devops_model"],
    "serve": ["workloads/devops_workloads/serve", "devops_model"],
}
# Imported only inside guarded branches for other roles (the CLI's optional commands, a dev helper).
OPTIONAL_IMPORTS = {"pytest", "httpx", "pexpect", "importlinter"}


def third_party_imports(paths: list[str]) -> set[str]:
    import ast

    mods: set[str] = set()
    for rel in paths:
        root = REPO / rel
        for f in ([root] if root.is_file() else sorted(root.rglob("*.py"))):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    mods |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and not m.startswith("devops_")} - OPTIONAL_IMPORTS


@pytest.mark.parametrize("name", sorted(IMAGE_CODE))
def test_every_import_of_the_images_code_is_in_its_lock(name):
    import importlib.metadata as md

    distributions = md.packages_distributions()
    lock = image_requirements.pins((IMAGES_DIR / "requirements" / f"{name}.txt").read_text().splitlines())
    missing = []
    for module in sorted(third_party_imports(IMAGE_CODE[name])):
        dists = {image_requirements.normalize(d) for d in distributions.get(module, [module])}
        if not dists & set(lock):
            missing.append(f"{module} ({', '.join(sorted(dists))})")
    assert missing == [], f"{name} image: its code imports {missing}, which its lock file lacks"


def test_serve_image_loads_what_the_chain_produces():
    lock = image_requirements.pins((IMAGES_DIR / "requirements" / "serve.txt").read_text().splitlines())
    assert "peft" in lock, "LoRA adapters"
    assert "gptqmodel" in lock and "optimum" in lock, "GPTQ int4 models (transformers dispatches to GPTQModel's kernels)"


def test_each_image_copies_every_package_directory_of_the_project(image):
    """The wheel holds every package pyproject.toml finds (an image without ``cli/`` had no
    ``devops_cli``, and its ``devops-model`` entry point died at import in every pod)."""
    import tomllib

    name, instrs = image
    wheres = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["where"]
    copies = [rest for word, rest in instrs if word == "COPY"]
    ignore = (DOCKERFILES[name].parent / f"{DOCKERFILES[name].name}.dockerignore").read_text().split()
    for where in wheres:
        for pkg in sorted((REPO / where).glob("devops_*/__init__.py")):
            d = pkg.parent.parent.relative_to(REPO).as_posix() if where != "." else pkg.parent.name
            assert any(c.split()[0].rstrip("/") == d for c in copies), f"{name}: {d}/ is not copied (package {pkg.parent.name})"
            assert f"!{d}/" in ignore, f"{name}: its .dockerignore keeps {d}/ out of the build context"
