"""The ``cca-monitor`` command: ``demo`` trains with the monitor attached, ``report`` recomputes.

``compare`` puts the final representations of several runs side by side.

Examples::

    cca-monitor demo --out cca_demo
    cca-monitor report cca_demo/mnist_cnn/version_0 --measures svcca pwcca mean_cca
    cca-monitor compare runs/seed_0 runs/seed_1 runs/seed_2 --measure pwcca
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from cca_monitor.convergence import (
    RunAnalysis,
    analyse_snapshots,
    reference_name,
    table_steps,
)
from cca_monitor.similarity import MEASURES
from cca_monitor.storage import SnapshotStore, find_store

TABLE_COLUMNS = 4
"""Snapshot steps shown in the printed table (evenly picked, first and last included)."""


def _demo(args: argparse.Namespace) -> int:
    from cca_monitor.callback import CCAMonitor
    from cca_monitor.demo import run_demo

    monitor = CCAMonitor(measures=args.measures, num_snapshots=args.num_snapshots)
    result = run_demo(
        _output_folder(args.out),
        max_epochs=args.epochs,
        seed=args.seed,
        callbacks=[monitor],
        fast_dev=args.smoke,
    )
    print(
        f"Trained for {result.seconds:.1f} s: validation accuracy {result.val_accuracy:.2%}\n"
        f"TensorBoard logs: {result.log_dir}  (tensorboard --logdir {args.out})\n"
    )
    print(format_table(monitor.results, monitor.summary))
    return 0


def _report(args: argparse.Namespace) -> int:
    store = _find_store(Path(args.run_dir))
    if args.reference_step is not None and args.reference_step not in store.steps():
        raise SystemExit(
            f"cca-monitor: --reference-step {args.reference_step} is not a stored step; "
            f"steps: {store.steps()}"
        )
    out = _output_folder(args.out or store.directory.parent / "cca_report")
    try:
        metadata = store.read_metadata()
        measures = args.measures or metadata.get("measures") or ["svcca", "pwcca"]
        analysis = analyse_snapshots(
            store,
            measures,
            reference_step=args.reference_step,
            threshold=args.threshold,
            layers=metadata.get("layers"),
        )
    except ValueError as error:  # e.g. a snapshot file that cannot be read
        raise SystemExit(f"cca-monitor: {error}") from error
    from cca_monitor.report import write_report

    _clear_previous_report(out)
    paths = write_report(analysis, out, tensorboard_dir=out / REPORT_TENSORBOARD_DIR)
    if args.html and analysis.layers:
        from cca_monitor.html_report import write_html_report

        title = f"CCA convergence: {args.run_dir}"
        floors = analysis.summary["noise_floor"]
        paths.append(write_html_report(analysis, out, title=title, noise_floors=floors))
    print(format_table(analysis.records, analysis.summary))
    print(f"\nWrote {len(paths)} files and TensorBoard events to {out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from cca_monitor.compare import compare_runs, format_comparison

    try:
        comparison = compare_runs(
            args.run_dirs,
            measure=args.measure,
            layers=args.layers,
            step=args.step,
            names=args.names,
        )
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"cca-monitor: {error}") from error
    paths = comparison.write(_output_folder(args.out))
    print(format_comparison(comparison))
    print(f"\nWrote {len(paths)} files to {args.out}")
    return 0


REPORT_TENSORBOARD_DIR = "tensorboard"
"""Subfolder of the report folder that holds its TensorBoard events."""


def _clear_previous_report(out: Path) -> None:
    """Delete what an earlier ``report`` wrote in ``out``, so that this one replaces it.

    Only the report's own files go: result files, figures, ``report.html`` and the event files
    in its TensorBoard subfolder (new events would add a second point at every step).
    """
    from cca_monitor.html_report import HTML_REPORT_NAME
    from cca_monitor.plots import final_image_names, image_file_name
    from cca_monitor.storage import RESULTS_CSV_NAME, RESULTS_JSON_NAME

    names = {RESULTS_CSV_NAME, RESULTS_JSON_NAME, HTML_REPORT_NAME}
    for measure in MEASURES:
        names |= {image_file_name(name) for name in final_image_names(measure)}
    stale = [out / name for name in sorted(names)]
    stale += sorted((out / REPORT_TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    for path in stale:
        path.unlink(missing_ok=True)


def _output_folder(path: str | Path) -> Path:
    """``path`` as a folder that exists, created if needed; exits with a message if it cannot be."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(
            f"cca-monitor: cannot use {str(folder)!r} as the output folder: "
            f"{error.strerror or error}"
        ) from error
    return folder


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int >= ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its "invalid int value" message
    return parse


def _fraction(text: str) -> float:
    """An argparse type: a float in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _find_store(run_dir: Path) -> SnapshotStore:
    try:
        return find_store(run_dir)
    except FileNotFoundError as error:
        raise SystemExit(f"cca-monitor: {error}") from error


def format_table(records: RunAnalysis | Sequence, summary: dict) -> str:
    """A plain-text table: each layer's distance to final at a few steps and its convergence.

    Args:
        records: Distance records of a run (``RunAnalysis.records`` or ``CCAMonitor.results``).
        summary: The run's summary (``measure``, ``threshold``, ``convergence_step``, ``steps``
            and, when the reference is not the last snapshot, ``reference_step``, which then
            gets a column and the title).
    """
    measure, threshold = summary["measure"], summary["threshold"]
    steps = summary["steps"]
    reference = summary.get("reference_step", steps[-1])
    picks = table_steps(steps, TABLE_COLUMNS, reference=reference)
    values = {
        (r.layer, r.step): r.distance
        for r in records
        if r.reference == "final" and r.measure == measure
    }
    layers = summary["layers"]
    width = max([len("layer"), *map(len, layers)])
    header = f"{'layer':<{width}}  " + "  ".join(f"{'step ' + str(s):>10}" for s in picks)
    header += f"  {'within ' + str(threshold):>12}"
    lines = [f"{measure} distance to the {reference_name(summary)}", header, "-" * len(header)]
    for layer in layers:
        cells = "  ".join(_cell(values.get((layer, s))) for s in picks)
        converged = summary["convergence_step"].get(layer)
        reached = f"step {converged}" if converged is not None else "never"
        lines.append(f"{layer:<{width}}  {cells}  {reached:>12}")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return f"{'n/a':>10}" if value is None or math.isnan(value) else f"{value:>10.3f}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cca-monitor``."""
    parser = argparse.ArgumentParser(
        prog="cca-monitor",
        description="Watch every layer of a network converge to its final representation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train a small CNN on 5,000 real MNIST digits with the monitor attached"
    )
    demo.add_argument("--out", default="cca_demo", help="log folder (default: ./cca_demo)")
    demo.add_argument("--epochs", type=_int_at_least(1), default=None, help="training epochs")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--num-snapshots", type=_int_at_least(2), default=20)
    demo.add_argument("--measures", nargs="+", default=["svcca", "pwcca"], choices=MEASURES)
    demo.add_argument("--smoke", action="store_true", help="a few batches only (seconds)")
    demo.set_defaults(run=_demo)

    report = commands.add_parser(
        "report", help="recompute the curves of a run from its stored snapshots"
    )
    report.add_argument("run_dir", help="the run's log dir (holding cca_snapshots/)")
    report.add_argument(
        "--measures",
        nargs="+",
        choices=MEASURES,
        default=None,
        help="default: the measures the run was monitored with",
    )
    report.add_argument(
        "--reference-step",
        type=int,
        default=None,
        help="snapshot treated as final (default: the last one)",
    )
    report.add_argument(
        "--threshold",
        type=_fraction,
        default=0.1,
        help="distance counted as converged, in [0, 1] (default 0.1)",
    )
    report.add_argument("--out", default=None, help="output folder (default: RUN_DIR/cca_report)")
    report.add_argument(
        "--html",
        action="store_true",
        help="also write report.html, one self-contained page with the figures and tables",
    )
    report.set_defaults(run=_report)

    compare = commands.add_parser(
        "compare", help="compare the final representations of several runs, layer by layer"
    )
    compare.add_argument(
        "run_dirs", nargs="+", help="two or more runs' log dirs (or their cca_snapshots/)"
    )
    compare.add_argument(
        "--measure",
        choices=MEASURES,
        default="pwcca",
        help="default pwcca, symmetrized as the mean of both orders",
    )
    compare.add_argument("--layers", nargs="+", default=None, help="default: layers all runs have")
    compare.add_argument(
        "--step", type=int, default=None, help="compare this step (default: each run's last)"
    )
    compare.add_argument("--names", nargs="+", default=None, help="a label per run")
    compare.add_argument(
        "--out", default="cca_compare", help="output folder (default: ./cca_compare)"
    )
    compare.set_defaults(run=_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cca-monitor``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "epochs", 0) is None:
        from cca_monitor.demo import DEFAULT_MAX_EPOCHS

        args.epochs = DEFAULT_MAX_EPOCHS
    shown_as = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return args.run(args)
    finally:
        warnings.formatwarning = shown_as


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """A warning printed by the command: its category and message, without source lines."""
    return f"{category.__name__}: {message}\n"


if __name__ == "__main__":
    sys.exit(main())
