"""The extras declare what their code imports (pyproject.toml), checked statically against the dev venv.

    .venv/bin/python -m pytest tests/deploy/test_packaging.py -q

`pip install "devops-model[serve]"` must give a server that starts and loads what the chain produces,
without borrowing a package that another extra or a transitive dependency happens to bring. The code of
devops_workloads/serve is parsed (every import, lazy ones inside functions too), following the project's
own modules it imports (devops_workloads.models.loading, devops_model, ...); each third-party top-level
module must belong to a distribution that the serve extra or the core dependencies name
(importlib.metadata.packages_distributions maps modules to distributions).
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
#: the project's top-level packages -> their source folders
PROJECT = {"devops_model": REPO / "devops_model", "devops_operator": REPO / "operator" / "devops_operator",
           "devops_workloads": REPO / "workloads" / "devops_workloads", "devops_cli": REPO / "cli" / "devops_cli"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*extras: str) -> set[str]:
    """Normalized distribution names of the core dependencies and the given extras."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]
    return {normalize(Requirement(r).name) for r in reqs}


def module_file(dotted: str) -> Path | None:
    """The source file of a project module (a package's __init__.py), or None when it is not one."""
    top, *rest = dotted.split(".")
    if top not in PROJECT:
        return None
    base = PROJECT[top].joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _dotted(path: Path) -> str:
    for top, root in PROJECT.items():
        if path.is_relative_to(root):
            parts = [top, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return path.stem  # a script outside the packages (bench/*.py)


def third_party_imports(start: Path) -> dict[str, set[str]]:
    """Top-level third-party module -> the project files importing it, from every .py under `start` and
    the project modules those import (transitively). Standard library modules are left out."""
    todo = sorted(start.rglob("*.py")) if start.is_dir() else [start]
    seen: set[Path] = set()
    found: dict[str, set[str]] = {}
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        package = _dotted(f) if f.name == "__init__.py" else _dotted(f).rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    mod = f"{base}.{node.module}" if node.module else base
                else:
                    mod = node.module or ""
                # `from pkg import sub` may name a submodule: follow both
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top in PROJECT:
                    target = module_file(name)
                    if target is not None:
                        todo.append(target)
                elif top and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(str(f.relative_to(REPO)))
    return found


#: distributions that a declared one pins exactly and ships with (declaring them too would only conflict on
#: the next upgrade): pydantic requires pydantic-core==<its version>.
COMPANIONS = {"pydantic-core": "pydantic",
              # quiet.py reaches GPTQModel's own logger, only where GPTQModel is installed (ImportError: nothing to do)
              "logbar": "gptqmodel"}


def undeclared(imports: dict[str, set[str]], allowed: set[str]) -> list[str]:
    distributions = md.packages_distributions()
    out = []
    for module in sorted(imports):
        dists = {normalize(d) for d in distributions.get(module, [module])}
        if not dists & allowed and not {COMPANIONS.get(d) for d in dists} & allowed:
            out.append(f"{module} (distribution {', '.join(sorted(dists))}; imported by {', '.join(sorted(imports[module]))})")
    return out


def test_the_serve_code_imports_only_what_the_serve_extra_declares():
    imports = third_party_imports(PROJECT["devops_workloads"] / "serve")
    # the walk reaches what the server loads models with (LoRA adapters through peft)
    assert {"torch", "transformers", "fastapi", "uvicorn", "httpx2", "peft"} <= set(imports), sorted(imports)
    assert undeclared(imports, declared("serve")) == []


def test_the_serve_extra_loads_gptq_models():
    """transformers loads a GPTQ checkpoint (quantization_config.quant_method: gptq) through optimum and
    GPTQModel, imported inside transformers, so no import of ours names them: declared explicitly."""
    serve = declared("serve")
    assert {"peft", "gptqmodel", "optimum", "transformers", "torch"} <= serve
    from transformers.utils import import_utils

    assert import_utils.is_optimum_available() and import_utils.is_gptqmodel_available()


def test_the_checker_catches_an_undeclared_import(tmp_path, monkeypatch):
    pkg = tmp_path / "devops_workloads"
    (pkg / "serve").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("def f():\n    import peft\n")
    (pkg / "serve" / "__init__.py").write_text("")
    (pkg / "serve" / "app.py").write_text("import json\nimport fastapi\nfrom ..helper import f\n"
                                          "def g():\n    from trl import SFTTrainer\n")
    monkeypatch.setitem(PROJECT, "devops_workloads", pkg)
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    imports = third_party_imports(pkg / "serve")
    assert set(imports) == {"fastapi", "peft", "trl"}  # json is stdlib; peft through the relative import
    assert imports["peft"] == {"devops_workloads/helper.py"}
    monkeypatch.undo()
    problems = undeclared(imports, declared("serve"))
    assert len(problems) == 1 and problems[0].startswith("trl (distribution trl;")


def test_bench_anchors_are_in_the_bench_extra_and_lm_eval_in_dev_too():
    """bench/ imports TRL and lm-evaluation-harness (the bench extra, which `make venv` installs);
    tests/workloads/test_serve_clients.py drives lm-eval's local-completions backend, so dev has it too."""
    bench_imports: dict[str, set[str]] = {}
    for script in sorted((REPO / "bench").glob("*.py")):
        for module, files in third_party_imports(script).items():
            bench_imports.setdefault(module, set()).update(files)
    anchors = {m: bench_imports[m] for m in ("trl", "lm_eval")}
    assert undeclared(anchors, declared("bench")) == []
    assert "trl" not in declared("dev"), "TRL is a bench anchor only"
    test_imports = third_party_imports(REPO / "tests" / "workloads" / "test_serve_clients.py")
    assert undeclared({"lm_eval": test_imports["lm_eval"]}, declared("dev")) == []
    extras = re.search(r"^EXTRAS \?= (.*)$", (REPO / "Makefile").read_text(), re.M).group(1).split(",")
    assert {"bench", "dev", "serve"} <= set(extras)
