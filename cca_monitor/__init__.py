"""Watch every layer of a network converge: CCA distances of each layer to its final representation.

Attach :class:`CCAMonitor` to a Lightning ``Trainer``, or use the pieces by hand:
:class:`ActivationRecorder` / :func:`capture_activations` to record layers, the functions of
:mod:`cca_monitor.similarity` on ``(num_datapoints, num_neurons)`` matrices, and
:class:`SnapshotStore` with :func:`distances_to_reference` for offline analysis.

Names are imported on first use, so ``import cca_monitor.similarity`` does not load Lightning
or TensorBoard.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("cca-monitor")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

_EXPORTS = {
    "CCAMonitor": "cca_monitor.callback",
    "ActivationRecorder": "cca_monitor.capture",
    "capture_activations": "cca_monitor.capture",
    "default_layer_names": "cca_monitor.capture",
    "to_datapoints": "cca_monitor.layout",
    "PairMoments": "cca_monitor.similarity",
    "Representation": "cca_monitor.similarity",
    "CCAResult": "cca_monitor.similarity",
    "MEASURES": "cca_monitor.similarity",
    "cca": "cca_monitor.similarity",
    "canonical_correlations": "cca_monitor.similarity",
    "mean_cca": "cca_monitor.similarity",
    "svcca": "cca_monitor.similarity",
    "pwcca": "cca_monitor.similarity",
    "linear_cka": "cca_monitor.similarity",
    "debiased_linear_cka": "cca_monitor.similarity",
    "random_baseline": "cca_monitor.similarity",
    "similarities": "cca_monitor.similarity",
    "gram_precision": "cca_monitor.similarity",
    "every_n_steps": "cca_monitor.schedule",
    "log_spaced": "cca_monitor.schedule",
    "evenly_spaced": "cca_monitor.schedule",
    "explicit_steps": "cca_monitor.schedule",
    "SnapshotStore": "cca_monitor.storage",
    "read_results": "cca_monitor.storage",
    "DistanceRecord": "cca_monitor.records",
    "distances_to_reference": "cca_monitor.convergence",
    "distances_to_previous": "cca_monitor.convergence",
    "convergence_steps": "cca_monitor.convergence",
    "analyse_snapshots": "cca_monitor.convergence",
    "RunAnalysis": "cca_monitor.convergence",
    "write_report": "cca_monitor.report",
    "conv_similarity": "cca_monitor.layout",
    "match_spatial": "cca_monitor.layout",
    "per_frequency_similarity": "cca_monitor.layout",
    "per_timestep": "cca_monitor.layout",
    "noise_floors": "cca_monitor.convergence",
    "find_store": "cca_monitor.storage",
    "probe_fingerprint": "cca_monitor.storage",
    "compare_runs": "cca_monitor.compare",
    "RunComparison": "cca_monitor.compare",
    "FreezeTraining": "cca_monitor.freeze",
    "write_html_report": "cca_monitor.html_report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cca_monitor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from cca_monitor.callback import CCAMonitor
    from cca_monitor.capture import ActivationRecorder, capture_activations, default_layer_names
    from cca_monitor.compare import RunComparison, compare_runs
    from cca_monitor.convergence import (
        RunAnalysis,
        analyse_snapshots,
        convergence_steps,
        distances_to_previous,
        distances_to_reference,
        noise_floors,
    )
    from cca_monitor.freeze import FreezeTraining
    from cca_monitor.html_report import write_html_report
    from cca_monitor.layout import (
        conv_similarity,
        match_spatial,
        per_frequency_similarity,
        per_timestep,
        to_datapoints,
    )
    from cca_monitor.records import DistanceRecord
    from cca_monitor.report import write_report
    from cca_monitor.schedule import evenly_spaced, every_n_steps, explicit_steps, log_spaced
    from cca_monitor.similarity import (
        MEASURES,
        CCAResult,
        PairMoments,
        Representation,
        canonical_correlations,
        cca,
        debiased_linear_cka,
        gram_precision,
        linear_cka,
        mean_cca,
        pwcca,
        random_baseline,
        similarities,
        svcca,
    )
    from cca_monitor.storage import SnapshotStore, find_store, probe_fingerprint, read_results
