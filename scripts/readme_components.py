"""Rewrite the README's component table from the live registries (run after adding components):

    python scripts/readme_components.py
"""
from __future__ import annotations

import re
from pathlib import Path

import fllab.components  # noqa: F401  (fllab's own components only: installed plugins stay out)
from fllab.registry import ALL_REGISTRIES


def table() -> str:
    lines = []
    for kind, registry in ALL_REGISTRIES.items():
        lines += [f"**{kind}s**", "", "| name | what |", "|---|---|"]
        lines += [f"| `{name}` | {getattr(registry[name], 'summary', '')} |" for name in registry]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    block = f"<!-- components:start -->\nOutput of `fllab list` (regenerate with `python scripts/readme_components.py`):\n\n{table()}<!-- components:end -->"
    readme.write_text(re.sub(r"<!-- components:start -->.*<!-- components:end -->", block, text, flags=re.S))


if __name__ == "__main__":
    main()
