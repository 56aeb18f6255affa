"""The Model Zoo's code format (black and isort, line length 120; flake8) over bundle, simulator, tests, benchmarks."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PATHS = [p for p in ("bundle", "simulator", "tests", "benchmarks") if os.path.isdir(os.path.join(REPO, p))]


@pytest.mark.parametrize(
    "command",
    [
        ["black", "--check", "--quiet", "-l", "120", "--skip-magic-trailing-comma"],
        ["isort", "--check-only", "--quiet", "--profile", "black", "-l", "120"],
        ["flake8", "--max-line-length", "120"],
    ],
    ids=["black", "isort", "flake8"],
)
def test_code_format(command):
    if shutil.which(command[0]) is None:
        pytest.fail(f"{command[0]} is not installed; install requirements-dev.txt")
    result = subprocess.run(
        [sys.executable, "-m", *command, *PATHS], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
