"""Peak resident memory of analysing a store of N snapshots; used by test_memory.

Usage: python memory_probe.py DIR NUM_SNAPSHOTS. Prints the peak RSS in MiB.
"""

import resource
import sys
from pathlib import Path

import torch

from cca_monitor import SnapshotStore, analyse_snapshots

ROWS, NEURONS, LAYERS = 4096, 64, 2


def main(directory: Path, num_snapshots: int) -> None:
    store = SnapshotStore(directory)
    generator = torch.Generator().manual_seed(0)
    base = {f"layer{i}": torch.randn(ROWS, NEURONS, generator=generator) for i in range(LAYERS)}
    for step in range(num_snapshots):
        store.write(
            step,
            {
                k: v + 0.01 * step * torch.randn(ROWS, NEURONS, generator=generator)
                for k, v in base.items()
            },
        )
    del base
    analysis = analyse_snapshots(store, ["svcca", "pwcca"])
    assert len(analysis.records) == LAYERS * 2 * (2 * num_snapshots - 1)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
