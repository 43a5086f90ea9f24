"""Run the real `discoverd` command as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

__all__ = ["discoverd"]


def discoverd(
    *args: str, env: Mapping[str, str] | None = None, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m discoverd ARGS` with `env` added to this environment."""
    return subprocess.run(
        [sys.executable, "-m", "discoverd", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
