"""Shared test fixtures; reports the smoke wall time of every chapter at the end of the run."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TIMES: dict[str, float] = {}


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def smoke_times() -> dict:
    return SMOKE_TIMES


def pytest_terminal_summary(terminalreporter):
    if SMOKE_TIMES:
        terminalreporter.section("chapter smoke times (hard limit 180 s, typical <= 60 s)")
        for slug, s in SMOKE_TIMES.items():
            flag = "" if s <= 60 else ("  over the typical 60 s" if s <= 180 else "  OVER THE LIMIT")
            terminalreporter.write_line(f"{slug:32s} {s:6.1f} s{flag}")
