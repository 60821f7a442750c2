"""Distances between snapshots: each layer to its final representation, or to the previous one.

Also the noise floor of each layer: the distance its final representation has to a row-shuffled
copy of itself, i.e. what "unrelated" looks like with these shapes. With finite data CCA finds
chance correlations between unrelated representations, so their distance is below 1, and the
more neurons per datapoint, the lower.

Pure computation over activation matrices of shape (num_datapoints, num_neurons) and stored
snapshots; no Lightning, no logging backends. The reference representation (final or previous)
is always the first argument of the similarity, so for the asymmetric PWCCA the weights come
from the reference: every snapshot of a layer is weighed by the same final structure.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cca_monitor.records import DistanceRecord, Reference
from cca_monitor.similarity import (
    Measure,
    PairMoments,
    Representation,
    SampleSizeWarning,
    check_measures,
    random_baseline,
)
from cca_monitor.storage import SnapshotStore

_SIDE_PREFIX = re.compile(r"^[xy] (?=has |contains )")
"""The side named by a similarity message, meaningless once the layer is named instead."""


def layer_distances(
    reference: torch.Tensor | Representation,
    snapshot: torch.Tensor | Representation,
    measures: Sequence[Measure],
) -> tuple[dict[str, float], list[str]]:
    """Distances (1 - similarity) of one layer's snapshot to a reference snapshot.

    Args:
        reference: Reference activations (num_datapoints, num_neurons), e.g. the final ones,
            or a :class:`~cca_monitor.similarity.Representation` of them: its moments and
            whitening are then computed once for all the snapshots compared with it.
        snapshot: Activations of the same layer and probe (num_datapoints, num_neurons), or a
            :class:`~cca_monitor.similarity.Representation` of them.
        measures: Measure names, see :data:`cca_monitor.similarity.MEASURES`.

    Returns:
        ``({measure: distance}, problems)``: a distance is NaN when it cannot be computed (too
        few datapoints, non-finite values, mismatched shapes), and ``problems`` holds one
        message per reason, for the caller to report once.
    """
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SampleSizeWarning)
        try:
            moments = PairMoments.between(
                _representation(reference, "x"), _representation(snapshot, "y")
            )
            values = {m: 1.0 - moments.similarity(m) for m in measures}
        except (ValueError, torch.linalg.LinAlgError) as error:
            problems.append(str(error))
            values = dict.fromkeys(measures, math.nan)
    problems.extend(str(w.message) for w in caught if issubclass(w.category, SampleSizeWarning))
    return values, list(dict.fromkeys(problems))


def _representation(activations: torch.Tensor | Representation, name: str) -> Representation:
    if isinstance(activations, Representation):
        return activations
    return Representation(activations, name=name)


def snapshot_distances(
    reference: Mapping[str, torch.Tensor | Representation],
    snapshot: Mapping[str, torch.Tensor | Representation],
    measures: Sequence[Measure],
    *,
    step: int,
    kind: Reference,
) -> tuple[list[DistanceRecord], dict[str, list[str]]]:
    """Distances of every layer present in both snapshots, as records at ``step``.

    Layers map to (num_datapoints, num_neurons) tensors or prepared
    :class:`~cca_monitor.similarity.Representation` objects (see :func:`layer_distances`).

    Returns:
        The records, and ``{layer: problems}`` for layers with something to report.
    """
    records: list[DistanceRecord] = []
    problems: dict[str, list[str]] = {}
    for layer, activations in snapshot.items():
        if layer not in reference:
            continue
        values, layer_problems = layer_distances(reference[layer], activations, measures)
        records.extend(DistanceRecord(step, layer, m, kind, values[m]) for m in measures)
        if layer_problems:
            problems[layer] = layer_problems
    return records, problems


def distances_to_reference(
    store: SnapshotStore,
    measures: Sequence[Measure],
    *,
    reference_step: int | None = None,
) -> list[DistanceRecord]:
    """Distance of every stored snapshot of every layer to the reference snapshot.

    Reads one snapshot at a time, so memory holds two snapshots at most.

    Args:
        store: The run's snapshots.
        measures: Measure names, see :data:`cca_monitor.similarity.MEASURES`.
        reference_step: Step of the reference snapshot; None means the last one (the final
            representation).

    Returns:
        Records with ``reference="final"``, one per (step, layer, measure). A layer missing
        from the reference snapshot gets none; problems are logged once per layer as warnings.

    Raises:
        ValueError: If the store holds no snapshots or ``reference_step`` is not one of them.
    """
    steps = _stored_steps(store)
    if reference_step is None:
        reference_step = steps[-1]
    if reference_step not in steps:
        raise ValueError(f"reference_step {reference_step} is not a stored step; steps: {steps}")
    reference = store.read(reference_step)
    return _collect(store, steps, measures, lambda _previous: reference, "final")


def distances_to_previous(
    store: SnapshotStore, measures: Sequence[Measure]
) -> list[DistanceRecord]:
    """Distance of every stored snapshot of every layer to the snapshot before it.

    Returns:
        Records with ``reference="previous"``, none for the first step.
    """
    return _collect(store, _stored_steps(store), measures, lambda previous: previous, "previous")


def _stored_steps(store: SnapshotStore) -> list[int]:
    steps = store.steps()
    if not steps:
        raise ValueError(f"no snapshots found in {store.directory}")
    return steps


def _collect(
    store: SnapshotStore,
    steps: Sequence[int],
    measures: Sequence[Measure],
    reference_for: Callable[[dict[str, torch.Tensor] | None], dict[str, torch.Tensor] | None],
    kind: Reference,
) -> list[DistanceRecord]:
    """Distances of each stored snapshot to ``reference_for(previous snapshot)``.

    Every snapshot is prepared once as :class:`~cca_monitor.similarity.Representation` per
    layer, and kept while it can serve again as a reference, so the final (or previous)
    representation's moments and whitening are computed once, not for every comparison.
    """
    measures = check_measures(measures)
    records: list[DistanceRecord] = []
    problems: dict[str, list[str]] = {}
    previous: dict[str, torch.Tensor] | None = None
    prepared: dict[int, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
    for step in steps:
        snapshot = store.read(step)
        reference = reference_for(previous)
        if reference is not None:
            step_records, step_problems = snapshot_distances(
                _prepared(reference, prepared),
                _prepared(snapshot, prepared),
                measures,
                step=step,
                kind=kind,
            )
            records.extend(step_records)
            for layer, messages in step_problems.items():
                problems.setdefault(layer, []).extend(messages)
        previous = snapshot
        # keep only what the next step can compare with again: this snapshot, the reference
        prepared = {
            key: entry
            for key, entry in prepared.items()
            if entry[0] is snapshot or entry[0] is reference
        }
    report_problems(problems)
    return records


def _prepared(
    snapshot: dict[str, torch.Tensor], cache: dict[int, tuple[dict[str, torch.Tensor], dict]]
) -> dict[str, Any]:
    """``{layer: Representation}`` of a snapshot, made once per snapshot object.

    A layer whose activations are rejected (e.g. NaN) stays a tensor, so that
    :func:`layer_distances` reports the problem for it.
    """
    if id(snapshot) not in cache:
        cache[id(snapshot)] = (snapshot, {k: _try_representation(v) for k, v in snapshot.items()})
    return cache[id(snapshot)][1]


def _try_representation(activations: torch.Tensor) -> torch.Tensor | Representation:
    try:
        return Representation(activations)
    except ValueError:
        return activations


@dataclass(frozen=True)
class RunAnalysis:
    """Everything computed from one run's snapshots.

    Attributes:
        records: Distances to the final (reference) snapshot, then to the previous snapshot.
        layers: Layers with distances to final, bottom to top (model order).
        measures: The measures computed; the first one is used for ``convergence_step``.
        summary: JSON-ready dict: ``measure``, ``threshold``, ``convergence_step``
            ({layer: first step within ``threshold`` of final, or None}), ``steps``,
            ``reference_step``, ``layers`` and ``noise_floor`` ({measure: {layer: distance of
            the reference snapshot to a row-shuffled copy of itself}}, see
            :func:`noise_floors`).
    """

    records: list[DistanceRecord]
    layers: list[str]
    measures: list[str]
    summary: dict[str, Any]


def analyse_snapshots(
    store: SnapshotStore,
    measures: Sequence[Measure],
    *,
    reference_step: int | None = None,
    threshold: float = 0.1,
    layers: Sequence[str] | None = None,
) -> RunAnalysis:
    """Distances to the final and to the previous snapshot, and the convergence summary.

    Args:
        store: The run's snapshots.
        measures: Measure names; the first one defines the convergence steps.
        reference_step: The snapshot treated as final; None means the last one.
        threshold: Distance counted as converged.
        layers: Layer order for reports; None means the order found in the reference.

    Returns:
        A :class:`RunAnalysis`.
    """
    measures = check_measures(measures)
    to_final = distances_to_reference(store, measures, reference_step=reference_step)
    to_previous = distances_to_previous(store, measures)
    found = list(dict.fromkeys(record.layer for record in to_final))
    ordered = [layer for layer in (layers or found) if layer in found]
    steps = store.steps()
    reference = steps[-1] if reference_step is None else reference_step
    summary = {
        "measure": measures[0],
        "threshold": threshold,
        "convergence_step": convergence_steps(to_final, measure=measures[0], threshold=threshold),
        "steps": steps,
        "reference_step": reference,
        "layers": ordered,
        "noise_floor": noise_floors(store, measures, step=reference),
    }
    return RunAnalysis(to_final + to_previous, ordered, measures, summary)


class LayerWarning(UserWarning):
    """A layer's distances are NaN or statistically weak (e.g. too few datapoints)."""


def noise_floors(
    store: SnapshotStore,
    measures: Sequence[Measure],
    *,
    step: int | None = None,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``1 - random_baseline(final, final)`` for every layer and measure of a run.

    Args:
        store: The run's snapshots; each layer's activations are (num_datapoints,
            num_neurons).
        measures: Measure names, see :data:`cca_monitor.similarity.MEASURES`.
        step: The snapshot to use; None means the last one (the final representation).
        repeats: Row shuffles averaged per value.
        seed: Seed of the shuffles (the global random generator is untouched).

    Returns:
        ``{measure: {layer: distance}}``, layers in snapshot order; NaN (with a warning naming
        the layer) where the measure cannot be computed, e.g. too few datapoints.

    Raises:
        ValueError: If a measure is unknown, the store is empty or has no snapshot at ``step``.

    Example:
        >>> import tempfile
        >>> store = SnapshotStore(tempfile.mkdtemp())
        >>> generator = torch.Generator().manual_seed(0)
        >>> _ = store.write(0, {"fc": torch.randn(500, 10, generator=generator)})
        >>> round(noise_floors(store, ["svcca"])["svcca"]["fc"], 2)
        0.89
    """
    measures = check_measures(measures)
    steps = store.steps()
    if not steps:
        raise ValueError(f"no snapshots found in {store.directory}")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise ValueError(f"`step` {step} is not a stored step; steps: {steps}")
    floors: dict[str, dict[str, float]] = {measure: {} for measure in measures}
    problems: dict[str, list[str]] = {}
    for layer, activations in store.read(step).items():
        for measure in measures:
            try:
                similarity = random_baseline(
                    activations, activations, measure, repeats=repeats, seed=seed
                )
            except (ValueError, torch.linalg.LinAlgError) as error:
                problems.setdefault(layer, []).append(str(error))
                similarity = math.nan
            floors[measure][layer] = 1.0 - similarity
    report_problems(problems)
    return floors


def report_problems(problems: Mapping[str, Iterable[str]]) -> None:
    """Warn about each layer with the distinct reasons its distances are NaN or biased.

    The same message for the same layer is shown once per process (Python's default warning
    filter), so a run with many snapshots warns once, not at every snapshot.
    """
    for layer, messages in problems.items():
        # both sides of a pair share the layer's shape: "x has 512 ..." and "y has 512 ..."
        # become one "layer 'fc1' has 512 ..."
        distinct = dict.fromkeys(_SIDE_PREFIX.sub("", message) for message in messages)
        warnings.warn(f"layer {layer!r} {'; '.join(distinct)}", LayerWarning, stacklevel=2)


def convergence_steps(
    records: Iterable[DistanceRecord],
    *,
    measure: str = "svcca",
    threshold: float = 0.1,
) -> dict[str, int | None]:
    """First step at which each layer came within ``threshold`` of its final representation.

    "Came within" means the distance to final is ``<= threshold`` at that snapshot and at every
    later one, so a layer that dips and moves away again counts from when it settled.

    Args:
        records: Records with ``reference="final"``; others are ignored.
        measure: The measure to read.
        threshold: Distance (1 - similarity) that counts as converged.

    Returns:
        ``{layer: step or None}`` in the order layers first appear; None when no finite
        distance is recorded.

    Example:
        >>> rs = [DistanceRecord(s, "fc", "svcca", "final", d) for s, d in [(0, .5), (5, .05),
        ...       (10, .2), (15, .0)]]
        >>> convergence_steps(rs)
        {'fc': 15}
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    curves: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        if record.reference == "final" and record.measure == measure:
            curves.setdefault(record.layer, []).append((record.step, record.distance))
    result: dict[str, int | None] = {}
    for layer, points in curves.items():
        settled: int | None = None
        for step, distance in sorted(points, reverse=True):
            if math.isnan(distance):
                continue
            if distance > threshold:
                break
            settled = step
        result[layer] = settled
    return result
