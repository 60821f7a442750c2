"""Small immutable records shared by the computation, storage and reporting modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Reference = Literal["final", "previous"]


@dataclass(frozen=True)
class DistanceRecord:
    """One distance between a layer's snapshot and a reference snapshot of the same layer.

    Attributes:
        step: ``trainer.global_step`` at which the snapshot was taken.
        layer: Module name as in ``model.named_modules()``, e.g. ``"features.0"``.
        measure: Name of the similarity measure (``"svcca"``, ``"pwcca"``, ``"mean_cca"``,
            ``"linear_cka"``).
        reference: ``"final"`` (distance to the last snapshot) or ``"previous"`` (distance to
            the snapshot before this one).
        distance: ``1 - similarity`` in [0, 1]; NaN when it could not be computed.
    """

    step: int
    layer: str
    measure: str
    reference: Reference
    distance: float
