"""requirements.txt is the lock the platform installs: it must pin everything requirements.in
names, and it must be what the suite runs on (scripts/lock-requirements.sh writes it)."""

from __future__ import annotations

import re
from importlib import metadata

from registry.azurite import PROJECT_ROOT


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt must pin exact versions: {line!r}"
            pins[_normal(name)] = version.strip()
    return pins


def test_every_direct_dependency_is_pinned() -> None:
    pins = _pins()
    for line in (PROJECT_ROOT / "requirements.in").read_text().splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if line:
            name = _normal(re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0])
            assert name in pins, f"{name} is in requirements.in but not pinned in requirements.txt"


def test_the_suite_runs_on_exactly_the_pinned_versions() -> None:
    """A pin the venv does not have means the tests ran against something else than Azure gets."""
    differing = {name: (version, metadata.version(name)) for name, version in _pins().items()
                 if metadata.version(name) != version}
    assert differing == {}, "pinned vs installed; run scripts/lock-requirements.sh or scripts/setup.sh"
