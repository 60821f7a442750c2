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

import contextlib
import functools
import math
import re
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cca_monitor.records import DistanceRecord, Reference
from cca_monitor.similarity import (
    ConstantInputWarning,
    Measure,
    PairMoments,
    Representation,
    SampleSizeWarning,
    check_measures,
    map_over_ranges,
)
from cca_monitor.storage import SnapshotStore

_LAYER_PROBLEMS = (SampleSizeWarning, ConstantInputWarning)
"""Warnings of the similarity functions that are reported per layer, as problems."""
_SIDE_PREFIX = re.compile(r"^(?:[xy]|x or y) (?=has |contains )")
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
    with _collected_problems(problems):
        try:
            moments = PairMoments.between(
                _representation(reference, "x"), _representation(snapshot, "y")
            )
            values = {m: 1.0 - moments.similarity(m) for m in measures}
        except (ValueError, torch.linalg.LinAlgError) as error:
            problems.append(str(error))
            values = dict.fromkeys(measures, math.nan)
    return values, list(dict.fromkeys(problems))


_routing = threading.local()
"""``_routing.problems``: the list collecting this thread's per-layer warnings, if any."""
_router_installed = False
"""Whether :func:`_warning_router` is active (in whichever thread installed it)."""


@contextlib.contextmanager
def _collected_problems(problems: list[str]) -> Iterator[None]:
    """Collect the similarity functions' per-layer warnings into ``problems``; others pass on.

    Inside :func:`_warning_router` (tasks running in parallel) only this thread's collecting
    list is set; otherwise the router is installed for the duration.
    """
    if not _router_installed:
        with _warning_router(), _collected_problems(problems):
            yield
        return
    outer = getattr(_routing, "problems", None)
    _routing.problems = problems
    try:
        yield
    finally:
        _routing.problems = outer


@contextlib.contextmanager
def _warning_router() -> Iterator[None]:
    """Send each per-layer warning to the collecting list of the thread that raised it.

    Python's ``catch_warnings`` is process-wide and cannot be entered by parallel threads, so
    it is entered once, here, around the tasks. Other warnings are shown after the context
    exits, as they would have been without it.
    """
    global _router_installed
    others: list[tuple[Warning | str, type[Warning], str, int]] = []

    def route(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: object = None,
        line: str | None = None,
    ) -> None:
        problems = getattr(_routing, "problems", None)
        if problems is not None and issubclass(category, _LAYER_PROBLEMS):
            problems.append(str(message))
        else:
            others.append((message, category, filename, lineno))

    with warnings.catch_warnings():
        for category in _LAYER_PROBLEMS:
            warnings.simplefilter("always", category)
        warnings.showwarning = route
        _router_installed = True
        try:
            yield
        finally:
            _router_installed = False
    for message, category, filename, lineno in others:
        warnings.warn_explicit(message, category, filename, lineno)


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


def prepare_snapshot(
    snapshot: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor | Representation]:
    """Each layer of a snapshot as a :class:`~cca_monitor.similarity.Representation`.

    A prepared snapshot computes each layer's moments and whitening once, however many
    snapshots it is compared with (:func:`snapshot_distances` takes it on either side). A layer
    whose activations are rejected (e.g. NaN) stays a tensor, so that :func:`layer_distances`
    reports the problem for it.
    """
    return {layer: _try_representation(activations) for layer, activations in snapshot.items()}


def _try_representation(activations: torch.Tensor) -> torch.Tensor | Representation:
    try:
        return Representation(activations)
    except ValueError:
        return activations


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
    to_final, _ = _distances(
        store, steps, measures, _reference_step(steps, reference_step), to_previous=False
    )
    return to_final


def distances_to_previous(
    store: SnapshotStore, measures: Sequence[Measure]
) -> list[DistanceRecord]:
    """Distance of every stored snapshot of every layer to the snapshot before it.

    Returns:
        Records with ``reference="previous"``, none for the first step.
    """
    _, to_previous = _distances(store, _stored_steps(store), measures, None, to_previous=True)
    return to_previous


def _stored_steps(store: SnapshotStore) -> list[int]:
    steps = store.steps()
    if not steps:
        raise ValueError(f"no snapshots found in {store.directory}")
    return steps


def _reference_step(
    steps: Sequence[int], reference_step: int | None, *, name: str = "reference_step"
) -> int:
    """``reference_step``, or the last stored step for None; raise if it is not stored."""
    if reference_step is None:
        return steps[-1]
    if reference_step not in steps:
        raise ValueError(f"{name} {reference_step} is not a stored step; steps: {steps}")
    return reference_step


def _distances(
    store: SnapshotStore,
    steps: Sequence[int],
    measures: Sequence[Measure],
    reference_step: int | None,
    *,
    to_previous: bool,
) -> tuple[list[DistanceRecord], list[DistanceRecord]]:
    """Distances of each stored snapshot to the reference one and/or to the one before it.

    One pass: every snapshot is read and prepared (:func:`prepare_snapshot`) once, so the
    reference's moments and whitening are computed once for all snapshots, and each snapshot's
    serve both its comparisons. The steps are split into consecutive ranges, one
    single-threaded task per core (:func:`~cca_monitor.similarity.map_over_ranges`), each range
    after the first reading the snapshot before it once more. Memory holds the reference and,
    per core, the previous and the current snapshot.

    Returns:
        ``(to_reference, to_previous)`` records; the first is empty when ``reference_step`` is
        None, the second when ``to_previous`` is False.
    """
    measures = check_measures(measures)
    reference = None
    if reference_step is not None:
        reference = prepare_snapshot(store.read(reference_step))
        for activations in reference.values():
            if isinstance(activations, Representation):
                activations.prepare()  # shared by the parallel tasks below
    work = functools.partial(
        _distances_over_steps, store, steps, measures, reference, reference_step, to_previous
    )
    with _warning_router():
        parts = map_over_ranges(len(steps), work, min_per_task=MIN_STEPS_PER_TASK)
    found: dict[Reference, list[DistanceRecord]] = {"final": [], "previous": []}
    problems: dict[str, list[str]] = {}
    for part_found, part_problems in parts:
        for kind, records in part_found.items():
            found[kind].extend(records)
        for layer, messages in part_problems.items():
            problems.setdefault(layer, []).extend(messages)
    report_problems(problems)
    return found["final"], found["previous"]


MIN_STEPS_PER_TASK = 2
"""The snapshots are split into one range per core when each range has this many."""


def _distances_over_steps(
    store: SnapshotStore,
    steps: Sequence[int],
    measures: Sequence[Measure],
    reference: Mapping[str, torch.Tensor | Representation] | None,
    reference_step: int | None,
    to_previous: bool,
    start: int,
    stop: int,
) -> tuple[dict[Reference, list[DistanceRecord]], dict[str, list[str]]]:
    """The distances of :func:`_distances` for ``steps[start:stop]``, and their problems.

    A range that does not begin with the first step reads the snapshot before it as its first
    previous one.
    """
    found: dict[Reference, list[DistanceRecord]] = {"final": [], "previous": []}
    problems: dict[str, list[str]] = {}

    def prepared(step: int) -> Mapping[str, torch.Tensor | Representation]:
        return reference if step == reference_step else prepare_snapshot(store.read(step))

    previous = prepared(steps[start - 1]) if to_previous and start > 0 else None
    for step in steps[start:stop]:
        snapshot = prepared(step)
        bases = {"final": reference, "previous": previous if to_previous else None}
        for kind, base in bases.items():
            if base is None:
                continue
            records, step_problems = snapshot_distances(
                base, snapshot, measures, step=step, kind=kind
            )
            found[kind].extend(records)
            for layer, messages in step_problems.items():
                problems.setdefault(layer, []).extend(messages)
        previous = snapshot
    return found, problems


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
    known_previous: Sequence[DistanceRecord] = (),
) -> RunAnalysis:
    """Distances to the final and to the previous snapshot, and the convergence summary.

    Args:
        store: The run's snapshots.
        measures: Measure names; the first one defines the convergence steps.
        reference_step: The snapshot treated as final; None means the last one.
        threshold: Distance counted as converged.
        layers: Layer order for reports; None means the order found in the reference.
        known_previous: Distances to the previous snapshot already computed from these
            snapshots (the monitor logs them during training). Used as they are when they
            cover every measure at every stored step after the first; otherwise all distances
            to the previous snapshot are computed here.

    Returns:
        A :class:`RunAnalysis`.
    """
    measures = check_measures(measures)
    steps = _stored_steps(store)
    reference = _reference_step(steps, reference_step)
    reuse = _covers(known_previous, steps[1:], measures)
    to_final, to_previous = _distances(store, steps, measures, reference, to_previous=not reuse)
    if reuse:
        to_previous = [record for record in known_previous if record.reference == "previous"]
    found = list(dict.fromkeys(record.layer for record in to_final))
    ordered = [layer for layer in (layers or found) if layer in found]
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


def _covers(
    records: Sequence[DistanceRecord], steps: Sequence[int], measures: Sequence[str]
) -> bool:
    """Whether ``records`` hold distances to the previous snapshot for exactly these steps."""
    found = {(r.step, r.measure) for r in records if r.reference == "previous"}
    return len(records) > 0 and found == {(s, m) for s in steps for m in measures}


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
    step = _reference_step(_stored_steps(store), step, name="`step`")
    floors: dict[str, dict[str, float]] = {measure: {} for measure in measures}
    problems: dict[str, list[str]] = {}
    for layer, activations in store.read(step).items():
        layer_problems = problems.setdefault(layer, [])
        with _collected_problems(layer_problems):
            try:
                similarity = _shuffled_similarities(activations, measures, repeats, seed)
            except (ValueError, torch.linalg.LinAlgError) as error:
                layer_problems.append(str(error))
                similarity = dict.fromkeys(measures, math.nan)
        if not layer_problems:
            del problems[layer]
        for measure in measures:
            floors[measure][layer] = 1.0 - similarity[measure]
    report_problems(problems)
    return floors


def _shuffled_similarities(
    activations: torch.Tensor, measures: Sequence[Measure], repeats: int, seed: int
) -> dict[str, float]:
    """``random_baseline(activations, activations, m)`` for every measure ``m`` at once.

    The same shuffles as :func:`~cca_monitor.similarity.random_baseline`; the unshuffled side is
    prepared once and each shuffle's moments serve every measure.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    original = Representation(activations)
    generator = torch.Generator().manual_seed(seed)
    values: dict[str, list[float]] = {measure: [] for measure in measures}
    for _ in range(repeats):
        order = torch.randperm(activations.shape[0], generator=generator)
        shuffled = Representation(activations[order.to(activations.device)], name="y")
        moments = PairMoments.between(original, shuffled)
        for measure in measures:
            values[measure].append(moments.similarity(measure))
    return {measure: sum(found) / len(found) for measure, found in values.items()}


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


def reference_name(summary: Mapping[str, Any]) -> str:
    """What the distances "to final" of a run summary were measured to, in words.

    Example:
        >>> reference_name({"steps": [0, 5, 9], "reference_step": 9})
        'final representation'
        >>> reference_name({"steps": [0, 5, 9], "reference_step": 5})
        'snapshot at step 5'
    """
    steps, reference = summary["steps"], summary.get("reference_step")
    if reference is None or reference == steps[-1]:
        return "final representation"
    return f"snapshot at step {reference}"


def table_steps(steps: Sequence[int], count: int, *, reference: int | None = None) -> list[int]:
    """Up to ``count`` of ``steps`` evenly picked, first and last included, plus ``reference``.

    The columns of the printed and HTML distance tables, ascending.

    Example:
        >>> table_steps([0, 10, 20, 30, 40, 50, 60], 4, reference=10)
        [0, 10, 20, 40, 60]
    """
    count = min(len(steps), count)
    picked = {steps[round(i * (len(steps) - 1) / max(count - 1, 1))] for i in range(count)}
    if reference is not None:
        picked.add(reference)
    return sorted(picked)


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
