"""controller.plan's import contract is an allow-list, like agent.plan's: everything else is listed as forbidden.

import-linter has no "may import only" contract, so `.importlinter`'s pure-rollout-plan spells the
allow-list out as a `forbidden` contract; this test fails when a new discoverd module or a new
dependency is not in it, so the rollout decision stays pure (schema and the standard library).
"""

from __future__ import annotations

import configparser
import pkgutil
import re
import tomllib
from pathlib import Path

import discoverd
from discoverd import controller

ROOT = Path(__file__).resolve().parents[3]
ALLOWED = {"discoverd.controller", "discoverd.schema", "discoverd.errors"}
"""What controller.plan may reach besides the standard library (errors: the schema's own import)."""
ALLOWED_THIRD_PARTY = {"pydantic"}
"""What the schema is made of."""
IMPORT_NAMES = {"pyyaml": "yaml", "pydantic-settings": "pydantic_settings"}
"""Distribution name -> import name where they differ."""


def contract() -> tuple[set[str], set[str]]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    section = parser["importlinter:contract:pure-rollout-plan"]
    return set(section["source_modules"].split()), set(section["forbidden_modules"].split())


def test_every_other_discoverd_module_is_forbidden_to_the_plan() -> None:
    sources, forbidden = contract()
    assert sources == {"discoverd.controller.plan"}
    modules = {f"discoverd.{m.name}" for m in pkgutil.iter_modules(discoverd.__path__)} - {"discoverd.data"}
    modules |= {f"discoverd.controller.{m.name}" for m in pkgutil.iter_modules(controller.__path__)}
    missing = modules - ALLOWED - sources - forbidden
    assert not missing, f"add to .importlinter's pure-rollout-plan forbidden_modules: {sorted(missing)}"


def test_every_dependency_but_pydantic_is_forbidden_to_the_plan() -> None:
    _, forbidden = contract()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    imports = {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in names}
    missing = imports - ALLOWED_THIRD_PARTY - forbidden
    assert not missing, f"add to .importlinter's pure-rollout-plan forbidden_modules: {sorted(missing)}"
