"""Mean CCA of two 512-neuron layers on 10,000 datapoints: baseline, floor and ours.

Targets: at least 2x faster than the baseline, at most 1.6x the floor: one float64 Gram
product of the stacked inputs, timed on a stacked array made beforehand (numpy then uses a
symmetric rank-k update). The literal ``np.hstack([x, y]).T @ np.hstack([x, y])``, which stacks
twice and multiplies two distinct arrays, is shown for comparison only.
Run: ``python benchmarks/bench_mean_cca.py``.
"""

import _baseline
import _common
import numpy as np

from cca_monitor import similarity

N, D, REPEATS = 10_000, 512, 7


def main() -> None:
    load_before = _common.load()
    x, y = _common.correlated_pair(N, D, D)
    stacked = np.hstack([x, y])
    timings = _common.medians_in_order(
        {
            "baseline (np.cov, pinv, eigh, svd)": lambda: _baseline.mean_cca(x, y),
            "floor (numpy Gram of [x y], float64)": lambda: _baseline.floor_gram(stacked),
            "floor as written, stacking included": lambda: np.hstack([x, y]).T @ np.hstack([x, y]),
            "ours (similarity.mean_cca)": lambda: similarity.mean_cca(x, y),
        },
        REPEATS,
    )
    baseline, floor, _, ours = timings.values()
    difference = abs(similarity.mean_cca(x, y) - _baseline.mean_cca(x, y))
    _common.print_report(
        f"mean CCA, N={N}, dx=dy={D}, float64 inputs",
        timings,
        [
            _common.target("speed-up over the baseline", baseline / ours, 2.0, at_least=True),
            _common.target("ours / floor", ours / floor, 1.6, at_least=False),
            f"|ours - baseline| = {difference:.1e}",
        ],
        repeats=REPEATS,
        load_before=load_before,
    )


if __name__ == "__main__":
    main()
