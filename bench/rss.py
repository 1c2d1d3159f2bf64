"""Resident memory of this process, for the benchmarks that report peak RSS (Linux /proc): one home for them."""

from __future__ import annotations


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident set size (``VmRSS``) or its peak (``VmHWM``) in MiB, from /proc/self/status."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kib / 1024


def reset_peak_rss() -> None:
    """Start the peak (``VmHWM``, which ``getrusage`` also reports) again from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
