"""Tally of the hostile-input and fault suites, printed at the end of the pytest run.

Test modules load it with `pytest_plugins = ["hostile_summary"]` and call `record(...)` for every input they try. PYTEST_DONT_REWRITE (imported before pytest sees pytest_plugins).
"""
from collections import Counter

OUTCOMES = ("clear error", "worked", "crash", "leak")
TALLY = Counter()
CRASHES = []  # (case, what happened), so the summary says which inputs crashed


def record(case, outcome, detail=""):
    """Count one input: outcome is 'clear error', 'worked', 'crash' or 'leak'."""
    assert outcome in OUTCOMES, outcome
    TALLY["inputs tried"] += outcome != "leak"
    TALLY[outcome] += 1
    if outcome in ("crash", "leak"):
        CRASHES.append((case, outcome, detail))


def pytest_terminal_summary(terminalreporter):
    if not TALLY:
        return
    tr = terminalreporter
    tr.section("hostile inputs and faults")
    tr.write_line(f"inputs tried: {TALLY['inputs tried']}, clear errors: {TALLY['clear error']}, "
                  f"worked: {TALLY['worked']}, crashes: {TALLY['crash']}, leaks: {TALLY['leak']}")
    for case, outcome, detail in CRASHES:
        tr.write_line(f"  {outcome}: {case}: {detail[:300]}")
