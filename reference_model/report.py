"""Report writer: one document rendered as ``report.md`` (PNG links) and ``report.html``.

A report is a list of blocks (headings, paragraphs, tables, figures). The Markdown links each
figure by its relative file name; the HTML inlines every figure as a base64 data URI, so the
single file can be mailed or archived on its own. ``metrics.json`` holds the numbers.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Block",
    "Figure",
    "Heading",
    "Paragraph",
    "Table",
    "format_number",
    "render_html",
    "render_markdown",
    "to_jsonable",
    "write_json",
    "write_report",
]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True)
class Figure:
    path: str
    """File name relative to the report folder."""
    caption: str


Block = Heading | Paragraph | Table | Figure


def format_number(value: Any) -> str:
    """Numbers with 4 significant digits (integers as they are); anything else as ``str``."""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return "n/a"
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        return f"{number:.4g}"
    return str(value)


def to_jsonable(value: Any) -> Any:
    """Convert NumPy/torch scalars and arrays (recursively) to plain JSON types."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else str(number)
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(data: Any, path: str | os.PathLike[str]) -> None:
    """Write ``data`` as indented JSON atomically (temp file, then rename)."""
    target = Path(path)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(to_jsonable(data), indent=2) + "\n")
    os.replace(temporary, target)


def _md_cell(value: Any) -> str:
    return format_number(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, blocks: Sequence[Block]) -> str:
    """The report as Markdown; figures are relative links."""
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            lines.append("|" + "|".join(" --- " for _ in block.header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        else:
            lines += [f"![{block.caption}]({block.path})", "", f"*{block.caption}*", ""]
    return "\n".join(lines)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; image-rendering: pixelated; }
figcaption { font-size: 0.9em; color: #555; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _inline_code(text: str) -> str:
    """HTML-escape ``text`` and turn Markdown backticks into ``<code>``."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(title: str, blocks: Sequence[Block], folder: str | os.PathLike[str]) -> str:
    """The report as one self-contained HTML page (figures from ``folder`` inlined)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline_code(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline_code(block.text)}</p>")
        elif isinstance(block, Table):
            header = "".join(f"<th>{_inline_code(format_number(h))}</th>" for h in block.header)
            rows = "".join(
                "<tr>"
                + "".join(f"<td>{_inline_code(format_number(c))}</td>" for c in row)
                + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            data = base64.b64encode((Path(folder) / block.path).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(block.caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>'
                f"{_inline_code(block.caption)}</figcaption></figure>"
            )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(
    folder: str | os.PathLike[str],
    title: str,
    blocks: Sequence[Block],
    *,
    name: str = "report",
) -> tuple[Path, Path]:
    """Write ``NAME.md`` and the self-contained ``NAME.html`` into ``folder``.

    Raises:
        ValueError: if a figure's file is missing from ``folder``.

    Returns:
        The paths of the Markdown and the HTML files.
    """
    root = Path(folder)
    for block in blocks:
        if isinstance(block, Figure) and not (root / block.path).is_file():
            raise ValueError(f"figure {block.path!r} is not a file in {str(root)!r}")
    markdown_path, html_path = root / f"{name}.md", root / f"{name}.html"
    for path, text in (
        (markdown_path, render_markdown(title, blocks)),
        (html_path, render_html(title, blocks, root)),
    ):
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, path)
    return markdown_path, html_path
