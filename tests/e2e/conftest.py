"""A failed end-to-end step's report carries what its module gathers for it (`failure_report`)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    gather = getattr(getattr(item, "module", None), "failure_report", None)
    if report.failed and report.when in ("setup", "call") and gather is not None:
        try:
            text = gather(getattr(item, "funcargs", {}))
        except Exception as error:  # the report of the failure itself must not be lost to this
            text = f"could not gather the failure report: {error!r}"
        if text:
            report.sections.append(("release logs and events", text))
