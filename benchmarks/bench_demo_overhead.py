"""The demo's training wall time with CCAMonitor attached vs without it (median of 3 pairs).

Run: ``python benchmarks/bench_demo_overhead.py``. Each pair trains the demo CNN twice with the
same seed, once with ``CCAMonitor()`` (defaults: SVCCA and PWCCA, 20 snapshots) and once
without, in alternating order; ``seconds`` is ``trainer.fit`` wall time.
"""

import statistics
import tempfile

from cca_monitor import CCAMonitor
from cca_monitor.demo import run_demo

PAIRS = 3


def fit_seconds(with_monitor: bool) -> float:
    callbacks = [CCAMonitor()] if with_monitor else []
    with tempfile.TemporaryDirectory() as out:
        return run_demo(out, callbacks=callbacks).seconds


def main() -> None:
    without, with_monitor = [], []
    for pair in range(PAIRS):
        order = [False, True] if pair % 2 == 0 else [True, False]
        for monitored in order:
            (with_monitor if monitored else without).append(fit_seconds(monitored))
        print(f"pair {pair}: without {without[-1]:.2f} s, with {with_monitor[-1]:.2f} s")
    base, ours = statistics.median(without), statistics.median(with_monitor)
    print(f"median without {base:.2f} s, with monitor {ours:.2f} s: "
          f"{100 * (ours / base - 1):+.1f}% wall time (target <= +5%)")


if __name__ == "__main__":
    main()
