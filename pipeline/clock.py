"""Wall time of this process from its start, imports included: what a stage costs the budget.

A stage's own ``time.time() - t0`` misses the seconds Python spends importing torch, timm and SMP before ``main``
runs (5-10 s on 2 CPU cores, every training process). The budget (:mod:`pipeline.plan.budget`) counts them, so the
check that a run kept to its budget must too: :func:`process_seconds` reads the process's start from the kernel.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.io import read_json, write_json
from pipeline.paths import PROC_SELF_STAT, PROC_UPTIME


def start_ticks(stat: str) -> int:
    """The process's start time in clock ticks after boot: field 22 of ``/proc/<pid>/stat`` (proc(5)). The command
    name (field 2) is in parentheses and may hold spaces, so the fields are counted after its last ``)``.

    >>> start_ticks("4242 (python -m x) S 1 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + " 987654 12345")
    987654
    """
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[19])  # fields 3.. follow the name: field 22 is the 20th of them


def process_seconds() -> float | None:
    """Seconds since this process started; ``None`` where ``/proc`` is not there (not Linux)."""
    try:
        stat = PROC_SELF_STAT.read_text()
        uptime = float(PROC_UPTIME.read_text().split()[0])
    except OSError:
        return None
    return max(0.0, uptime - start_ticks(stat) / os.sysconf("SC_CLK_TCK"))


def record_stage_seconds(metrics_json: Path) -> None:
    """Add ``stage_seconds`` (this process so far) to a stage's metrics JSON; a stage's entry point calls it last,
    so the number is the stage's whole cost. Nothing is written where ``/proc`` is missing."""
    seconds = process_seconds()
    if seconds is not None:
        write_json(metrics_json, {**read_json(metrics_json), "stage_seconds": round(seconds, 1)})
