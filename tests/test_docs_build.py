"""The documentation site builds with ``mkdocs build --strict`` (what ``make docs`` runs).

A broken link, anchor or API cross-reference is a warning, and ``--strict`` turns warnings
into a failed build, so this test fails CI on any of them. The build needs no network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mixelbo
from mixelbo import distributed, functional

ROOT = Path(__file__).resolve().parents[1]


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)]
    command += ["-d", str(site)]
    return subprocess.run(
        command, cwd=config.parent, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = build(ROOT / "mkdocs.yml", out)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out


def test_every_public_symbol_is_in_the_api_reference(site: Path) -> None:
    html = (site / "api" / "index.html").read_text()
    anchors = set(re.findall(r'id="(mixelbo[\w.]*)"', html))
    expected = {f"mixelbo.{name}" for name in mixelbo.__all__ if not name.startswith("_")}
    expected |= {f"mixelbo.functional.{name}" for name in functional.__all__}
    expected |= {f"mixelbo.distributed.{name}" for name in distributed.__all__}
    assert expected <= anchors, sorted(expected - anchors)


def test_docstring_markup_is_converted(site: Path) -> None:
    """reST roles and directives became math and links (docs/scripts/griffe_rst.py)."""
    html = (site / "api" / "index.html").read_text()
    assert ".. math::" not in html
    assert not re.search(r":(math|class|func|meth|mod|attr):`", html)
    assert 'class="arithmatex"' in html  # formulas are handed to MathJax
    assert 'href="#mixelbo.functional.batch_moments"' in html  # a resolved cross-reference


def test_every_nav_page_is_built(site: Path) -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    pages = re.findall(r":\s+([\w/-]+)\.md\s*$", config, flags=re.MULTILINE)
    assert "getting-started" in pages
    for page in pages:
        built = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.is_file(), page


def test_a_broken_reference_fails_the_build(tmp_path: Path) -> None:
    """The oracle for the strict build: a dangling API reference must fail it."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "docs", project / "docs")
    # the same config without the CLI-table hook (it only imports the trainer: slow, unrelated)
    config = (ROOT / "mkdocs.yml").read_text()
    config = re.sub(r"^hooks:\n(  - .*\n)+", "", config, flags=re.MULTILINE)
    (project / "mkdocs.yml").write_text(config)
    (project / "src").symlink_to(ROOT / "src")
    page = project / "docs" / "troubleshooting.md"
    page.write_text(page.read_text() + "\nSee [MixtureKL][mixelbo.NoSuchThing].\n")
    done = build(project / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "mixelbo.NoSuchThing" in done.stdout + done.stderr


@pytest.mark.parametrize(
    "module",
    ["mixelbo_reference.config", "mixelbo_reference.evaluate", "mixelbo_reference.compare",
     "mixelbo_reference.prepare", "mixelbo_reference.study"],
)  # fmt: skip
def test_trainer_page_lists_every_command_option(site: Path, module: str) -> None:
    """docs/trainer.md's option tables (docs/scripts/cli_tables.py) cover each parser."""
    import argparse
    import html as html_lib
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_tables", ROOT / "docs/scripts/cli_tables.py")
    assert spec is not None and spec.loader is not None
    cli_tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli_tables)
    page = html_lib.unescape((site / "trainer" / "index.html").read_text())
    assert "cli-options" not in page
    options = [
        option
        for action in cli_tables.parser_of(module)._actions
        if not isinstance(action, argparse._HelpAction)
        for option in action.option_strings
    ]
    assert options
    missing = [option for option in options if f"<code>{option}" not in page]
    assert not missing, missing


# a result file named in full (``bench_losses-cpu-20261202T055131Z.json``) or by the time it
# finished (``...T055131Z``)
RESULT_NAME = re.compile(r"\b([\w-]+-\d{8}T\d{6}Z\.json)|`\.\.\.(T\d{6}Z)`")


def test_every_cited_result_file_is_committed() -> None:
    """The figures in the docs come from files in ``benchmarks/results/``: every result file
    that a page or a README names is there (a figure from a run that was not kept fails)."""
    results = {path.name for path in (ROOT / "benchmarks" / "results").glob("*.json")}
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").rglob("*.md")]
    cited = 0
    for page in pages:
        for full, short in RESULT_NAME.findall(page.read_text()):
            cited += 1
            if full:
                assert full in results, f"{page.name} cites {full}, not in benchmarks/results/"
            else:
                assert any(name.endswith(f"{short}.json") for name in results), (
                    f"{page.name} cites ...{short}, not in benchmarks/results/"
                )
    assert cited > 10  # the pattern still finds the citations
