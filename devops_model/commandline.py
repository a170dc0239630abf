"""How a ``devops-model`` subcommand is declared (each package registers its own, cli/devops_cli
dispatches): a one-line help, a paragraph, and examples shown as written."""

from __future__ import annotations

import argparse
from typing import Any


def add_command(sub: Any, name: str, summary: str, description: str, examples: str | None = None) -> argparse.ArgumentParser:
    """``sub.add_parser`` with the project's conventions: ``summary`` in ``devops-model --help``,
    ``description`` and ``examples`` (kept as written) in ``devops-model NAME --help``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=description, epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser
