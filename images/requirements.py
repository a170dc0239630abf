"""Each container image's Python requirements, derived from pyproject.toml and constraints.txt (never written by hand).

    .venv/bin/python images/requirements.py             # print each image's direct requirements
    .venv/bin/python images/requirements.py --lock      # rewrite images/requirements/<image>.txt
    .venv/bin/python images/requirements.py --check     # exit 1 when a lock file disagrees

An image is a set of the project's extras (IMAGES below). Its direct requirements are the core
dependencies plus those extras, with pyproject.toml's version ranges. `--lock` resolves them with
`uv pip compile -c constraints.txt` for the image's Python and Linux x86_64 into
images/requirements/<image>.txt: every package, transitive ones too, at the exact version the dev venv
was tested with (constraints.txt), so an image and a checkout run the same versions and a rebuild next
month installs the same thing. Packages the dev venv does not hold (another Python's markers) are pinned
by the resolver. The Dockerfiles install that file and then the project itself with --no-deps.
tests/deploy/test_images.py fails when a lock file lacks a direct requirement, has a version outside
its pyproject.toml range or different from constraints.txt, or the operator's carries torch.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOCK_DIR = HERE / "requirements"
CONSTRAINTS = REPO / "constraints.txt"

#: image -> (extras, Python version of the image's interpreter)
IMAGES: dict[str, tuple[tuple[str, ...], str]] = {
    # The operator talks to the API server only: no torch, no transformers (import-linter keeps it so).
    "operator": (("operator",), "3.12"),
    # Training, evaluation and quantization pods: torch, DeepSpeed, peft, GPTQModel.
    "workload": (("train", "eval", "quantize", "sources"), "3.12"),
    # The built-in chat server (engine.name: builtin); the serve extra carries what loads the chain's
    # LoRA adapters (peft) and GPTQ int4 models (gptqmodel, optimum).
    "serve": (("serve",), "3.12"),
}
#: Packages the images resolve themselves although constraints.txt names them: the image's Python (3.12)
#: or an extra the dev venv (Python 3.11) does not install asks for another version. Every other package
#: of a lock file has constraints.txt's version (problems() checks it); each entry says why it cannot.
UNCONSTRAINED: dict[str, str] = {
    "numpy": "gptqmodel requires numpy>=2.5.4 on Python 3.12 (>=2.4.6 on the venv's 3.11)",
    "python-dateutil": "botocore (boto3, the workload image's sources extra, not in the dev venv) requires <3",
}
PLATFORM = "x86_64-manylinux_2_28"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def direct_requirements(image: str) -> list[str]:
    """Core dependencies + the image's extras, as declared in pyproject.toml (deduplicated, sorted by name)."""
    project = pyproject()["project"]
    extras, _ = IMAGES[image]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    seen: dict[str, set[str]] = {}
    for r in reqs:
        req = Requirement(r)
        if "==" in str(req.specifier) and not any(s.operator == "==" and "*" in s.version for s in req.specifier):
            raise SystemExit(f"pyproject.toml: {r!r} pins an exact version; declare a range "
                             "(the exact version belongs in constraints.txt)")
        seen.setdefault(normalize(req.name), set()).add(r.strip())
    return [r for k in sorted(seen) for r in sorted(seen[k])]


def constraints() -> dict[str, str]:
    """name -> version of constraints.txt (the dev venv's exact versions)."""
    return pins(CONSTRAINTS.read_text(encoding="utf-8").splitlines())


def pins(lines: list[str]) -> dict[str, str]:
    """name -> version of every `name==version` line."""
    out = {}
    for line in lines:
        m = _NAME.match(line)
        if m:
            out[normalize(m.group(1))] = m.group(2)
    return out


def image_constraints() -> str:
    """constraints.txt less the UNCONSTRAINED packages."""
    lines = CONSTRAINTS.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines
                     if not ((m := _NAME.match(line)) and normalize(m.group(1)) in UNCONSTRAINED)) + "\n"


def lock(image: str) -> str:
    _, python = IMAGES[image]
    with tempfile.TemporaryDirectory() as tmp:
        requirements, constrained = Path(tmp) / "image.in", Path(tmp) / "constraints.txt"
        requirements.write_text("\n".join(direct_requirements(image)) + "\n")
        constrained.write_text(image_constraints())
        uv = REPO / ".venv" / "bin" / "uv"
        r = subprocess.run([str(uv), "pip", "compile", requirements.name, "--python-version", python,
                            "--python-platform", PLATFORM, "-c", constrained.name, "--no-header", "--quiet"],
                           capture_output=True, text=True, cwd=tmp)
    if r.returncode != 0:
        raise SystemExit(f"uv pip compile failed for {image}:\n{r.stderr}")
    header = (f"# {image} image: pyproject.toml extras {', '.join(IMAGES[image][0])} (+ core), constraints.txt, "
              f"Python {python}, {PLATFORM}.\n# Generated by `python images/requirements.py --lock`; do not edit.\n")
    return header + _without_constraints_annotation(r.stdout)


def _without_constraints_annotation(text: str) -> str:
    """uv's `# via` notes less `-c constraints.txt` (it names every package), one-name notes on one line."""
    out: list[str] = []
    for line in text.splitlines():
        if line.strip() == "#   -c constraints.txt":
            continue
        if line.startswith("    #   ") and out and out[-1] == "    # via":
            out[-1] = "    # via " + line[len("    #   "):]
            continue
        if line.startswith("    #   ") and out and out[-1].startswith("    # via "):
            # a second name: back to uv's one-per-line layout
            out[-1:] = ["    # via", "    #   " + out[-1][len("    # via "):], line]
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def problems(image: str) -> list[str]:
    path = LOCK_DIR / f"{image}.txt"
    if not path.exists():
        return [f"{_shown(path)} is missing"]
    locked = pins(path.read_text().splitlines())
    tested = constraints()
    out = []
    for r in direct_requirements(image):
        req = Requirement(r)
        name = normalize(req.name)
        version = locked.get(name)
        if version is None:
            out.append(f"{_shown(path)}: {name} is absent, pyproject.toml requires {req.specifier or 'it'}")
        elif not req.specifier.contains(version, prereleases=True):
            out.append(f"{_shown(path)}: {name} is {version}, outside pyproject.toml's {req.specifier}")
    for name, version in sorted(locked.items()):
        if name in tested and tested[name] != version and name not in UNCONSTRAINED:
            out.append(f"{_shown(path)}: {name} is {version}, constraints.txt has {tested[name]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="*", default=sorted(IMAGES), help="images (default: all)")
    ap.add_argument("--lock", action="store_true", help="resolve and write images/requirements/<image>.txt")
    ap.add_argument("--check", action="store_true", help="compare the lock files with pyproject.toml and constraints.txt")
    args = ap.parse_args(argv)
    bad = [i for i in args.images if i not in IMAGES]
    if bad:
        ap.error(f"unknown image {bad}; images: {sorted(IMAGES)}")
    if args.check:
        found = [p for i in args.images for p in problems(i)]
        for p in found:
            print(p, file=sys.stderr)
        if found:
            print("run: .venv/bin/python images/requirements.py --lock", file=sys.stderr)
        return 1 if found else 0
    if args.lock:
        LOCK_DIR.mkdir(exist_ok=True)
        for image in args.images:
            (LOCK_DIR / f"{image}.txt").write_text(lock(image))
            print(f"wrote images/requirements/{image}.txt", file=sys.stderr)
        return 0
    for image in args.images:
        print(f"# {image}")
        print("\n".join(direct_requirements(image)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
