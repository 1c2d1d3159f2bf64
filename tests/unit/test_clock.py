"""A stage's whole wall time, imports included (pipeline.clock), checked against the parent's own clock."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

from pipeline.clock import PROC_SELF_STAT, process_seconds, start_ticks

needs_proc = pytest.mark.skipif(not PROC_SELF_STAT.is_file(), reason="reads Linux's /proc")


def test_start_ticks_counts_fields_after_the_last_parenthesis() -> None:
    tail = " ".join(str(n) for n in range(3, 23))  # fields 3..22 hold their own numbers
    assert start_ticks(f"7 (python) {tail} 99") == 22
    assert start_ticks(f"7 (a) b (c)) {tail}") == 22  # a command name with spaces and parentheses


@needs_proc
def test_process_seconds_include_what_ran_before_main(tmp_path: Path) -> None:
    """A child that sleeps 1 s before asking says at least 1 s, and no more than the parent saw it live."""
    code = "import time; time.sleep(1.0); from pipeline.clock import process_seconds; print(process_seconds())"
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    lived = time.monotonic() - t0
    seconds = float(out)
    assert 1.0 <= seconds <= lived + 0.02, (seconds, lived)  # /proc/uptime and clock ticks: 10 ms steps


@needs_proc
def test_record_stage_seconds_adds_the_field_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"val_mIoU": 0.5, "epochs": 3}))
    code = (
        "import sys, time; time.sleep(0.5); from pathlib import Path; from pipeline.clock import record_stage_seconds;"
        " record_stage_seconds(Path(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, check=True)
    got = json.loads(path.read_text())
    assert got["val_mIoU"] == 0.5 and got["epochs"] == 3 and got["stage_seconds"] >= 0.5


@needs_proc
def test_this_process_is_older_than_its_own_test() -> None:
    t0 = time.monotonic()
    before = process_seconds()
    time.sleep(0.05)
    after = process_seconds()
    assert before is not None and after is not None
    assert after - before >= 0.04 and after - before <= time.monotonic() - t0 + 0.02
