"""Mean CCA of a conv layer with spatial positions as datapoints.

1,000 images x 16x16 positions x 64 channels, i.e. (256,000, 64) matrices, as
``layout.to_datapoints(..., conv_mode="positions")`` lays them out. The activations are float32,
as a network produces them; the float64 row shows the same inputs upcast beforehand.
Target: at least 4x faster than the baseline. Run: ``python benchmarks/bench_conv.py``.
"""

import _baseline
import _common
import numpy as np

from cca_monitor import similarity

IMAGES, POSITIONS, CHANNELS, REPEATS = 1_000, 16 * 16, 64, 7


def main() -> None:
    load_before = _common.load()
    n = IMAGES * POSITIONS
    x, y = _common.correlated_pair(n, CHANNELS, CHANNELS, dtype=np.float32)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    stacked = np.hstack([x64, y64])
    timings = _common.medians_in_order(
        {
            "baseline (np.cov, pinv, eigh, svd), float32": lambda: _baseline.mean_cca(x, y),
            "baseline, float64": lambda: _baseline.mean_cca(x64, y64),
            "floor (numpy Gram of [x y], float64)": lambda: _baseline.floor_gram(stacked),
            "ours (similarity.mean_cca), float32": lambda: similarity.mean_cca(x, y),
            "ours, float64": lambda: similarity.mean_cca(x64, y64),
        },
        REPEATS,
    )
    baseline, baseline64, floor, ours, ours64 = timings.values()
    difference = abs(similarity.mean_cca(x, y) - _baseline.mean_cca(x, y))
    _common.print_report(
        f"conv mean CCA, {IMAGES} images x {POSITIONS} positions x {CHANNELS} channels "
        f"= ({n}, {CHANNELS})",
        timings,
        [
            _common.target("speed-up, float32", baseline / ours, 4.0, at_least=True),
            _common.target("speed-up, float64", baseline64 / ours64, 4.0, at_least=True),
            f"ours float32 / floor: {ours / floor:.2f}x; the floor alone is "
            f"{baseline / floor:.2f}x (float32) and {baseline64 / floor:.2f}x (float64) "
            "faster than the baseline",
            f"|ours - baseline| = {difference:.1e}",
        ],
        repeats=REPEATS,
        load_before=load_before,
    )


if __name__ == "__main__":
    main()
