"""The distance that unrelated representations reach, per layer and measure: the noise floor.

With finite data, CCA finds chance correlations between representations that have nothing to do
with each other, so their distance is below 1, and the more neurons per datapoint, the lower.
The noise floor of a layer is the distance of its final representation to a row-shuffled copy
of itself: same shapes and same spectrum, no relation between rows. A distance to final close
to this value means "no more related to the final representation than noise".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cca_monitor.convergence import report_problems
from cca_monitor.similarity import Measure, check_measures, random_baseline
from cca_monitor.storage import SnapshotStore

__all__ = ["noise_floors"]


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
