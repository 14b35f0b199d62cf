"""MkDocs hook: render the reference commands' options from their argparse parsers.

A page line ``<!-- cli-options mixelbo_reference.config -->`` is replaced by a Markdown table of
every option of that module's parser: its ``build_parser()``, or, for a module without one, the
parser its ``main()`` builds (captured before it parses anything). The tables are therefore
the same as ``--help`` by construction and can never fall behind the code. Configured in
mkdocs.yml under ``hooks``.
"""

from __future__ import annotations

import argparse
import importlib
import re
from typing import Any

_MARKER = re.compile(r"^<!-- cli-options (?P<module>[\w.]+) -->$", flags=re.MULTILINE)


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def parser_of(module_name: str) -> argparse.ArgumentParser:
    module = importlib.import_module(module_name)
    if hasattr(module, "build_parser"):
        parser: argparse.ArgumentParser = module.build_parser()
        return parser
    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        module.main(["--help"])
    except _Captured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise RuntimeError(f"{module_name}.main() built no argparse parser")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _usage(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        return ", ".join(f"`{option}`" for option in action.option_strings)
    if action.choices is not None:
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        metavar = action.metavar or action.dest.upper()
        value = " ".join(metavar) if isinstance(metavar, tuple) else metavar
    if action.nargs in ("+", "*"):
        value += " ..."
    return ", ".join(f"`{option} {value}`" for option in action.option_strings)


def _default(action: argparse.Action) -> str:
    if not action.option_strings or action.default in (None, argparse.SUPPRESS):
        return ""
    if isinstance(action.default, (list, tuple)):
        return "`" + " ".join(str(d) for d in action.default) + "`"
    return f"`{action.default}`"


def options_table(parser: argparse.ArgumentParser) -> str:
    """One row per option; a default column only if some option has a default of its own."""
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    with_defaults = any(_default(a) for a in actions)
    rows = ["| option | default | description |" if with_defaults else "| option | description |"]
    rows.append("| --- | --- | --- |" if with_defaults else "| --- | --- |")
    for action in actions:
        help_text = (action.help or "") % {"default": action.default, "prog": parser.prog}
        default = f" {_default(action)} |" if with_defaults else ""
        rows.append(f"| {_usage(action)} |{default} {_cell(help_text)} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return _MARKER.sub(lambda m: options_table(parser_of(m["module"])), markdown)
