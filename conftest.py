"""Repository-root pytest configuration.

Every module in ``tests/plugins/`` is loaded as a pytest plugin (fixtures shared across test
files: the tiny models, the real control plane, Chromium), so each area owns its own fixtures.
"""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.plugins.{p.stem}"
    for p in (Path(__file__).parent / "tests" / "plugins").glob("*.py")
    if p.stem != "__init__"
)


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files (tests/golden/...) from the current output instead of comparing")
