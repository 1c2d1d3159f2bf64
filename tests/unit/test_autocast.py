"""bf16 autocast on the CPU only where the CPU computes bf16 natively (pipeline.predict.cpu_has_bf16)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from pipeline import predict
from pipeline.paths import CPUINFO
from pipeline.predict import autocast, cpu_flags_have_bf16, cpu_has_bf16


def test_native_bf16_is_read_from_the_flags_lines_only() -> None:
    amd = "processor : 0\nmodel name : AMD EPYC\nflags : fpu sse2 avx2 fma\n"
    sapphire = "processor : 0\nmodel name : Intel Xeon\nflags : fpu avx2 avx512f amx_bf16 amx_tile\n"
    cooper = "flags\t\t: fpu avx512f avx512_bf16\nbugs : none\n"
    assert not cpu_flags_have_bf16(amd)
    assert cpu_flags_have_bf16(sapphire) and cpu_flags_have_bf16(cooper)
    assert not cpu_flags_have_bf16("bugs : avx512_bf16\n")  # a flag's name on another line is no flag


@pytest.mark.skipif(not CPUINFO.is_file(), reason="reads Linux's /proc/cpuinfo")
def test_this_machine_is_judged_by_its_own_cpuinfo_flags() -> None:
    flags: set[str] = set()
    for line in CPUINFO.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags |= set(value.split())
    assert cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_cpu_bf16_autocasts_only_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    x = torch.ones(2, 2)
    for native in (True, False):
        monkeypatch.setattr(predict, "cpu_has_bf16", lambda native=native: native)
        with autocast(cpu, "bf16", cpu_bf16=True):
            got = (x @ x).dtype
        assert got == (torch.bfloat16 if native else torch.float32)
        assert isinstance(autocast(cpu, "bf16", cpu_bf16=False), contextlib.nullcontext)  # off is off
