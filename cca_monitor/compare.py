"""Compare the final representations of several runs, layer by layer.

Runs monitored on the same probe set (for example the same architecture trained with other
seeds, learning rates or labels) are compared at their last snapshot, or at a given step: for
each layer present in every run, the distance (1 - similarity) of every pair of runs forms an
(R, R) matrix, where R is the number of runs. The runs are then grouped by average-linkage
hierarchical clustering (UPGMA) of those matrices.

PWCCA is asymmetric (its weights come from the first argument's canonical variates), so for
PWCCA the matrix holds the mean of both orders, ``(d(a, b) + d(b, a)) / 2``. The other measures
are symmetric and computed once per pair.

Activation matrices are (num_datapoints, num_neurons), as everywhere in the package; the rows
of two runs are the same probe datapoints only if both runs were monitored on the same probe with
the same sampling settings, which :func:`compare_runs` checks in the runs' ``metadata.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cca_monitor.convergence import layer_distances, report_problems
from cca_monitor.similarity import Measure, check_measures
from cca_monitor.storage import SNAPSHOT_DIR_NAME, SnapshotStore, find_store

__all__ = [
    "ASYMMETRIC_MEASURES",
    "COMPARISON_JSON_NAME",
    "RunComparison",
    "average_linkage",
    "compare_runs",
    "cut_tree",
    "format_comparison",
    "leaves_order",
]

log = logging.getLogger(__name__)

ASYMMETRIC_MEASURES = ("pwcca",)
"""Measures whose two argument orders differ; their run distances are the mean of both."""
COMPARISON_JSON_NAME = "comparison.json"
DENDROGRAM_NAME = "dendrogram.png"
PROBE_KEY = "probe_fingerprint"
SAMPLING_KEYS = ("conv_mode", "max_rows", "seed")
"""Metadata entries that decide which rows a snapshot holds; runs must agree on them."""

_HEATMAP_COLORMAP = "magma_r"
_MAX_ANNOTATED_RUNS = 12
_MIN_FIGURE_WIDTH = 4.5
"""Inches: wide enough for the titles with two runs."""
_LABEL_INCHES_PER_CHARACTER = 0.075
"""About the width of one character of a tick label, in inches (10 points)."""
_MEAN_NAME = "mean over layers"
_UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")


# -- average-linkage clustering ---------------------------------------------------------------


def _check_distance_matrix(distances: np.ndarray) -> np.ndarray:
    matrix = np.asarray(distances, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(
            f"`distances` must be a square (R, R) matrix with R >= 2, got shape {matrix.shape}"
        )
    if not np.isfinite(matrix).all():
        raise ValueError(
            "`distances` contains NaN or inf: those pairs could not be compared; cluster "
            "another layer, or fix the runs whose distances are missing"
        )
    if not np.allclose(matrix, matrix.T) or np.any(np.diag(matrix) != 0) or np.any(matrix < 0):
        raise ValueError(
            f"`distances` must be symmetric, non-negative and zero on the diagonal, got\n{matrix}"
        )
    return matrix


def average_linkage(distances: np.ndarray) -> np.ndarray:
    """Average-linkage (UPGMA) agglomerative clustering of R items.

    At each step the two clusters with the smallest mean pairwise distance between their
    members are merged. The result has the layout of ``scipy.cluster.hierarchy.linkage``:
    item ``i`` is cluster ``i``, and the cluster formed at step ``s`` is cluster ``R + s``.

    Args:
        distances: (R, R) symmetric matrix with a zero diagonal, R >= 2.

    Returns:
        Array of shape (R - 1, 4); row ``s`` is ``[a, b, distance, size]``: the ids of the
        merged clusters (``a < b``), their average-linkage distance and the new cluster's size.

    Raises:
        ValueError: If ``distances`` is not square, symmetric, finite and zero on the diagonal.

    Example:
        >>> d = np.array([[0.0, 0.1, 0.9], [0.1, 0.0, 0.8], [0.9, 0.8, 0.0]])
        >>> average_linkage(d).round(3).tolist()
        [[0.0, 1.0, 0.1, 2.0], [2.0, 3.0, 0.85, 3.0]]
    """
    matrix = _check_distance_matrix(distances)
    count = matrix.shape[0]
    between = np.full((2 * count - 1, 2 * count - 1), np.inf)
    between[:count, :count] = matrix
    sizes = [1] * count + [0] * (count - 1)
    active = list(range(count))
    rows = []
    for new in range(count, 2 * count - 1):
        block = between[np.ix_(active, active)] + np.diag(np.full(len(active), np.inf))
        first, second = np.unravel_index(np.argmin(block), block.shape)
        a, b = sorted((active[first], active[second]))
        sizes[new] = sizes[a] + sizes[b]
        rows.append([a, b, between[a, b], sizes[new]])
        active = [item for item in active if item not in (a, b)]
        merged = (sizes[a] * between[a, active] + sizes[b] * between[b, active]) / sizes[new]
        between[new, active] = between[active, new] = merged
        active.append(new)
    return np.array(rows, dtype=np.float64)


def leaves_order(linkage: np.ndarray) -> list[int]:
    """The items in dendrogram order: left to right, each merge's first cluster on the left.

    Args:
        linkage: (R - 1, 4) array from :func:`average_linkage`.

    Returns:
        A permutation of ``range(R)``.

    Example:
        >>> leaves_order(np.array([[0.0, 2.0, 0.1, 2.0], [1.0, 3.0, 0.5, 3.0]]))
        [1, 0, 2]
    """
    count = len(linkage) + 1
    order, pending = [], [2 * count - 2]
    while pending:
        node = pending.pop()
        if node < count:
            order.append(node)
        else:
            left, right = (int(item) for item in linkage[node - count, :2])
            pending.extend((right, left))
    return order


def cut_tree(linkage: np.ndarray, k: int) -> list[int]:
    """Labels of the R items when the dendrogram is cut into ``k`` clusters.

    The first ``R - k`` merges are applied. Clusters are numbered 0, 1, ... in the order of
    their first item, so item 0 is always in cluster 0.

    Args:
        linkage: (R - 1, 4) array from :func:`average_linkage`.
        k: Number of clusters, 1 <= k <= R.

    Returns:
        One label per item.

    Raises:
        ValueError: If ``k`` is not an int in [1, R].

    Example:
        >>> cut_tree(np.array([[0.0, 2.0, 0.1, 2.0], [1.0, 3.0, 0.5, 3.0]]), 2)
        [0, 1, 0]
    """
    count = len(linkage) + 1
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= count:
        raise ValueError(f"`k` must be an int from 1 to the number of runs ({count}), got {k!r}")
    cluster_of = list(range(count))
    members: dict[int, list[int]] = {item: [item] for item in range(count)}
    for step, (a, b) in enumerate(linkage[: count - k, :2].astype(int).tolist()):
        members[count + step] = members.pop(a) + members.pop(b)
    for cluster, items in members.items():
        for item in items:
            cluster_of[item] = cluster
    numbering = {cluster: label for label, cluster in enumerate(dict.fromkeys(cluster_of))}
    return [numbering[cluster] for cluster in cluster_of]


# -- the comparison ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RunComparison:
    """Distances between the final representations of several runs, per layer.

    Attributes:
        runs: A short label per run (the shortest distinct ending of its path, or the given
            names), in the order the runs were given.
        layers: The layers compared (present in every run), bottom to top.
        measure: The measure, e.g. ``"pwcca"``.
        distances: ``{layer: (R, R) array}``: 1 - similarity of each pair of runs; symmetric,
            zero on the diagonal, NaN where a pair could not be compared. Read-only.
        paths: Each run's snapshot folder.
        steps: The step of the snapshot compared, per run.
        symmetrized: True when ``measure`` is asymmetric (PWCCA) and each entry is the mean of
            both argument orders.
    """

    runs: tuple[str, ...]
    layers: tuple[str, ...]
    measure: str
    distances: dict[str, np.ndarray]
    paths: tuple[Path, ...]
    steps: tuple[int, ...]
    symmetrized: bool

    @property
    def mean_distances(self) -> np.ndarray:
        """(R, R) element-wise mean of the layers' distance matrices."""
        return np.mean([self.distances[layer] for layer in self.layers], axis=0)

    @property
    def description(self) -> str:
        """What the matrices hold, e.g. ``"pwcca distance (mean of both orders)"``."""
        suffix = " (mean of both orders)" if self.symmetrized else ""
        return f"{self.measure} distance{suffix}"

    def _matrix(self, layer: str | None) -> np.ndarray:
        if layer is None:
            return self.mean_distances
        if layer not in self.distances:
            raise ValueError(f"`layer` {layer!r} was not compared; layers: {list(self.layers)}")
        return self.distances[layer]

    def linkage(self, layer: str | None = None) -> np.ndarray:
        """Average-linkage clustering of the runs, see :func:`average_linkage`.

        Args:
            layer: The layer whose distances to cluster; None clusters
                :attr:`mean_distances`.

        Returns:
            (R - 1, 4) array in ``scipy.cluster.hierarchy.linkage`` layout.

        Raises:
            ValueError: If ``layer`` was not compared or its distances hold NaN.
        """
        return average_linkage(self._matrix(layer))

    def dendrogram_order(self, layer: str | None = None) -> list[int]:
        """Run indices in dendrogram order (similar runs next to each other)."""
        return leaves_order(self.linkage(layer))

    def cluster_labels(self, k: int, *, layer: str | None = None) -> list[int]:
        """Split the runs into ``k`` groups by cutting the dendrogram, see :func:`cut_tree`.

        Args:
            k: Number of groups, from 1 to the number of runs.
            layer: Cluster this layer's distances; None uses :attr:`mean_distances`.

        Returns:
            One label per run, in run order; the first run's group is 0.
        """
        return cut_tree(self.linkage(layer), k)

    def to_json(self) -> str:
        """The comparison as JSON text; NaN distances are ``null``.

        Holds ``measure``, ``symmetrized``, ``runs``, ``paths``, ``steps``, ``layers``,
        ``distances`` ({layer: R x R nested lists}), ``mean_distances`` and ``clustering``
        ({layer or "mean over layers": {"linkage": ..., "order": ...}}, for the matrices
        without NaN).
        """
        content = {
            "measure": self.measure,
            "symmetrized": self.symmetrized,
            "runs": list(self.runs),
            "paths": [str(path) for path in self.paths],
            "steps": list(self.steps),
            "layers": list(self.layers),
            "distances": {layer: _json_matrix(self.distances[layer]) for layer in self.layers},
            "mean_distances": _json_matrix(self.mean_distances),
            "clustering": self._clustering(),
        }
        return json.dumps(content, indent=2, allow_nan=False) + "\n"

    def _clustering(self) -> dict[str, dict[str, list[Any]]]:
        named = {layer: self.distances[layer] for layer in self.layers}
        named[_MEAN_NAME] = self.mean_distances
        clustering = {}
        for name, matrix in named.items():
            if np.isfinite(matrix).all():
                linkage = average_linkage(matrix)
                clustering[name] = {"linkage": linkage.tolist(), "order": leaves_order(linkage)}
        return clustering

    def _label_inches(self) -> float:
        """About how long the longest run label is when drawn, in inches."""
        return _LABEL_INCHES_PER_CHARACTER * max(len(run) for run in self.runs)

    def heatmap_figure(self, layer: str) -> Figure:
        """Draw one layer's (R, R) distance matrix, runs in the given order."""
        matrix = self._matrix(layer)
        labels = self._label_inches()
        width = max(_MIN_FIGURE_WIDTH, 2.5 + 0.45 * len(self.runs) + labels)
        figure = Figure(figsize=(width, 2.2 + 0.4 * len(self.runs) + 0.7 * labels))
        figure.set_layout_engine("constrained")
        axes = figure.add_subplot()
        colormap = mpl.colormaps[_HEATMAP_COLORMAP].with_extremes(bad="0.8")
        image = axes.imshow(np.ma.masked_invalid(matrix), cmap=colormap, vmin=0.0, vmax=1.0)
        if len(self.runs) <= _MAX_ANNOTATED_RUNS:
            _annotate(axes, matrix)
        axes.set_xticks(range(len(self.runs)), self.runs, rotation=45, ha="right")
        axes.set_yticks(range(len(self.runs)), self.runs)
        axes.set_title(f"{self.description}\nbetween runs, layer {layer}")
        figure.colorbar(image, ax=axes, label="distance (1 - similarity)")
        return figure

    def dendrogram_figure(self) -> Figure:
        """Draw the average-linkage dendrogram of each layer and of the mean over layers.

        A layer whose distances hold NaN gets an empty panel that says so.
        """
        names = [*self.layers, _MEAN_NAME]
        labels = self._label_inches()
        width = max(_MIN_FIGURE_WIDTH, 1.5 + 0.5 * len(self.runs) + 0.7 * labels)
        figure = Figure(figsize=(width, 0.4 + (2.4 + 0.7 * labels) * len(names)))
        figure.set_layout_engine("constrained")
        panels = figure.subplots(len(names), 1, squeeze=False)[:, 0]
        for axes, name in zip(panels, names, strict=True):
            matrix = self._matrix(None if name == _MEAN_NAME else name)
            if np.isfinite(matrix).all():
                _draw_dendrogram(axes, average_linkage(matrix), self.runs)
            else:
                axes.text(0.5, 0.5, "some pairs could not be compared", ha="center")
                axes.set_axis_off()
            axes.set_title(name, fontsize="medium")
        figure.suptitle(f"average-linkage clustering\n{self.description}")
        return figure

    def write(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write ``comparison.json``, one heatmap per layer and the dendrograms as PNG.

        Heatmaps are ``distances_<layer>.png`` (characters other than letters, digits, ``.``,
        ``_`` and ``-`` in the layer name become ``_``); the dendrograms are
        ``dendrogram.png``.

        Args:
            directory: Destination folder, created if missing.

        Returns:
            The written paths: the JSON file, the heatmaps in layer order, the dendrogram.
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        json_path = folder / COMPARISON_JSON_NAME
        json_path.write_text(self.to_json(), encoding="utf-8")
        paths = [json_path]
        for layer in self.layers:
            path = folder / f"distances_{_UNSAFE_FILE_CHARACTERS.sub('_', layer)}.png"
            self.heatmap_figure(layer).savefig(path)
            paths.append(path)
        self.dendrogram_figure().savefig(folder / DENDROGRAM_NAME)
        paths.append(folder / DENDROGRAM_NAME)
        log.info("Wrote the comparison of %d runs to %s", len(self.runs), folder)
        return paths


def _json_matrix(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(value) else value for value in row] for row in matrix.tolist()]


def _annotate(axes: Axes, matrix: np.ndarray) -> None:
    for (row, column), value in np.ndenumerate(matrix):
        if math.isfinite(value):
            color = "white" if value > 0.5 else "black"
            axes.text(
                column, row, f"{value:.2f}", ha="center", va="center", color=color, fontsize="small"
            )


def _draw_dendrogram(axes: Axes, linkage: np.ndarray, labels: Sequence[str]) -> None:
    """Draw the tree with leaves at height 0 and each merge at its linkage distance."""
    count = len(labels)
    order = leaves_order(linkage)
    position = {item: float(x) for x, item in enumerate(order)}
    height = dict.fromkeys(range(count), 0.0)
    for step, (a, b, distance, _size) in enumerate(linkage):
        left, right = int(a), int(b)
        axes.plot(
            [position[left], position[left], position[right], position[right]],
            [height[left], distance, distance, height[right]],
            color="C0",
        )
        position[count + step] = (position[left] + position[right]) / 2
        height[count + step] = float(distance)
    axes.set_xticks(range(count), [labels[item] for item in order], rotation=45, ha="right")
    axes.set_xlim(-0.5, count - 0.5)
    axes.set_ylim(0.0, max(1.0, float(linkage[:, 2].max())) * 1.02)
    axes.set_ylabel("distance")


# -- loading runs -----------------------------------------------------------------------------


def _run_folder(store: SnapshotStore) -> Path:
    directory = store.directory
    return directory.parent if directory.name == SNAPSHOT_DIR_NAME else directory


def _run_labels(folders: Sequence[Path]) -> list[str]:
    """The shortest path endings that tell the runs apart."""
    parts = [folder.parts for folder in folders]
    for length in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(p[-length:]) for p in parts]
        if len(set(labels)) == len(labels):
            break
    return labels


def _check_run_dirs(run_dirs: Sequence[str | os.PathLike[str]]) -> None:
    if isinstance(run_dirs, (str, os.PathLike)) or not isinstance(run_dirs, Sequence):
        raise TypeError(
            f"`run_dirs` must be a sequence of run folders, got {type(run_dirs).__name__}; "
            "wrap paths in a list"
        )
    if len(run_dirs) < 2:
        raise ValueError(f"`run_dirs` must name at least 2 runs to compare, got {list(run_dirs)}")


def _check_names(names: Sequence[str] | None, count: int) -> None:
    if names is None:
        return
    if isinstance(names, str) or len(names) != count or len(set(names)) != count:
        raise ValueError(f"`names` must be {count} distinct labels, one per run, got {names!r}")


def _check_same_probe(runs: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> None:
    """Raise if the runs were monitored on different probes or sampled rows differently."""
    missing = [run for run, meta in zip(runs, metadata, strict=True) if PROBE_KEY not in meta]
    if missing:
        warnings.warn(
            f"runs {missing} record no probe fingerprint in their metadata.json; the "
            "comparison assumes every run saw the same probe inputs in the same order",
            stacklevel=3,
        )
    for key in (PROBE_KEY, *SAMPLING_KEYS):
        groups: dict[str, list[str]] = {}
        for run, meta in zip(runs, metadata, strict=True):
            if key in meta:
                groups.setdefault(str(meta[key]), []).append(run)
        if len(groups) > 1:
            shown = {value[:12]: members for value, members in groups.items()}
            raise ValueError(
                f"the runs differ in {key!r} ({shown}): their snapshots hold different "
                "datapoints and cannot be compared; compare runs monitored on the same probe "
                "with the same conv_mode, max_rows and seed"
            )


def _snapshot_step(store: SnapshotStore, run: str, step: int | None) -> int:
    steps = store.steps()
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ValueError(f"run {run!r} has no snapshot at step {step}; its steps: {steps}")
    return step


def _common_layers(
    runs: Sequence[str], snapshots: Sequence[Mapping[str, torch.Tensor]], order: Sequence[str]
) -> list[str]:
    """Layers present in every snapshot, in ``order`` then snapshot order; warn about others."""
    everywhere = set.intersection(*(set(snapshot) for snapshot in snapshots))
    seen = dict.fromkeys([*order, *(layer for s in snapshots for layer in s)])
    partial = {
        layer: [run for run, snapshot in zip(runs, snapshots, strict=True) if layer not in snapshot]
        for layer in seen
        if layer not in everywhere
    }
    if partial:
        warnings.warn(
            f"layers missing from some runs are left out (layer: runs without it): {partial}",
            stacklevel=3,
        )
    common = [layer for layer in seen if layer in everywhere]
    if not common:
        raise ValueError(f"the runs {list(runs)} have no layer in common")
    return common


def _select_layers(
    runs: Sequence[str], snapshots: Sequence[Mapping[str, torch.Tensor]], layers: Sequence[str]
) -> list[str]:
    if isinstance(layers, str) or not layers:
        raise ValueError(f"`layers` must be a non-empty sequence of layer names, got {layers!r}")
    absent = {
        layer: [run for run, snapshot in zip(runs, snapshots, strict=True) if layer not in snapshot]
        for layer in layers
    }
    absent = {layer: missing for layer, missing in absent.items() if missing}
    if absent:
        raise ValueError(f"`layers` not stored in every run (layer: runs without it): {absent}")
    return list(dict.fromkeys(layers))


def _distance_matrix(
    activations: Sequence[torch.Tensor], measure: str, *, symmetrize: bool
) -> tuple[np.ndarray, list[str]]:
    """(R, R) distances of one layer across runs, and the problems met on the way."""
    count = len(activations)
    matrix = np.zeros((count, count))
    problems: list[str] = []
    for i in range(count):
        for j in range(i + 1, count):
            orders = [(i, j), (j, i)] if symmetrize else [(i, j)]
            values = []
            for first, second in orders:
                distances, messages = layer_distances(
                    activations[first], activations[second], [measure]
                )
                values.append(distances[measure])
                problems.extend(messages)
            matrix[i, j] = matrix[j, i] = float(np.mean(values))
    matrix.setflags(write=False)
    return matrix, list(dict.fromkeys(problems))


def compare_runs(
    run_dirs: Sequence[str | os.PathLike[str]],
    *,
    measure: Measure = "pwcca",
    layers: Sequence[str] | None = None,
    step: int | None = None,
    names: Sequence[str] | None = None,
) -> RunComparison:
    """Compare the final representations of several runs on the same probe, layer by layer.

    Args:
        run_dirs: Two or more runs: each a log dir holding ``cca_snapshots/``, or a snapshot
            folder itself (see :func:`cca_monitor.storage.find_store`).
        measure: One of :data:`cca_monitor.similarity.MEASURES`. PWCCA, being asymmetric, is
            symmetrized: each entry is the mean of both argument orders.
        layers: Layers to compare, each stored in every run; None compares every layer that
            all runs store and warns about the others.
        step: Compare the snapshots at this step (stored in every run); None takes each run's
            last snapshot, its final representation.
        names: Labels for the runs; None labels each by the shortest ending of its path that
            tells the runs apart.

    Returns:
        A :class:`RunComparison`.

    Raises:
        TypeError: If ``run_dirs`` is a single path.
        ValueError: If fewer than 2 runs are given or a run is given twice, a measure or
            ``names`` is invalid, the runs were monitored on different probes (their
            ``probe_fingerprint`` differs) or with different row sampling, or a requested step
            or layer is missing from a run.
        FileNotFoundError: If a path holds no snapshots.

    Example:
        >>> cmp = compare_runs(["runs/seed_0", "runs/seed_1", "runs/seed_2"])  # doctest: +SKIP
        >>> cmp.distances["fc1"].shape, cmp.cluster_labels(2)  # doctest: +SKIP
        ((3, 3), [0, 0, 1])
    """
    _check_run_dirs(run_dirs)
    (measure,) = check_measures([measure])
    stores = [find_store(path) for path in run_dirs]
    folders = [_run_folder(store).resolve() for store in stores]
    if len(set(folders)) != len(folders):
        raise ValueError(f"`run_dirs` names the same run more than once: {list(run_dirs)}")
    _check_names(names, len(stores))
    runs = list(names) if names is not None else _run_labels(folders)
    metadata = [store.read_metadata() for store in stores]
    _check_same_probe(runs, metadata)
    steps = [_snapshot_step(store, run, step) for store, run in zip(stores, runs, strict=True)]
    snapshots = [store.read(s) for store, s in zip(stores, steps, strict=True)]
    if layers is None:
        chosen = _common_layers(runs, snapshots, metadata[0].get("layers", []))
    else:
        chosen = _select_layers(runs, snapshots, layers)
    symmetrize = measure in ASYMMETRIC_MEASURES
    distances, problems = {}, {}
    for layer in chosen:
        activations = [snapshot[layer] for snapshot in snapshots]
        distances[layer], layer_problems = _distance_matrix(
            activations, measure, symmetrize=symmetrize
        )
        if layer_problems:
            problems[layer] = layer_problems
    report_problems(problems)
    return RunComparison(
        runs=tuple(runs),
        layers=tuple(chosen),
        measure=measure,
        distances=distances,
        paths=tuple(store.directory for store in stores),
        steps=tuple(steps),
        symmetrized=symmetrize,
    )


def format_comparison(comparison: RunComparison) -> str:
    """A plain-text table per layer: the runs' distance matrix and the run legend.

    Example:
        >>> cmp = RunComparison(("a", "b"), ("fc",), "svcca", {"fc": np.array([[0, .3], [.3, 0]])},
        ...                     (Path("a"), Path("b")), (10, 10), False)
        >>> print(format_comparison(cmp))
        svcca distance between runs (final snapshots)
        [0] a (step 10)
        [1] b (step 10)
        <BLANKLINE>
        layer fc
               [0]    [1]
        [0]  0.000  0.300
        [1]  0.300  0.000
    """
    count = len(comparison.runs)
    title = f"{comparison.description} between runs (final snapshots)"
    lines = [title]
    lines += [
        f"[{index}] {run} (step {step})"
        for index, (run, step) in enumerate(zip(comparison.runs, comparison.steps, strict=True))
    ]
    label_width = len(f"[{count - 1}]")
    header = " " * label_width + "".join(f"{f'[{i}]':>7}" for i in range(count))
    for layer in comparison.layers:
        lines += ["", f"layer {layer}", header]
        for index, row in enumerate(comparison.distances[layer]):
            cells = "".join(f"{'n/a':>7}" if math.isnan(v) else f"{v:>7.3f}" for v in row)
            lines.append(f"{f'[{index}]':<{label_width}}{cells}")
    return "\n".join(lines)
