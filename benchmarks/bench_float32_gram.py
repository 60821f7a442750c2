"""Float32 products (``gram_precision("float32")``): time saved and accuracy lost.

Times mean CCA with the default float64 products and with float32 products on the conv case
((256,000, 64) float32 activations, as in ``bench_conv.py``, with its baseline) and the dense
case ((10,000, 512) float64), and prints the largest difference of every measure between the
two precisions on: those inputs, the real activations of ``../shared/data/svcca_tutorial``
(when present), and inputs whose covariance has condition numbers 1e2 to 1e8.
Run: ``python benchmarks/bench_float32_gram.py``.
"""

import warnings
from pathlib import Path

import _baseline
import _common
import numpy as np

from cca_monitor import similarity

REPEATS = 7
MEASURES = ["mean_cca", "svcca", "pwcca", "linear_cka"]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "svcca_tutorial"


def in_float32(fn, *args):  # noqa: ANN001, ANN201
    with similarity.gram_precision("float32"):
        return fn(*args)


def largest_differences(x: np.ndarray, y: np.ndarray) -> str:
    """``measure: |float32 - float64|`` for every measure, and for the correlations."""
    parts = []
    for measure in MEASURES:
        exact = similarity.MEASURES[measure](x, y)
        parts.append(f"{measure} {abs(in_float32(similarity.MEASURES[measure], x, y) - exact):.1e}")
    exact = similarity.canonical_correlations(x, y).numpy()
    fast = in_float32(similarity.canonical_correlations, x, y).numpy()
    common = min(len(exact), len(fast))
    parts.append(f"correlations (max) {np.abs(fast[:common] - exact[:common]).max():.1e}")
    if len(fast) != len(exact):
        parts.append(f"COUNT {len(fast)} instead of {len(exact)} (directions dropped)")
    return ", ".join(parts)


def conditioned_pair(condition: float, n: int = 20_000, d: int = 64) -> tuple[np.ndarray, ...]:
    """float32 ``x`` whose covariance has about this condition number, and a related ``y``."""
    x, y = _common.correlated_pair(n, d, d, seed=3)
    scales = np.logspace(0.0, -0.5 * np.log10(condition), d)
    mixing = np.linalg.qr(np.random.default_rng(4).standard_normal((d, d)))[0]
    x = (x / x.std(axis=0)) * scales @ mixing
    return x.astype(np.float32), y.astype(np.float32)


def main() -> None:
    warnings.simplefilter("ignore", similarity.SampleSizeWarning)  # svhn: 5 rows per neuron
    load_before = _common.load()
    conv_x, conv_y = _common.correlated_pair(256_000, 64, 64, dtype=np.float32)
    dense_x, dense_y = _common.correlated_pair(10_000, 512, 512)
    timings = _common.medians_in_order(
        {
            "conv baseline (np.cov, pinv, eigh, svd), float32": lambda: _baseline.mean_cca(
                conv_x, conv_y
            ),
            "conv, float64 products": lambda: similarity.mean_cca(conv_x, conv_y),
            "conv, float32 products": lambda: in_float32(similarity.mean_cca, conv_x, conv_y),
            "dense 10,000 x 512, float64 products": lambda: similarity.mean_cca(dense_x, dense_y),
            "dense, float32 products": lambda: in_float32(similarity.mean_cca, dense_x, dense_y),
        },
        REPEATS,
    )
    baseline, conv64, conv32, dense64, dense32 = timings.values()
    lines = [
        _common.target(
            "conv, float32 products over the baseline", baseline / conv32, 4.0, at_least=True
        ),
        f"float32 products / float64 products: conv {conv32 / conv64:.2f}, dense "
        f"{dense32 / dense64:.2f}",
        f"conv inputs: {largest_differences(conv_x, conv_y)}",
        f"dense inputs: {largest_differences(dense_x, dense_y)}",
    ]
    if SHARED.is_dir():
        for name in ("mnist_model_{}_lay04.npy", "svhn_model_{}_lay06.npy"):
            x, y = (np.load(SHARED / name.format(k)) for k in (0, 1))
            lines.append(f"real {name.format('*')} {x.shape}: {largest_differences(x, y)}")
    else:
        lines.append(f"real activations: not found at {SHARED}")
    for condition in (1e2, 1e4, 1e6, 1e8):
        x, y = conditioned_pair(condition)
        lines.append(f"condition ~{condition:.0e}: {largest_differences(x, y)}")
    _common.print_report(
        "float32 products (gram_precision('float32')) against float64",
        timings,
        lines,
        repeats=REPEATS,
        load_before=load_before,
    )


if __name__ == "__main__":
    main()
