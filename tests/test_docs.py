"""Docs are code: every command and every HTTP route is in the README, and its commands run."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from infermeter.api.app import create_app
from infermeter.cli.main import build_parser
from tests.conftest import fake_service

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    out: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix}{name}"
                nested = _subcommands(sub, path + " ")
                out += nested or [path]
    return out


def test_every_cli_command_is_in_the_readme() -> None:
    """A command the CLI has but the README does not mention fails this test."""
    commands = _subcommands(build_parser())
    assert len(commands) > 15
    missing = [c for c in commands if not re.search(rf"\b{re.escape(c)}\b", README)]
    assert not missing, f"README does not document: {missing}"


def test_every_http_route_is_in_the_readme(tmp_path: Path) -> None:
    """Every API route of the app (dashboard files aside) appears in the README."""
    app = create_app(fake_service(tmp_path), manage=False)
    # the OpenAPI paths: newer FastAPI wraps included routers, so app.routes has no paths
    paths = {getattr(r, "path", "") for r in app.routes} | set(app.openapi()["paths"])
    api = sorted(
        p for p in paths if p.startswith(("/v1/", "/healthz", "/health", "/readyz", "/metrics", "/log/"))
    )
    missing = [p for p in api if p.split("{")[0].rstrip("/") not in README]
    assert not missing, f"README does not document: {missing}"


def test_quick_start_has_exactly_two_commands_that_exist() -> None:
    """The quick start shows two set-up commands, and both scripts exist and are executable."""
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", quick)
    assert commands == ["./scripts/serve.sh", "./scripts/test.sh"]
    for cmd in commands:
        script = ROOT / cmd
        assert script.is_file() and script.stat().st_mode & 0o111


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run calls the README's test command."""
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_nothing_cites_a_file_outside_the_repository() -> None:
    """Docs, docstrings and tests stand alone: no design or reference file of another repo."""
    outside = re.compile(r"shared/|DESIGN\.md|STYLE\.md|\breference/[a-z_]+\.md")
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    files += [*(ROOT / "src").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "scripts").glob("*")]
    this = Path(__file__).resolve()
    hits = [
        f"{f.relative_to(ROOT)}:{n}"
        for f in files
        if f.is_file() and f.resolve() != this
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits, f"cites files outside the repository: {hits}"
