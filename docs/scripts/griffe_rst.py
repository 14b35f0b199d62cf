"""Griffe extension: render mixelbo's reST-flavoured Google docstrings in MkDocs.

The docstrings are written for both ``help()`` and the site, so they use a few reStructuredText
constructs that Markdown does not know. This extension rewrites them when mkdocstrings loads
the package (the source files are not touched):

- ``:math:`x``` becomes inline math and a ``.. math::`` block becomes display math
  (``pymdownx.arithmatex`` then MathJax render both);
- ``:class:``, ``:func:``, ``:meth:``, ``:mod:``, ``:attr:``, ... become cross-references when
  the target is a documented public object, and inline code otherwise, so a reference never
  breaks the strict build;
- ``Example:`` becomes ``Examples:`` so the doctest is rendered as a code block.

It is configured in mkdocs.yml under the python handler's ``extensions``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?P<role>[a-z]+):`(?P<text>[^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")
_EXAMPLE_HEADER = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", flags=re.MULTILINE)
_ARGS_HEADER = re.compile(r"^(?P<indent>[ \t]*)(Args|Arguments|Parameters):[ \t]*$")
_GROUPED_PARAM = re.compile(r"^(?P<indent>[ \t]*)(?P<names>\w+(?:, \w+)+):(?P<rest>.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _split_grouped_params(text: str) -> str:
    """Give each name of ``a, b, c: description`` in an Args section its own entry."""
    lines = text.splitlines()
    out: list[str] = []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        header = _ARGS_HEADER.match(line)
        if header is not None:
            section_indent = len(header["indent"])
        elif line.strip() and section_indent is not None and _indent(line) <= section_indent:
            section_indent = None
        grouped = _GROUPED_PARAM.match(line) if section_indent is not None else None
        if grouped is None:
            out.append(line)
            i += 1
            continue
        body = [grouped["rest"]]
        i += 1
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) > len(grouped["indent"]):
            body.append("\n" + lines[i])
            i += 1
        for name in grouped["names"].split(", "):
            out.append(f"{grouped['indent']}{name}:{''.join(body)}")
    return "\n".join(out)


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    """Every object defined in ``obj``'s package (aliases are visited through their targets)."""
    found = [obj]
    for member in obj.members.values():
        if member.is_alias:
            continue
        found.extend(_walk(member))  # type: ignore[arg-type]
    return found


def _public(path: str) -> bool:
    return not any(part.startswith("_") for part in path.split("."))


def _math_blocks(text: str) -> str:
    """Turn each ``.. math::`` directive (one line or an indented block) into ``$$ ... $$``."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_DIRECTIVE.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent = match["indent"]
        body = [match["first"].strip()] if match["first"].strip() else []
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)
        ):
            if lines[i].strip():
                body.append(lines[i].strip())
            elif body:  # a blank line after the body ends the directive
                break
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}$$", *(f"{indent}{line}" for line in body), f"{indent}$$", ""]
    return "\n".join(out)


API_PAGE = Path("docs/api.md")  # relative to the folder mkdocs runs in (the project root)
_DIRECTIVE = re.compile(r"^:::\s+(?P<identifier>[\w.]+)", flags=re.MULTILINE)


def _with_members(obj: griffe.Object, path: str) -> set[str]:
    """``path`` and the paths of the public members documented under it."""
    target = obj.final_target if obj.is_alias else obj  # type: ignore[union-attr]
    paths = {path}
    if target.is_module:
        exports = target.exports  # type: ignore[union-attr]
        names = [n for n in (exports if exports is not None else target.members) if _public(n)]
    else:
        names = [n for n in target.members if _public(n)]
    for name in names:
        if name in target.members and not (target.is_module and target.members[name].is_module):
            paths |= _with_members(target.members[name], f"{path}.{name}")
    return paths


def _rendered_paths(pkg: griffe.Module, api_page: Path) -> set[str]:
    """Every object path that a ``::: identifier`` directive of ``api_page`` renders, so a
    cross-reference is only emitted where mkdocstrings will have made its anchor."""
    paths: set[str] = set()
    text = api_page.read_text() if api_page.is_file() else f"::: {pkg.path}"
    for identifier in _DIRECTIVE.findall(text):
        if identifier != pkg.path and not identifier.startswith(f"{pkg.path}."):
            continue
        relative = identifier[len(pkg.path) + 1 :]
        try:
            obj = pkg[relative] if relative else pkg
        except KeyError:
            continue
        paths |= _with_members(obj, identifier)
    return paths


class ReSTToMarkdown(griffe.Extension):
    """Rewrite the reST roles and directives of mixelbo's docstrings into Markdown."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        linkable = _rendered_paths(pkg, API_PAGE)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = self._convert(obj.docstring.value, obj, linkable)

    def _convert(self, text: str, obj: griffe.Object, linkable: set[str]) -> str:
        text = _split_grouped_params(_math_blocks(text))
        text = _EXAMPLE_HEADER.sub(lambda m: f"{m['indent']}Examples:", text)

        def role(match: re.Match[str]) -> str:
            kind, target = match["role"], match["text"]
            if kind == "math":
                return f"${target}$"
            short = target.startswith("~")
            target = target.lstrip("~")
            label = target.split(".")[-1] if short else target
            path = self._resolve(target, obj, linkable)
            return f"[`{label}`][{path}]" if path else f"`{label}`"

        return _ROLE.sub(role, text)

    @staticmethod
    def _resolve(target: str, obj: griffe.Object, linkable: set[str]) -> str | None:
        scope: griffe.Object | None = obj
        while scope is not None:
            candidate = f"{scope.path}.{target}"
            if candidate in linkable:
                return candidate
            scope = scope.parent
        return target if target in linkable else None
