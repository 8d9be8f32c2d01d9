"""Hypothesis profiles: `ci` (derandomized, 100 examples unless a test states more) by default,
`long` (2,000 random examples) on demand, and `interpreters` (derandomized, 20 examples) for the
runs under the other Pythons (tools/other_pythons.py): those runs show that every path works on
that interpreter, while the main run's `ci` profile carries the search's depth.

Choose with HYPOTHESIS_PROFILE=long (or pytest --hypothesis-profile=long).
"""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "interpreters",
    max_examples=20,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# -- in CI, a PostgreSQL test that skips is a failure ------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("ORCHESTRIX_REQUIRE_PG") and "postgres" in item.nodeid.lower():
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} skipped, but ORCHESTRIX_REQUIRE_PG is set (CI): PostgreSQL tests must run. "
            f"Skip reason: {report.longrepr}"
        )
