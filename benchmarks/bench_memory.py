"""Peak memory of the distances to final over a SnapshotStore: 100 snapshots against 10.

Each count runs in a fresh process that reads an already written store and computes the
distances of every snapshot of every layer to the final one with the callback's default
measures (SVCCA and PWCCA). Reported: the peak resident memory of the process, and its rise
during the computation (peak minus the resident memory just before it), which is what the
snapshots cost. Target: 100 snapshots need at most 1.2x the memory of 10.
Run: ``python benchmarks/bench_memory.py``.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import _common
import torch

from cca_monitor.convergence import distances_to_reference
from cca_monitor.storage import SnapshotStore

COUNTS = (10, 100)
LAYERS = {"conv": (16_384, 64), "fc": (2_048, 256)}  # (num_datapoints, num_neurons), float32
MEASURES = ["svcca", "pwcca"]


def write_store(directory: Path, count: int) -> None:
    generator = torch.Generator().manual_seed(0)
    final = {name: torch.randn(shape, generator=generator) for name, shape in LAYERS.items()}
    store = SnapshotStore(directory)
    for step in range(count):
        noise = 1.0 - step / (count - 1)
        store.write(
            step * 10,
            {k: v + noise * torch.randn(v.shape, generator=generator) for k, v in final.items()},
        )


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(directory: Path) -> dict[str, float]:
    """Run in the child: compute the distances, return peak and rise in MiB."""
    before = _kib("VmRSS:")
    records = distances_to_reference(SnapshotStore(directory), MEASURES)
    peak = _kib("VmHWM:")
    return {"peak_mib": peak / 1024, "rise_mib": (peak - before) / 1024, "records": len(records)}


def run_child(directory: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(directory)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    load_before = _common.load()
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for count in COUNTS:
            directory = Path(root) / f"store{count}"
            write_store(directory, count)
            results[count] = run_child(directory)
    small, large = (results[c] for c in COUNTS)
    lines = [
        f"{c} snapshots: peak {r['peak_mib']:.0f} MiB, rise during the computation "
        f"{r['rise_mib']:.1f} MiB, {r['records']} records"
        for c, r in results.items()
    ]
    lines.append(
        _common.target(
            f"rise, {COUNTS[1]} / {COUNTS[0]} snapshots",
            large["rise_mib"] / small["rise_mib"],
            1.2,
            at_least=False,
        )
    )
    lines.append(
        _common.target(
            f"peak, {COUNTS[1]} / {COUNTS[0]} snapshots",
            large["peak_mib"] / small["peak_mib"],
            1.2,
            at_least=False,
        )
    )
    sizes = ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in LAYERS.items())
    _common.print_report(
        f"peak memory of distances to final, layers {sizes} (float32), {'+'.join(MEASURES)}",
        {},
        lines,
        repeats=None,
        load_before=load_before,
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(measure(Path(sys.argv[2]))))
    else:
        main()
