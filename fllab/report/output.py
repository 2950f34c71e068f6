"""Writing a report: figures on disk for Markdown, base64 data URIs for HTML, Jinja2 templates.

Templates ship inside the package (``fllab/report/templates``) and are read through
:mod:`importlib.resources`, so reports render the same from a source tree or an installed wheel.
Every file is written atomically (:mod:`fllab.io`).
"""
from __future__ import annotations

import base64
import re
from urllib.parse import quote
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from ..io import atomic_write_bytes, atomic_write_text

FIGURES_DIR = "figures"
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".svg": "image/svg+xml"}
IMAGE_SUFFIXES = frozenset(_MIME)


@dataclass
class FigureRef:
    """A figure as both outputs need it: a relative link for Markdown, the bytes for HTML.

    ``rel`` ends in one of :data:`IMAGE_SUFFIXES`, which picks the data URI's media type.
    """

    title: str
    rel: str
    data: bytes
    caption: str = ""

    @property
    def data_uri(self) -> str:
        mime = _MIME[Path(self.rel).suffix.lower()]
        return f"data:{mime};base64,{base64.b64encode(self.data).decode('ascii')}"


def breakable(text: Any) -> Markup:
    """HTML of a (dotted) name with a line-break opportunity after each ``.`` and ``_``, so that
    long metric names wrap inside a table header instead of widening the table."""
    return Markup("<wbr>").join(escape(part) for part in re.split(r"(?<=[._])", str(text)))


def slug(text: str) -> str:
    """File- and anchor-safe form of a name (``inversion.psnr`` -> ``inversion-psnr``)."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-").lower() or "x"


def save_figure(out_dir: Path, name: str, png: bytes, title: str, caption: str = "") -> FigureRef:
    """Write a generated PNG to ``out_dir/figures/<name>.png`` and return its reference."""
    rel = f"{FIGURES_DIR}/{slug(name)}.png"
    atomic_write_bytes(out_dir / rel, png)
    return FigureRef(title, rel, png, caption)


def existing_figure(path: Path, rel: str, title: str, caption: str = "") -> FigureRef:
    """Reference an image already in the directory (an attack's artefact), without copying it."""
    return FigureRef(title, rel, path.read_bytes(), caption)


def _md_cell(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_fence(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _load(name: str) -> str:
    return (resources.files(__package__) / "templates" / name).read_text(encoding="utf-8")


def _environment(html: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load),
        autoescape=html,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md_cell"] = _md_cell
    env.filters["md_fence"] = _md_fence
    env.filters["slug"] = slug
    env.filters["breakable"] = breakable
    env.filters["url"] = lambda path: quote(str(path), safe="/")
    return env


_ENVIRONMENTS = {html: _environment(html) for html in (False, True)}


def write_report(out_dir: Path, kind: str, context: dict[str, Any]) -> tuple[Path, Path]:
    """Render ``<kind>.md.j2`` and ``<kind>.html.j2`` into ``out_dir/report.{md,html}``."""
    paths = []
    for html, suffix in ((False, "md"), (True, "html")):
        text = _ENVIRONMENTS[html].get_template(f"{kind}.{suffix}.j2").render(**context)
        path = out_dir / f"report.{suffix}"
        atomic_write_text(path, text)
        paths.append(path)
    return paths[0], paths[1]
