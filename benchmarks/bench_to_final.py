"""Distance to the final representation for 20 snapshots of one 512-neuron layer.

Ours is what the monitor runs at the end of training: the 20 snapshots (float64) are written
to a :class:`~cca_monitor.storage.SnapshotStore` beforehand, and
:func:`cca_monitor.convergence.distances_to_reference` reads them back and computes every
distance to the last one (the final representation's moments and whitening computed once,
the snapshots split into one single-threaded range per core). Also timed: the same distances
one snapshot after the other in memory (:func:`~cca_monitor.convergence.layer_distances`),
and without any reuse. The baseline is one call of the reference algorithm per snapshot; its
time for 20 is 20 x the median of single calls sampled over the snapshots.
Target: at least 5x faster. Run: ``python benchmarks/bench_to_final.py``.
"""

import statistics
import tempfile

import _baseline
import _common
import numpy as np
import torch

from cca_monitor import similarity
from cca_monitor.convergence import distances_to_reference, layer_distances
from cca_monitor.storage import SnapshotStore

N, D, SNAPSHOTS, ROUNDS, BASELINE_CALLS_PER_ROUND = 10_000, 512, 20, 4, 1


def snapshots_towards(final: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` snapshots that approach ``final``; the last one is ``final`` itself."""
    rng = np.random.default_rng(1)
    scale = final.std(axis=0)
    return [
        final + (1.0 - k / (count - 1)) * scale * rng.standard_normal(final.shape)
        for k in range(count)
    ]


def ours(store: SnapshotStore) -> list[float]:
    return [record.distance for record in distances_to_reference(store, ["mean_cca"])]


def one_after_another(final: np.ndarray, snapshots: list[np.ndarray]) -> list[float]:
    reference = similarity.Representation(final)
    return [layer_distances(reference, s, ["mean_cca"])[0]["mean_cca"] for s in snapshots]


def without_reuse(final: np.ndarray, snapshots: list[np.ndarray]) -> list[float]:
    return [1.0 - similarity.mean_cca(final, s) for s in snapshots]


def main() -> None:
    load_before = _common.load()
    final, _ = _common.correlated_pair(N, D, D)
    snapshots = snapshots_towards(final, SNAPSHOTS)
    # the numpy baseline first, before torch runs any product (see _common.medians_in_order)
    sampled = np.linspace(0, SNAPSHOTS - 2, ROUNDS * BASELINE_CALLS_PER_ROUND).astype(int)
    baseline_calls, baseline_values = [], {}
    for k in sampled:
        elapsed, baseline_values[k] = _common.timed(
            lambda k=k: _baseline.mean_cca(final, snapshots[k])
        )
        baseline_calls.append(elapsed)
    floor_calls = [
        _common.seconds(lambda k=k: (snapshots[k].T @ snapshots[k], final.T @ snapshots[k]))
        for k in sampled
    ]
    with tempfile.TemporaryDirectory() as directory:
        store = SnapshotStore(directory)
        for step, snapshot in enumerate(snapshots):
            store.write(step, {"fc": torch.from_numpy(snapshot)})
        distances = ours(store)  # warm-up, and the values checked below
        ours_times = [_common.seconds(lambda: ours(store)) for _ in range(ROUNDS)]
    differences = [abs(distances[k] - (1.0 - value)) for k, value in baseline_values.items()]
    in_turn_times = [
        _common.seconds(lambda: one_after_another(final, snapshots)) for _ in range(ROUNDS)
    ]
    reuse_off_times = [
        _common.seconds(lambda: without_reuse(final, snapshots)) for _ in range(ROUNDS)
    ]
    timings = {
        f"baseline, {SNAPSHOTS} calls ({SNAPSHOTS} x median call)": SNAPSHOTS
        * statistics.median(baseline_calls),
        f"ours, {SNAPSHOTS} stored snapshots (distances_to_reference)": statistics.median(
            ours_times
        ),
        "ours, one after another in memory (layer_distances)": statistics.median(in_turn_times),
        f"ours without reuse ({SNAPSHOTS} x mean_cca)": statistics.median(reuse_off_times),
        f"floor: each snapshot's Gram and cross product with the final (numpy, {SNAPSHOTS} x "
        "median)": SNAPSHOTS * statistics.median(floor_calls),
    }
    baseline, mine, _, _, floor = timings.values()
    _common.print_report(
        f"distance to final, {SNAPSHOTS} snapshots of a ({N}, {D}) layer, mean CCA",
        timings,
        [
            _common.target("speed-up over 20 baseline calls", baseline / mine, 5.0, at_least=True),
            f"baseline calls timed: {len(baseline_calls)}, over snapshots spread along the run",
            f"ours / floor: {mine / floor:.2f}x; the floor alone is {baseline / floor:.2f}x "
            "faster than the baseline",
            f"|ours - baseline| over those snapshots <= {max(differences):.1e}",
        ],
        repeats=ROUNDS,
        load_before=load_before,
    )


if __name__ == "__main__":
    main()
