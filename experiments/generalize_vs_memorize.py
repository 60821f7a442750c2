"""Generalizing vs memorizing networks (Morcos, Raghu & Bengio 2018).

Several MLPs are trained from different seeds on a small training subset with the true labels
("generalizing"), and as many on the same images with the labels shuffled by one fixed random
permutation ("memorizing", trained until they fit those labels). Every layer's final
representation is recorded on the same held-out probe images, and
:func:`cca_monitor.compare.compare_runs` gives the PWCCA distance of every pair of networks
per layer. The finding: generalizing networks are more similar to each other than memorizing
networks are, increasingly so in later layers, and a memorizing network is about as far from
a generalizing one as from another memorizing one.

Writes ``summary.json`` (``layers``, ``gen_gen``, ``mem_mem``, ``gen_mem``: mean pairwise
PWCCA distance per layer; ``mem_train_accuracy``: the lowest training accuracy of a memorizing
network on its permuted labels), ``generalize_vs_memorize.png``, the comparison's heatmaps and
dendrograms under ``comparison/`` and every run's TensorBoard logs under ``--out``.

    python experiments/generalize_vs_memorize.py --out runs/gen_mem           # default run
    python experiments/generalize_vs_memorize.py --out /tmp/gen_mem --smoke   # seconds
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from _common import (
    MLP,
    Run,
    Split,
    final_snapshot_monitor,
    load_settings_split,
    mean_pairwise,
    new_figure,
    parse_args,
    permuted_labels,
    save_figure,
    scaled,
    setup_run,
    train_run,
    write_summary,
)
from matplotlib.figure import Figure

from cca_monitor.compare import compare_runs

HIDDEN = (256, 256, 256)
LEARNING_RATE = 1e-3
MEASURE = "pwcca"
DEFAULTS = {
    "NUM_TRAIN": 1000,  # small, so that random labels can be memorized in minutes
    "NUM_PROBE": 4000,  # held-out digits: at least 10 per neuron of the widest layer
    "NUM_NETWORKS": 4,  # per group
    "EPOCHS": 100,
    "BATCH_SIZE": 50,
    "LABEL_SEED": 1234,  # the one permutation of the labels every memorizing network learns
    "SEED": 0,  # generalizing network i is seeded with SEED + i, memorizing network i with
    # SEED + NUM_NETWORKS + i: no two networks share their initialization
    "MAX_STEPS": -1,
}
SMOKE = {"NUM_TRAIN": 200, "NUM_PROBE": 300, "NUM_NETWORKS": 2, "EPOCHS": 1, "MAX_STEPS": 4}
SMOKE_HIDDEN = (16, 16)


def group_distances(
    distances: Mapping[str, np.ndarray], generalizing: Sequence[int], memorizing: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Mean pairwise distance per layer within and between the two groups of runs."""
    groups = {
        "gen_gen": (generalizing, generalizing),
        "mem_mem": (memorizing, memorizing),
        "gen_mem": (generalizing, memorizing),
    }
    return {
        key: {layer: mean_pairwise(matrix, *pair) for layer, matrix in distances.items()}
        for key, pair in groups.items()
    }


def distances_figure(summary: Mapping[str, object], title: str) -> Figure:
    """Mean pairwise PWCCA distance per layer for the three kinds of pairs."""
    figure = new_figure(5.5, 3.5)
    axes = figure.add_subplot()
    layers = summary["layers"]
    styles = {
        "gen_gen": ("generalizing vs generalizing", "C0", "o"),
        "mem_mem": ("memorizing vs memorizing", "C3", "s"),
        "gen_mem": ("generalizing vs memorizing", "C2", "^"),
    }
    for key, (label, color, marker) in styles.items():
        values = [summary[key][layer] for layer in layers]
        axes.plot(range(len(layers)), values, marker=marker, color=color, label=label)
    axes.set_xticks(range(len(layers)), layers)
    axes.set_xlabel("layer (input side left)")
    axes.set_ylabel(f"mean pairwise {MEASURE} distance")
    axes.set_ylim(bottom=0)
    axes.set_title(title, fontsize="medium")
    axes.legend(fontsize="small")
    return figure


def train_group(
    kind: str,
    split: Split,
    settings: Mapping[str, Any],
    hidden: Sequence[int],
    *,
    first_seed: int,
    **options: Any,
) -> list[Run]:
    """Train ``NUM_NETWORKS`` networks of one group, seeded ``first_seed``, ``first_seed + 1``..."""
    in_features = math.prod(split.image_shape)
    layers = MLP(in_features, hidden).layer_names
    return [
        train_run(
            lambda: MLP(in_features, hidden, learning_rate=LEARNING_RATE),
            split,
            final_snapshot_monitor(split, layers, MEASURE),
            name=f"{kind}_{index}",
            max_epochs=settings["EPOCHS"],
            batch_size=settings["BATCH_SIZE"],
            seed=first_seed + index,
            max_steps=settings["MAX_STEPS"],
            **options,
        )
        for index in range(settings["NUM_NETWORKS"])
    ]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "runs/generalize_vs_memorize")
    setup_run(args)
    settings = scaled(DEFAULTS, SMOKE, args.smoke)
    hidden = SMOKE_HIDDEN if args.smoke else HIDDEN
    split = load_settings_split(args, settings)
    random_labels = permuted_labels(split.train_labels, settings["LABEL_SEED"])
    count = settings["NUM_NETWORKS"]
    generalizing = train_group(
        "gen", split, settings, hidden, first_seed=settings["SEED"], out=args.out
    )
    memorizing = train_group(
        "mem",
        split,
        settings,
        hidden,
        first_seed=settings["SEED"] + count,
        out=args.out,
        train_labels=random_labels,
    )
    runs = generalizing + memorizing
    comparison = compare_runs(
        [run.run_dir for run in runs], measure=MEASURE, names=[run.name for run in runs]
    )
    comparison.write(args.out / "comparison")
    gen_ids = list(range(len(generalizing)))
    mem_ids = list(range(len(generalizing), len(runs)))
    summary = {
        "layers": list(comparison.layers),
        **group_distances(comparison.distances, gen_ids, mem_ids),
        "mem_train_accuracy": min(run.train_accuracy for run in memorizing),
        "gen_train_accuracy": min(run.train_accuracy for run in generalizing),
        "gen_val_accuracy": float(np.mean([run.val_accuracy for run in generalizing])),
        "mem_val_accuracy": float(np.mean([run.val_accuracy for run in memorizing])),
        "fraction_of_labels_changed": float((random_labels != split.train_labels).float().mean()),
        "measure": MEASURE,
        "num_networks_per_group": settings["NUM_NETWORKS"],
        "dataset": args.dataset,
        "seconds": sum(run.seconds for run in runs),
    }
    title = f"{count} + {count} MLPs on {args.dataset}"
    save_figure(distances_figure(summary, title), args.out / "generalize_vs_memorize.png")
    write_summary(args.out, summary)


if __name__ == "__main__":
    main()
