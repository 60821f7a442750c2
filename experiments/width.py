"""Wider networks converge to more similar solutions (Morcos, Raghu & Bengio 2018).

For each width, several MLPs with that many units in every hidden layer are trained from
different seeds on the same digits. Every layer's final representation is recorded on the same
held-out probe images, and :func:`cca_monitor.compare.compare_runs` gives the PWCCA distance
of every pair of networks of one width. The finding: the mean pairwise distance falls as the
width grows, so the Spearman correlation of width and distance is strongly negative.

Wider layers also have more neurons, and CCA finds more chance correlation between more
neurons, so the distance of *unrelated* representations falls with width too. The script
measures that noise floor (the distance of a final representation to a row-shuffled one of
another run, see :func:`cca_monitor.random_baseline`) next to the distances between runs, and
repeats the comparison with linear CKA, whose value does not depend on the number of neurons
in that way.

Writes ``summary.json`` (``widths``, ``mean_pairwise_distance`` per width,
``spearman_width_vs_distance``), ``width.png``, one comparison folder per width and every
run's TensorBoard logs under ``--out``.

    python experiments/width.py --out runs/width           # default run
    python experiments/width.py --out /tmp/width --smoke   # seconds
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from _common import (
    MLP,
    final_snapshot_monitor,
    load_settings_split,
    mean_pairwise,
    new_figure,
    parse_args,
    save_figure,
    scaled,
    setup_run,
    spearman,
    train_run,
    write_summary,
)
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cca_monitor import SnapshotStore, random_baseline
from cca_monitor.compare import RunComparison, compare_runs

DEPTH = 3  # hidden layers, all of the same width
LEARNING_RATE = 1e-3
OPTIMIZER = "adam"
LR_SCHEDULE = "constant"
MEASURE = "pwcca"
CROSS_CHECK_MEASURE = "linear_cka"  # a measure that is not CCA-based, reported alongside
DEFAULTS = {
    "WIDTHS": (16, 32, 64, 128, 256),
    "NUM_SEEDS": 4,  # networks per width; seeds SEED ... SEED + NUM_SEEDS - 1
    "NUM_TRAIN": 2000,
    "NUM_PROBE": 3000,  # held-out digits: at least 10 per neuron of the widest layer
    "EPOCHS": 20,
    "BATCH_SIZE": 50,
    "SEED": 0,
    "MAX_STEPS": -1,
}
SMOKE = {
    "WIDTHS": (4, 8),
    "NUM_SEEDS": 2,
    "NUM_TRAIN": 200,
    "NUM_PROBE": 200,
    "EPOCHS": 1,
    "MAX_STEPS": 4,
}


def width_distances(comparison: RunComparison) -> dict[str, Any]:
    """Mean pairwise distance per layer, and over layers, of the runs of one width."""
    runs = list(range(len(comparison.runs)))
    per_layer = {
        layer: mean_pairwise(comparison.distances[layer], runs, runs) for layer in comparison.layers
    }
    return {"per_layer": per_layer, "mean": float(np.mean(list(per_layer.values())))}


def noise_floor(comparison: RunComparison, layers: Sequence[str]) -> float:
    """Mean over ``layers`` of the PWCCA distance of run 0 to row-shuffled copies of run 1."""
    first, second = (
        SnapshotStore(path).read(step)
        for path, step in zip(comparison.paths[:2], comparison.steps[:2], strict=True)
    )
    floors = [1.0 - random_baseline(first[layer], second[layer], MEASURE) for layer in layers]
    return float(np.mean(floors))


def _draw_panel(
    axes: Axes,
    widths: Sequence[int],
    per_layer: Mapping[str, Mapping[str, float]],
    means: Mapping[str, float],
    measure: str,
) -> None:
    """One measure's distance per layer and mean over layers against width."""
    keys = [str(width) for width in widths]
    for index, layer in enumerate(per_layer[keys[0]]):
        values = [per_layer[key][layer] for key in keys]
        axes.plot(widths, values, marker=".", color=f"C{index}", alpha=0.6, label=layer)
    mean_values = [means[key] for key in keys]
    axes.plot(widths, mean_values, marker="o", color="black", linewidth=2, label="mean")
    axes.set_xscale("log", base=2)
    axes.set_xticks(widths, keys)
    axes.set_xlabel("hidden units per layer")
    axes.set_ylabel(f"mean pairwise {measure} distance")
    axes.set_ylim(bottom=0)


def width_figure(summary: Mapping[str, Any], title: str) -> Figure:
    """Distance between runs of one width against width: PWCCA (left), linear CKA (right)."""
    figure = new_figure(9.0, 3.6)
    primary, cross_check = figure.subplots(1, 2)
    widths = summary["widths"]
    _draw_panel(
        primary,
        widths,
        summary["per_layer_distance"],
        summary["mean_pairwise_distance"],
        summary["measure"],
    )
    floors = ", ".join(f"{summary['noise_floor_distance'][str(w)]:.2f}" for w in widths)
    primary.legend(fontsize="x-small", ncol=2, title=f"unrelated: {floors}", title_fontsize=6)
    primary.set_title(title, fontsize="medium")
    _draw_panel(
        cross_check,
        widths,
        summary["cross_check_per_layer_distance"],
        summary["cross_check_mean_pairwise_distance"],
        summary["cross_check_measure"],
    )
    cross_check.set_title("the same runs, linear CKA", fontsize="medium")
    return figure


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "runs/width")
    setup_run(args)
    settings = scaled(DEFAULTS, SMOKE, args.smoke)
    split = load_settings_split(args, settings)
    in_features = math.prod(split.image_shape)
    per_width: dict[str, dict[str, Any]] = {}
    seconds = 0.0
    for width in settings["WIDTHS"]:
        hidden = (width,) * DEPTH
        layers = MLP(in_features, hidden).layer_names
        runs = [
            train_run(
                lambda hidden=hidden: MLP(
                    in_features,
                    hidden,
                    learning_rate=LEARNING_RATE,
                    optimizer=OPTIMIZER,
                    lr_schedule=LR_SCHEDULE,
                ),
                split,
                final_snapshot_monitor(split, layers, MEASURE),
                out=args.out,
                name=f"width_{width}_seed_{seed}",
                max_epochs=settings["EPOCHS"],
                batch_size=settings["BATCH_SIZE"],
                seed=seed,
                max_steps=settings["MAX_STEPS"],
            )
            for seed in range(settings["SEED"], settings["SEED"] + settings["NUM_SEEDS"])
        ]
        seconds += sum(run.seconds for run in runs)
        comparison = compare_runs(
            [run.run_dir for run in runs], measure=MEASURE, names=[run.name for run in runs]
        )
        comparison.write(args.out / f"comparison_width_{width}")
        cross_check = compare_runs([run.run_dir for run in runs], measure=CROSS_CHECK_MEASURE)
        per_width[str(width)] = {
            **width_distances(comparison),
            "cross_check": width_distances(cross_check),
            "noise_floor": noise_floor(comparison, layers[:-1]),
            "val_accuracy": float(np.mean([run.val_accuracy for run in runs])),
        }
    widths = list(settings["WIDTHS"])
    means = [per_width[str(width)]["mean"] for width in widths]
    summary = {
        "widths": widths,
        "mean_pairwise_distance": {k: v["mean"] for k, v in per_width.items()},
        "spearman_width_vs_distance": spearman(widths, means),
        "layers": layers,
        "per_layer_distance": {k: v["per_layer"] for k, v in per_width.items()},
        "noise_floor_distance": {k: v["noise_floor"] for k, v in per_width.items()},
        "cross_check_measure": CROSS_CHECK_MEASURE,
        "cross_check_mean_pairwise_distance": {
            k: v["cross_check"]["mean"] for k, v in per_width.items()
        },
        "cross_check_per_layer_distance": {
            k: v["cross_check"]["per_layer"] for k, v in per_width.items()
        },
        "val_accuracy": {k: v["val_accuracy"] for k, v in per_width.items()},
        "measure": MEASURE,
        "num_seeds": settings["NUM_SEEDS"],
        "dataset": args.dataset,
        "seconds": seconds,
    }
    title = f"{settings['NUM_SEEDS']} MLPs per width on {args.dataset}"
    save_figure(width_figure(summary, title), args.out / "width.png")
    write_summary(args.out, summary)


if __name__ == "__main__":
    main()
