"""SVCCA (keep 99% of the variance) of two 512-neuron layers on 10,000 datapoints.

Target: at least 4x faster than the baseline recipe (a full SVD of each centered input, keep
the leading directions, then the baseline CCA). Run: ``python benchmarks/bench_svcca.py``.
"""

import _baseline
import _common

from cca_monitor import similarity

N, D, KEEP, REPEATS = 10_000, 512, 0.99, 5


def main() -> None:
    load_before = _common.load()
    x, y = _common.correlated_pair(N, D, D)
    timings = _common.medians_in_order(
        {
            "baseline (full SVDs, then np.cov CCA)": lambda: _baseline.svcca(x, y, KEEP),
            "ours (similarity.svcca)": lambda: similarity.svcca(x, y, keep=KEEP),
        },
        REPEATS,
    )
    baseline, ours = timings.values()
    difference = abs(similarity.svcca(x, y, keep=KEEP) - _baseline.svcca(x, y, KEEP))
    _common.print_report(
        f"SVCCA keep={KEEP}, N={N}, dx=dy={D}, float64 inputs",
        timings,
        [
            _common.target("speed-up over the baseline", baseline / ours, 4.0, at_least=True),
            f"|ours - baseline| = {difference:.1e}",
        ],
        repeats=REPEATS,
        load_before=load_before,
    )


if __name__ == "__main__":
    main()
