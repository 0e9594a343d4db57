"""The README is a manual and docs/ its depth: short enough to read, free of issue numbers, every link, command and
module it names exists, and its samples have the shape of a real run's."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from bench.servers import ROOT
from recommender.cli.arguments import parser
from tests.support.database import create_database

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def test_the_readme_is_a_manual_of_at_most_400_lines() -> None:
    assert len(_text(ROOT / "README.md").splitlines()) <= 400


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_a_page_names_no_issue_and_links_only_to_what_exists(page: Path) -> None:
    text = _text(page)
    assert not re.search(r"\bissues? \d+", text, re.IGNORECASE)
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_a_page_names_exists(page: Path) -> None:
    text = _text(page)
    commands = _subcommands()
    for name in re.findall(r"\brecommender ([a-z]+)\b(?= |`|\))", text):
        if name not in {"cannot"}:  # prose: "the recommender cannot ..."
            assert name in commands, f"{page.name}: `recommender {name}` is not a command"
    for module in re.findall(r"python -m (bench\.[a-z_]+|recommender\.[a-z_.]+)", text):
        found = (ROOT / "bench" / f"{module[6:]}.py").exists() if module.startswith("bench.") else find_spec(module)
        assert found, f"{page.name}: python -m {module}: no such module"
    for script in re.findall(r"\bscripts/([a-z_]+\.(?:py|sh))", text):
        assert (ROOT / "scripts" / script).exists(), f"{page.name}: scripts/{script} does not exist"
    dev = _text(ROOT / "scripts" / "dev.sh")
    for sub in re.findall(r"scripts/dev\.sh ([a-z]+)", text):
        assert re.search(rf"^\s+{sub}\)", dev, re.MULTILINE), f"{page.name}: scripts/dev.sh {sub} is not a command"


def _subcommands() -> set[str]:
    actions = [a for a in parser()._actions if a.dest == "command"]
    return set(actions[0].choices or ()) if actions else set()


def test_the_samples_come_from_a_real_run(postgres_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "scripts/refresh_readme.py", "--check", "--tuning-seconds", "0.5",
         "--database-url", create_database(postgres_url)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
