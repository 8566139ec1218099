"""The README's examples work in a fresh clone, and the project stands on its own.

Every `storefront …` line in the README's `sh` blocks runs here, in order, in an empty
directory that holds only what a clone has (`tests/`, `examples/`), with the `storefront`
that `make setup` installs; the seed example prints the figures the README states. Every path
the README or `docs/` quote exists in the repository, and nothing points outside it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md")}


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.S)


def storefront_lines(text: str) -> list[str]:
    return [line.strip() for block in sh_blocks(text) for line in block.splitlines()
            if line.strip().startswith("storefront ")]


def test_the_readme_has_command_line_examples() -> None:
    lines = storefront_lines(README)
    assert any(line.startswith("storefront replay tests/vectors/") for line in lines)
    assert len(lines) >= 5


@pytest.fixture(scope="module")
def clone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with what a fresh clone has beside the code: tests/ and examples/."""
    where = tmp_path_factory.mktemp("clone")
    for name in ("tests", "examples"):
        (where / name).symlink_to(ROOT / name)
    return where


def run_line(line: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)  # the venv's: where `storefront` is
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TELEGRAM_", "WECHAT_", "STOREFRONT_"))
           and k not in ("DATABASE_URL", "REDIS_URL")}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def readme_runs(clone_dir: Path) -> list[tuple[str, subprocess.CompletedProcess[str]]]:
    """Every README line run once, in order, in the clone (each a `storefront` process of
    its own); the tests below read what each did."""
    return [(line, run_line(line, clone_dir)) for line in storefront_lines(README)]


def test_every_readme_command_line_runs_in_a_fresh_clone(
        readme_runs: list[tuple[str, subprocess.CompletedProcess[str]]]) -> None:
    for line, done in readme_runs:
        assert done.returncode == 0, (line, done.stderr)
        assert "Traceback" not in done.stderr, (line, done.stderr)
        assert done.stdout.strip(), line


def test_the_seed_example_prints_the_figures_the_readme_states(
        readme_runs: list[tuple[str, subprocess.CompletedProcess[str]]]) -> None:
    [done] = [run for line, run in readme_runs if "seed-points-mint" in line]
    state = json.loads(done.stdout)
    assert "**2000 points**" in README and "**4000.00**" in README and "**2.00**" in README
    assert state["points"] == {"supply": "2000.000000", "price": "2.000000"}
    assert state["pools"]["points"] == "4000.00"
    assert state["users"]["A"]["points"] == "2000.000000" and state["errors"] == []


@pytest.mark.parametrize("name", ["README.md", *sorted(DOCS)])
def test_nothing_points_outside_the_repository(name: str) -> None:
    text = README if name == "README.md" else DOCS[name]
    assert "../shared" not in text and "shared/SPEC" not in text, name


def test_the_rules_page_exists_and_the_readme_points_to_it() -> None:
    rules = DOCS["rules.md"]
    assert "`docs/rules.md`" in README
    from engine.errors import CODES

    for code in CODES:  # every refusal the engine can give is explained
        assert f"`{code}`" in rules, code
    for op in ("config", "product", "join", "deposit", "buy", "release", "settle", "refund",
               "withdraw_points", "transfer_points", "withdraw_cash"):
        assert f"| `{op}` |" in rules, op


def test_every_repository_path_the_readme_and_docs_quote_exists() -> None:
    quoted = set()
    for text in [README, *DOCS.values()]:
        for span in re.findall(r"`([^`\n]+)`", text):
            for word in span.split():
                if re.fullmatch(r"(tests|examples|docs|bot|engine|handlers|storage)/[\w./-]+"
                                r"\.(jsonl|json|yaml|md|py)", word):
                    quoted.add(word)
    assert "tests/vectors/seed-points-mint.jsonl" in quoted
    missing = sorted(p for p in quoted if not (ROOT / p).exists())
    assert missing == [], missing
