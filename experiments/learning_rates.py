"""Learning rates and distinct clusters of solutions (Morcos, Raghu & Bengio 2018).

MLPs of one architecture are trained on the same digits with several learning rates, a few
seeds each, to similar accuracy. Every layer's final representation is recorded on the same
held-out probe images; :func:`cca_monitor.compare.compare_runs` gives the PWCCA distance of
every pair of runs, and average-linkage clustering of the distances (averaged over layers) is
cut into as many clusters as there are learning rates. The finding: the clusters are the
learning-rate groups (adjusted Rand index near 1), although the accuracies are alike. The
script also reports how many runs have their nearest neighbour (smallest mean distance) in
their own learning-rate group, a weaker test that does not depend on where the tree is cut.

Writes ``summary.json`` (``learning_rates``, ``accuracy`` per run, ``adjusted_rand_index``),
``learning_rates.png``, the comparison's heatmaps and dendrograms under ``comparison/`` and
every run's TensorBoard logs under ``--out``.

    python experiments/learning_rates.py --out runs/learning_rates           # default run
    python experiments/learning_rates.py --out /tmp/learning_rates --smoke   # seconds
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from _common import (
    MLP,
    adjusted_rand_index,
    final_snapshot_monitor,
    load_settings_split,
    mean_pairwise,
    new_figure,
    parse_args,
    save_figure,
    scaled,
    setup_run,
    train_run,
    write_summary,
)
from matplotlib.figure import Figure

from cca_monitor.compare import RunComparison, compare_runs

HIDDEN = (128, 128, 128)
OPTIMIZER = "adam"
LR_SCHEDULE = "constant"  # or "cosine": each run anneals its learning rate to 0
MEASURE = "pwcca"
DEFAULTS = {
    "LEARNING_RATES": (0.0001, 0.001, 0.01),
    "NUM_SEEDS": 4,  # runs per learning rate; every run has its own seed (SEED, SEED + 1, ...)
    "NUM_TRAIN": 2000,
    "NUM_PROBE": 3000,  # held-out digits: at least 10 per neuron of the widest layer
    "EPOCHS": 20,
    "BATCH_SIZE": 50,
    "SEED": 0,
    "MAX_STEPS": -1,
}
SMOKE = {
    "LEARNING_RATES": (0.001, 0.01),
    "NUM_SEEDS": 2,
    "NUM_TRAIN": 200,
    "NUM_PROBE": 300,
    "EPOCHS": 1,
    "MAX_STEPS": 4,
}
SMOKE_HIDDEN = (16, 16)


def clustering_summary(
    comparison: RunComparison, groups: Sequence[int], num_clusters: int
) -> dict[str, Any]:
    """Cluster the runs on the mean distance over layers and on each layer; score against
    the learning-rate ``groups`` with the adjusted Rand index."""
    labels = comparison.cluster_labels(num_clusters)
    per_layer = {
        layer: adjusted_rand_index(groups, comparison.cluster_labels(num_clusters, layer=layer))
        for layer in comparison.layers
    }
    return {
        "cluster_labels": labels,
        "adjusted_rand_index": adjusted_rand_index(groups, labels),
        "adjusted_rand_index_per_layer": per_layer,
    }


def nearest_neighbour_agreement(distances: np.ndarray, groups: Sequence[int]) -> float:
    """Fraction of runs whose nearest other run (smallest distance) is in the same group."""
    others = distances + np.diag(np.full(len(groups), np.inf))
    nearest = others.argmin(axis=1)
    return float(np.mean([groups[run] == groups[other] for run, other in enumerate(nearest)]))


def group_means(distances: np.ndarray, groups: Sequence[int], num_groups: int) -> list[list[float]]:
    """(G, G) mean distance between runs of group g and runs of group h (distinct runs)."""
    members = [[i for i, g in enumerate(groups) if g == group] for group in range(num_groups)]
    return [[mean_pairwise(distances, first, second) for second in members] for first in members]


def learning_rate_figure(
    comparison: RunComparison, summary: Mapping[str, Any], title: str
) -> Figure:
    """Run-by-run mean distance over layers, ordered by learning rate (left); accuracy by
    learning rate, marked by cluster (right)."""
    figure = new_figure(9.0, 3.8)
    heatmap, scatter = figure.subplots(1, 2, width_ratios=[3, 2])
    image = heatmap.imshow(comparison.mean_distances, cmap="magma_r", vmin=0)
    names = [f"lr {lr:g} #{i}" for i, lr in enumerate(summary["run_learning_rates"])]
    heatmap.set_xticks(range(len(names)), names, rotation=90, fontsize="x-small")
    heatmap.set_yticks(range(len(names)), names, fontsize="x-small")
    heatmap.set_title(title, fontsize="medium")
    figure.colorbar(image, ax=heatmap, label=f"{MEASURE} distance, mean over layers")
    markers = "os^Dv<>p"
    for run, (lr, accuracy, cluster) in enumerate(
        zip(
            summary["run_learning_rates"],
            summary["accuracy"],
            summary["cluster_labels"],
            strict=True,
        )
    ):
        scatter.scatter(
            lr * (1 + 0.04 * (run % 4)),
            accuracy,
            marker=markers[cluster % len(markers)],
            color=f"C{cluster}",
        )
    scatter.set_xscale("log")
    scatter.set_xlabel("learning rate")
    scatter.set_ylabel("probe accuracy")
    scatter.set_title(
        f"marker = cluster; ARI = {summary['adjusted_rand_index']:.2f}", fontsize="medium"
    )
    return figure


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "runs/learning_rates")
    setup_run(args)
    settings = scaled(DEFAULTS, SMOKE, args.smoke)
    hidden = SMOKE_HIDDEN if args.smoke else HIDDEN
    split = load_settings_split(args, settings)
    in_features = math.prod(split.image_shape)
    layers = MLP(in_features, hidden).layer_names
    learning_rates = list(settings["LEARNING_RATES"])
    runs, groups = [], []
    for group, learning_rate in enumerate(learning_rates):
        first_seed = settings["SEED"] + group * settings["NUM_SEEDS"]
        for seed in range(first_seed, first_seed + settings["NUM_SEEDS"]):
            runs.append(
                train_run(
                    lambda lr=learning_rate: MLP(
                        in_features,
                        hidden,
                        learning_rate=lr,
                        optimizer=OPTIMIZER,
                        lr_schedule=LR_SCHEDULE,
                    ),
                    split,
                    final_snapshot_monitor(split, layers, MEASURE),
                    out=args.out,
                    name=f"lr_{learning_rate:g}_seed_{seed}",
                    max_epochs=settings["EPOCHS"],
                    batch_size=settings["BATCH_SIZE"],
                    seed=seed,
                    max_steps=settings["MAX_STEPS"],
                )
            )
            groups.append(group)
    comparison = compare_runs(
        [run.run_dir for run in runs], measure=MEASURE, names=[run.name for run in runs]
    )
    comparison.write(args.out / "comparison")
    accuracy = [run.val_accuracy for run in runs]
    summary = {
        "learning_rates": learning_rates,
        "runs": [run.name for run in runs],
        "run_learning_rates": [learning_rates[group] for group in groups],
        "accuracy": accuracy,
        **clustering_summary(comparison, groups, len(learning_rates)),
        "nearest_neighbour_same_learning_rate": nearest_neighbour_agreement(
            comparison.mean_distances, groups
        ),
        "mean_accuracy_per_learning_rate": {
            f"{lr:g}": float(np.mean([a for a, g in zip(accuracy, groups, strict=True) if g == i]))
            for i, lr in enumerate(learning_rates)
        },
        "mean_distance_between_learning_rates": group_means(
            comparison.mean_distances, groups, len(learning_rates)
        ),
        "layers": list(comparison.layers),
        "measure": MEASURE,
        "optimizer": OPTIMIZER,
        "dataset": args.dataset,
        "seconds": sum(run.seconds for run in runs),
    }
    title = f"{len(runs)} MLPs on {args.dataset}"
    save_figure(learning_rate_figure(comparison, summary, title), args.out / "learning_rates.png")
    write_summary(args.out, summary)


if __name__ == "__main__":
    main()
