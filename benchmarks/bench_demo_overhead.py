"""The demo's training wall time with CCAMonitor attached vs without it (median of 3 pairs).

Run: ``python benchmarks/bench_demo_overhead.py [--epochs 10] [--pairs 3]``. Each pair trains
the demo CNN twice with the same seed, once with ``CCAMonitor()`` (defaults: SVCCA and PWCCA,
20 snapshots) and once without, in alternating order; ``seconds`` is ``trainer.fit`` wall time.
The monitor's cost is about fixed (20 snapshots whatever the length of training), so
``--epochs`` shows how its share falls as training gets longer.

Where the monitor's time goes is measured in the same runs, by timing the monitor's steps
(probe forward, snapshot write, distances to the previous snapshot, end-of-fit analysis and
report), and the floor of any monitor that looks at activations, the plain forward of the
probe set at every snapshot without hooks, is timed on the trained model afterwards.
"""

import argparse
import functools
import statistics
import tempfile
import time
from collections import defaultdict

import _common  # noqa: F401  (fixes the thread counts first)
import torch

from cca_monitor import CCAMonitor, callback, report
from cca_monitor.callback import MonitorLogic
from cca_monitor.demo import DEFAULT_BATCH_SIZE, DEFAULT_MAX_EPOCHS, run_demo

PAIRS = 3
TARGET = 0.05
PARTS = {
    "_capture": "probe forward and layout (per snapshot)",
    "_write": "snapshot write",
    "_distances_to_previous": "distances to the previous snapshot",
    "_finish": "end of fit: analysis, figures, TensorBoard",
}
part_seconds: dict[str, list[float]] = defaultdict(list)


END_OF_FIT_PARTS = {
    (callback, "analyse_snapshots"): "analysis (distances to final, noise floors)",
    (report, "final_figure_images"): "figures (drawn once for the PNG files and TensorBoard)",
}
"""Parts of ``_finish`` timed on their own; the rest is result files and TensorBoard output."""


def _timed(owner: object, name: str, key: str) -> None:
    """Accumulate the time spent in ``owner.<name>`` into ``part_seconds[key]``."""
    function = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args: object, **kwargs: object) -> object:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            part_seconds[key][-1] += time.perf_counter() - started

    setattr(owner, name, wrapper)


for _name in PARTS:
    _timed(MonitorLogic, _name, _name)
for (_owner, _name), _label in END_OF_FIT_PARTS.items():
    _timed(_owner, _name, _label)


def fit_seconds(
    with_monitor: bool, epochs: int
) -> tuple[float, CCAMonitor | None, torch.nn.Module]:
    monitor = CCAMonitor() if with_monitor else None
    if with_monitor:
        for key in [*PARTS, *END_OF_FIT_PARTS.values()]:
            part_seconds[key].append(0.0)
    with tempfile.TemporaryDirectory() as out:
        result = run_demo(out, max_epochs=epochs, callbacks=[monitor] if monitor else [])
        return result.seconds, monitor, result.model


def plain_probe_forward_seconds(model: torch.nn.Module, probe: torch.Tensor) -> float:
    """Median time of one forward of the probe, no hooks, in training-sized batches."""
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(7):
            started = time.perf_counter()
            for batch in probe.split(DEFAULT_BATCH_SIZE):
                model(batch)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_MAX_EPOCHS)
    parser.add_argument("--pairs", type=int, default=PAIRS)
    args = parser.parse_args()
    print(_common.environment())
    print(
        f"demo: {args.epochs} epochs, {args.pairs} pairs; load average at start: {_common.load()}"
    )
    without, with_monitor = [], []
    for pair in range(args.pairs):
        order = [False, True] if pair % 2 == 0 else [True, False]
        for monitored in order:
            seconds, monitor, model = fit_seconds(monitored, args.epochs)
            (with_monitor if monitored else without).append(seconds)
            if monitor is not None:
                last_monitor, last_model = monitor, model
        print(f"pair {pair}: without {without[-1]:.2f} s, with {with_monitor[-1]:.2f} s")
    base, ours = statistics.median(without), statistics.median(with_monitor)
    print(
        f"median without {base:.2f} s, with monitor {ours:.2f} s: "
        f"{100 * (ours / base - 1):+.1f}% wall time (target <= +{100 * TARGET:.0f}%)"
    )
    snapshots = 1 + len({record.step for record in last_monitor.previous_distances})
    print(f"\nwhere the monitor's time goes (median over the {args.pairs} monitored runs):")
    total = 0.0
    for name, label in PARTS.items():
        seconds = statistics.median(part_seconds[name])
        total += seconds
        print(f"  {label:45s} {seconds:6.2f} s  {100 * seconds / base:5.1f}% of the training")
    print("  of the end of fit:")
    for label in END_OF_FIT_PARTS.values():
        seconds = statistics.median(part_seconds[label])
        print(f"    {label:55s} {seconds:6.2f} s")
    print(
        f"  {'all':45s} {total:6.2f} s: within {100 * TARGET:.0f}% for trainings longer than "
        f"{total / TARGET:.0f} s on this machine"
    )
    floor = snapshots * plain_probe_forward_seconds(last_model, last_monitor._probe)
    print(
        f"floor: {snapshots} plain probe forwards ({len(last_monitor._probe)} examples in "
        f"batches of {DEFAULT_BATCH_SIZE}, no hooks) {floor:.2f} s = "
        f"{100 * floor / base:.1f}% of the training"
    )
    print(f"load average at end: {_common.load()}")


if __name__ == "__main__":
    main()
