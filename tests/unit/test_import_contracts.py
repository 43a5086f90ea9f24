"""The pure-plan import contracts are allow-lists: every module and dependency not allowed is listed as forbidden.

import-linter has no "may import only" contract, so `.importlinter` spells each allow-list out as a
`forbidden` contract: `pure-plan` for agent.plan, `pure-rollout-plan` for controller.plan. These tests
fail when a new discoverd module or a new dependency is not in it, so the decisions stay pure (their
model, the schema and the standard library).
"""

from __future__ import annotations

import configparser
import importlib
import pkgutil
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

import discoverd

ROOT = Path(__file__).resolve().parents[2]
IMPORT_NAMES = {"pyyaml": "yaml", "pydantic-settings": "pydantic_settings"}
"""Distribution name -> import name where they differ."""


@dataclass(frozen=True)
class Contract:
    section: str
    plan: str
    """The decision the contract keeps pure (its sources may hold more: agent.model, agent.states)."""
    package: str
    allowed: frozenset[str]
    """What the plan may reach besides the standard library (errors: the schema's own import)."""
    allowed_third_party: frozenset[str] = frozenset({"pydantic"})
    """What the model and the schema are made of."""

    def read(self) -> tuple[set[str], set[str]]:
        parser = configparser.ConfigParser()
        parser.read(ROOT / ".importlinter")
        section = parser[f"importlinter:contract:{self.section}"]
        return set(section["source_modules"].split()), set(section["forbidden_modules"].split())


CONTRACTS = [
    Contract(
        "pure-plan",
        "discoverd.agent.plan",
        "discoverd.agent",
        frozenset({"discoverd.agent", "discoverd.agent.model", "discoverd.schema", "discoverd.errors"}),
    ),
    Contract(
        "pure-rollout-plan",
        "discoverd.controller.plan",
        "discoverd.controller",
        frozenset({"discoverd.controller", "discoverd.schema", "discoverd.errors"}),
    ),
]


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.section)
def test_every_other_discoverd_module_is_forbidden_to_the_plan(contract: Contract) -> None:
    sources, forbidden = contract.read()
    assert contract.plan in sources
    modules = {f"discoverd.{m.name}" for m in pkgutil.iter_modules(discoverd.__path__)} - {"discoverd.data"}
    modules |= {
        f"{contract.package}.{m.name}" for m in pkgutil.iter_modules(importlib.import_module(contract.package).__path__)
    }
    missing = modules - contract.allowed - sources - forbidden
    assert not missing, f"add to .importlinter's {contract.section} forbidden_modules: {sorted(missing)}"


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.section)
def test_every_dependency_but_pydantic_is_forbidden_to_the_plan(contract: Contract) -> None:
    _, forbidden = contract.read()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    imports = {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in names}
    missing = imports - contract.allowed_third_party - forbidden
    assert not missing, f"add to .importlinter's {contract.section} forbidden_modules: {sorted(missing)}"
