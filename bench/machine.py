"""The machine a benchmark ran on, written into its JSON.

Hosts of one machine type differ (an AMD EPYC without AMX, an Intel Xeon with AMX), and bfloat16
speed depends on exactly that, so every result names the CPU model and its bfloat16 instructions.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# CPU flags that decide how fast bfloat16 convolutions and matmuls can run.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo_lines() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text().splitlines() if cpuinfo.exists() else []


def cpu_model() -> str:
    """The CPU's model name (Linux `/proc/cpuinfo`), else the architecture."""
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def bf16_flags() -> list[str]:
    """The entries of `BF16_FLAGS` this CPU reports (empty where /proc/cpuinfo is absent)."""
    for line in _cpuinfo_lines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in BF16_FLAGS if flag in present]
    return []


def describe() -> str:
    """One line for a result's "machine" field, e.g. "Intel(R) Xeon(R) Processor, 2 cores, amx_bf16 ..."."""
    flags = bf16_flags()
    return f"{cpu_model()}, {os.cpu_count()} cores" + (f", {' '.join(flags)}" if flags else ", no bf16 instructions")
