"""The pure-plan import contract is an allow-list: every module and dependency not allowed is listed as forbidden.

import-linter has no "may import only" contract, so `.importlinter` spells the allow-list out as a
`forbidden` contract; this test fails when a new discoverd module or a new dependency is not in it.
"""

from __future__ import annotations

import configparser
import pkgutil
import re
import tomllib
from pathlib import Path

import discoverd
from discoverd import agent

ROOT = Path(__file__).resolve().parents[3]
ALLOWED = {"discoverd.agent", "discoverd.agent.model", "discoverd.schema", "discoverd.errors"}
"""What agent.plan may reach besides the standard library (errors: the schema's own import)."""
ALLOWED_THIRD_PARTY = {"pydantic"}
"""What the model and the schema are made of."""
IMPORT_NAMES = {"pyyaml": "yaml", "pydantic-settings": "pydantic_settings"}
"""Distribution name -> import name where they differ."""


def contract() -> tuple[set[str], set[str]]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    section = parser["importlinter:contract:pure-plan"]
    return set(section["source_modules"].split()), set(section["forbidden_modules"].split())


def test_every_other_discoverd_module_is_forbidden_to_the_plan() -> None:
    sources, forbidden = contract()
    assert "discoverd.agent.plan" in sources
    modules = {f"discoverd.{m.name}" for m in pkgutil.iter_modules(discoverd.__path__)} - {"discoverd.data"}
    modules |= {f"discoverd.agent.{m.name}" for m in pkgutil.iter_modules(agent.__path__)}
    missing = modules - ALLOWED - sources - forbidden - {"discoverd.agent"}
    assert not missing, f"add to .importlinter's pure-plan forbidden_modules: {sorted(missing)}"


def test_every_dependency_but_pydantic_is_forbidden_to_the_plan() -> None:
    _, forbidden = contract()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    imports = {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in names}
    missing = imports - ALLOWED_THIRD_PARTY - forbidden
    assert not missing, f"add to .importlinter's pure-plan forbidden_modules: {sorted(missing)}"
