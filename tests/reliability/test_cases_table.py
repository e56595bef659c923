"""Every case of the table in docs/reliability.md, run through the `metricrec` command: the documented
exit status and message, one line, no traceback, no hostile allocation (benchmarks/reliability_cases.py)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.reliability_cases import CASES, run_all  # noqa: E402


@pytest.fixture(scope="module")
def results():
    return run_all()


def test_every_case_has_its_documented_outcome(results):
    bad = {case.what: r["problems"] for case, r in results if r["problems"]}
    assert bad == {}


def test_the_table_in_the_docs_lists_every_case():
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    missing = [case.what for case in CASES if f"| {case.what} |" not in doc]
    assert missing == []
