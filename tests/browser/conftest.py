"""Browser tests: Debian's chromium driven by npm's playwright-core (scripts/setup_browser.sh
installs both; no test downloads a browser). Each scenario is a node script in this folder
that prints `RESULT <json>`; the tests assert on that and on the server's side."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", ROOT / "output" / "browser"))

Scenario = Callable[..., dict[str, Any]]


def _missing() -> str | None:
    if shutil.which(os.environ.get("CHROMIUM_PATH", "chromium")) is None:
        return "chromium is not installed"
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed in tests/browser"
    return None


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Scenario:
    """Runs `node tests/browser/NAME.mjs` with keyword arguments as its JSON argument (plus
    `artifacts`, this test's screenshot folder) and returns its RESULT object."""
    missing = _missing()
    if missing:  # the set-up installs both; a missing one is a broken set-up, not a skip
        pytest.fail(f"{missing}: run scripts/setup_browser.sh")
    artifacts = ARTIFACTS / request.node.name
    shutil.rmtree(artifacts, ignore_errors=True)

    def run(name: str, timeout_s: float = 120.0, **args: Any) -> dict[str, Any]:
        args = {"artifacts": str(artifacts), **args}
        proc = subprocess.run(["node", str(HERE / f"{name}.mjs"), json.dumps(args)], cwd=HERE,
                              capture_output=True, text=True, timeout=timeout_s)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise AssertionError(f"scenario {name} failed (rc {proc.returncode}):\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
        return result

    return run
