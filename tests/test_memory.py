"""Peak memory of the end-of-training analysis does not grow with the number of snapshots."""

import subprocess
import sys
from pathlib import Path

import pytest

MAX_GROWTH = 1.2
SCRIPT = Path(__file__).with_name("memory_probe.py")


def _peak_mib(directory, num_snapshots) -> float:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(directory), str(num_snapshots)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_100_vs_10_snapshots(tmp_path):
    few = _peak_mib(tmp_path / "ten", 10)
    many = _peak_mib(tmp_path / "hundred", 100)  # 100 snapshots of 2 MiB each: 200 MiB on disk
    assert many <= MAX_GROWTH * few, f"peak RSS {many:.0f} MiB vs {few:.0f} MiB"
