"""Installs are reproducible: `requirements.lock` pins every dependency with its hashes, and
`make setup` installs from it and nothing else. A dependency added to pyproject.toml without
`make lock` fails here, not on a newcomer's machine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, list[str]]:
    """`name` → the hashes listed under its `name==version` line."""
    found: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==\S+", line):
            current = canonical(m.group(1))
            found.setdefault(current, [])
        elif current and (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            found[current].append(h.group(1))
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"{path.name}: not a pinned requirement: {line!r}")
    return found


def test_every_dependency_of_the_project_is_pinned_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    locked = pins(ROOT / "requirements.lock")
    for requirement in wanted:
        name = canonical(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])
        assert name in locked, f"{name} is in pyproject.toml but not in requirements.lock"
    for tool in ("uv", "setuptools", "wheel"):  # what `make setup` itself uses
        assert tool in locked, tool
    assert all(hashes for hashes in locked.values()), "a pin without its hashes"


def test_uv_is_pinned_alike_in_both_lock_files() -> None:
    uv_lock = (ROOT / "requirements-uv.lock").read_text(encoding="utf-8")
    main_lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    [pin] = re.findall(r"^uv==\S+", uv_lock, flags=re.M)
    assert re.search(rf"^{re.escape(pin)}\b", main_lock, flags=re.M), pin
    assert set(pins(ROOT / "requirements-uv.lock")["uv"]) <= set(pins(ROOT / "requirements.lock")["uv"])


def test_make_setup_installs_from_the_lock_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--require-hashes --no-deps -r $(UVLOCK)" in makefile
    assert "uv pip sync" in makefile and "--require-hashes $(LOCK)" in makefile
    assert "--no-deps" in makefile and "pip install --quiet -e" not in makefile
    stamp = re.search(r"^\$\(STAMP\):(.*)$", makefile, flags=re.M)
    assert stamp and "$(LOCK)" in stamp.group(1) and "$(UVLOCK)" in stamp.group(1)
