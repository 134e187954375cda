"""Writing a benchmark's JSON report: one place for the folder, the format and the message."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    """Writes `report` to the file `path` as indented JSON, creating its folder, and prints where.

    Every report also records the host's 1 / 5 / 15-minute load average when it was written
    (``load_average_at_write``): timings from a busy host are then recognisable as such.
    """
    report = {**report, "load_average_at_write": [round(v, 2) for v in os.getloadavg()]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
