"""What is particular to this repository's suite; the rest is plugqdisc's pytest plugin.

Kernel tests are marked ``plugqdisc``. The plugin (plugqdisc/pytest_plugin.py,
enabled by installing the package) gives each a fresh network namespace with lo
up, and where the kernel lacks sch_plug runs them all in one lab boot, since
pyproject.toml adds ``--plugqdisc-lab`` to every run.

``PLUGQDISC_REQUIRE_LAB`` (CI sets it): with it, a session in which no kernel
test passed fails, whatever the reason (no lab, a broken lab, every kernel test
skipped), rather than going green on host tests alone.
"""

from __future__ import annotations

import os
import sys
from typing import Set

import pytest

from plugqdisc.pytest_plugin import INNER_ENV, MARKER

REQUIRE_LAB = bool(os.environ.get("PLUGQDISC_REQUIRE_LAB")) and not os.environ.get(INNER_ENV)
_kernel_tests: Set[str] = set()
_kernel_passed: Set[str] = set()


def pytest_collection_finish(session: pytest.Session) -> None:
    _kernel_tests.update(it.nodeid for it in session.items if it.get_closest_marker(MARKER))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed and report.nodeid in _kernel_tests:
        _kernel_passed.add(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE_LAB and not _kernel_passed and exitstatus == 0:
        sys.stderr.write("\nPLUGQDISC_REQUIRE_LAB: no kernel test passed (%d selected; see "
                         "the skip reasons: -rs)\n" % len(_kernel_tests))
        session.exitstatus = 1
