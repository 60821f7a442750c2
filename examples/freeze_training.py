"""Freeze training on the demo CNN: training time saved against accuracy lost.

Trains :class:`cca_monitor.demo.DemoCNN` on the bundled MNIST digits twice with the same seed and
the same CCA monitor: once normally, once with :class:`cca_monitor.freeze.FreezeTraining`, which
freezes each layer (with the BatchNorm after it) bottom-up once its SVCCA distance to the previous
snapshot stays under the threshold. Prints a markdown table of fit time, validation accuracy and
loss, and when each layer froze.

Run::

    python examples/freeze_training.py --out freeze_run

``--smoke`` trains on a few batches only (a test runs it that way).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cca_monitor.callback import CCAMonitor
from cca_monitor.demo import DEFAULT_MAX_EPOCHS, DemoResult, run_demo
from cca_monitor.freeze import FreezeTraining

GROUPS = {"conv1": ["bn1"], "conv2": ["bn2"]}
"""Each convolution freezes with the BatchNorm that follows it."""


@dataclass(frozen=True)
class Outcome:
    """One training run: the demo's result, its CPU time and when each layer froze."""

    result: DemoResult
    cpu_seconds: float
    frozen_at: dict[str, int]


def fit(out: Path, args: argparse.Namespace, *, freeze: bool) -> Outcome:
    """Train the demo with the monitor, and with freeze training if ``freeze``."""
    monitor = CCAMonitor(measures=[args.measure], num_snapshots=args.num_snapshots)
    freezer = FreezeTraining(
        monitor,
        threshold=args.threshold,
        patience=args.patience,
        measure=args.measure,
        groups=GROUPS,
    )
    callbacks = [monitor, freezer] if freeze else [monitor]
    started = time.process_time()
    result = run_demo(
        out, max_epochs=args.epochs, seed=args.seed, callbacks=callbacks, fast_dev=args.smoke
    )
    return Outcome(result, time.process_time() - started, freezer.frozen_at)


def table(rows: Sequence[tuple[str, Outcome]]) -> str:
    """A markdown table: one row per run."""
    lines = [
        "| run | fit wall time (s) | process CPU time (s) | validation accuracy | "
        "validation loss | frozen layers (step) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, outcome in rows:
        result = outcome.result
        frozen = ", ".join(f"{layer} ({step})" for layer, step in outcome.frozen_at.items())
        lines.append(
            f"| {name} | {result.seconds:.1f} | {outcome.cpu_seconds:.1f} | "
            f"{result.val_accuracy:.2%} | {result.val_loss:.4f} | {frozen or 'none'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Train both runs and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("freeze_run"))
    parser.add_argument("--epochs", type=int, default=DEFAULT_MAX_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", default="svcca")
    parser.add_argument("--threshold", type=float, default=0.02)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--num-snapshots", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="a few batches only (seconds)")
    args = parser.parse_args(argv)

    baseline = fit(args.out / "baseline", args, freeze=False)
    frozen = fit(args.out / "freeze", args, freeze=True)
    print(table([("no freezing", baseline), ("freeze training", frozen)]))
    wall = 1.0 - frozen.result.seconds / baseline.result.seconds
    cpu = 1.0 - frozen.cpu_seconds / baseline.cpu_seconds
    lost = baseline.result.val_accuracy - frozen.result.val_accuracy
    print(
        f"\ntime saved: {wall:.1%} wall, {cpu:.1%} CPU; "
        f"accuracy lost: {lost * 100:.2f} percentage points"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
