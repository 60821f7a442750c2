"""``CCAMonitor``: the Lightning callback that snapshots layers and reports their CCA curves.

Orchestration only: the probe forward is :func:`cca_monitor.capture.capture_activations`,
files are :class:`cca_monitor.storage.SnapshotStore`, distances come from
:mod:`cca_monitor.convergence`, and output goes through :mod:`cca_monitor.report` and
:mod:`cca_monitor.plots`.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data.dataloader import default_collate
from typing_extensions import override

from cca_monitor.capture import (
    capture_activations,
    preserved_rng_state,
    resolve_layer_names,
    unwrap_model,
)
from cca_monitor.convergence import (
    analyse_snapshots,
    prepare_snapshot,
    report_problems,
    snapshot_distances,
)
from cca_monitor.layout import DEFAULT_MAX_ROWS, ConvMode, check_layout_arguments
from cca_monitor.records import DistanceRecord
from cca_monitor.report import log_records, write_report
from cca_monitor.schedule import evenly_spaced, every_n_steps
from cca_monitor.similarity import Measure, check_measures
from cca_monitor.storage import SNAPSHOT_DIR_NAME, SnapshotStore, probe_fingerprint

ProbeSource = torch.Tensor | Dataset | DataLoader | None
Schedule = Callable[[int], bool]

CONVERGENCE_THRESHOLD = 0.1


class MonitorLogic:
    """The hooks and state of :class:`CCAMonitor`, independent of the Lightning package.

    Mixed into a ``Callback`` of ``pytorch_lightning`` here and of ``lightning.pytorch`` in
    :mod:`cca_monitor.lightning_pytorch`, so both Trainers get the same monitor.
    """

    def __init__(
        self,
        probe: ProbeSource = None,
        *,
        layers: Sequence[str] | None = None,
        measures: Sequence[Measure] = ("svcca", "pwcca"),
        num_snapshots: int = 20,
        every_n_train_steps: int | None = None,
        schedule: Schedule | None = None,
        probe_size: int = 512,
        probe_batch_size: int | None = None,
        conv_mode: ConvMode = "positions",
        max_rows: int | None = DEFAULT_MAX_ROWS,
        seed: int = 0,
        dirpath: str | Path | None = None,
        convergence_threshold: float = CONVERGENCE_THRESHOLD,
    ) -> None:
        self.measures = check_measures(measures)
        if isinstance(layers, str):
            raise TypeError(f"layers must be a sequence of names, e.g. [{layers!r}]")
        if layers is not None and not layers:
            raise ValueError("layers is empty; pass None to monitor every Conv/Linear/RNN layer")
        if every_n_train_steps is not None and schedule is not None:
            raise ValueError("give either every_n_train_steps or schedule, not both")
        if every_n_train_steps is not None:
            _check_int("every_n_train_steps", every_n_train_steps, minimum=1)
        if schedule is not None and not callable(schedule):
            raise TypeError(f"schedule must be a callable step -> bool, got {schedule!r}")
        self._fixed_schedule: Schedule | None = (
            every_n_steps(every_n_train_steps) if every_n_train_steps is not None else schedule
        )
        _check_int("num_snapshots", num_snapshots, minimum=2)
        _check_int("probe_size", probe_size, minimum=2)
        if probe_batch_size is not None:
            _check_int("probe_batch_size", probe_batch_size, minimum=1)
        if not 0.0 <= convergence_threshold <= 1.0:
            raise ValueError(
                f"convergence_threshold must be in [0, 1], got {convergence_threshold}"
            )
        if probe is not None and not isinstance(probe, (torch.Tensor, Dataset, DataLoader)):
            raise TypeError(
                "probe must be a tensor, a Dataset, a DataLoader or None, "
                f"got {type(probe).__name__}"
            )
        self.probe_source = probe
        self.layers = list(layers) if layers is not None else None
        self.num_snapshots = num_snapshots
        self.probe_size = probe_size
        self.probe_batch_size = probe_batch_size
        check_layout_arguments(conv_mode=conv_mode, max_rows=max_rows, seed=seed)
        self.capture_options = {"conv_mode": conv_mode, "max_rows": max_rows, "seed": seed}
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.convergence_threshold = convergence_threshold

        self.run_dir: Path | None = None
        self.store: SnapshotStore | None = None
        self.results: list[DistanceRecord] = []
        self.summary: dict[str, Any] = {}
        self.previous_distances: list[DistanceRecord] = []
        """Distances of each snapshot to the one before, appended as training runs (all ranks)."""
        self._schedule: Schedule | None = None
        self._probe: torch.Tensor | None = None
        self._probe_batch_size: int | None = probe_batch_size
        self._layers: list[str] = []
        self._captured: list[int] = []
        self._previous: dict[str, Any] | None = None
        """The last snapshot, prepared for the distances of the next one to it."""
        self._resumed_fingerprint: str | None = None
        self._resumed_run_dir: Path | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, measures=self.measures)

    # -- Lightning hooks ---------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._setup_fit(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._due(trainer.global_step):
            self._snapshot(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step not in self._captured:
            self._snapshot(trainer, pl_module)
        if trainer.is_global_zero:
            self._finish(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._explain_recovery(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "captured_steps": list(self._captured),
            "run_dir": str(self.run_dir) if self.run_dir is not None else None,
            "probe_fingerprint": probe_fingerprint(self._probe)
            if self._probe is not None
            else None,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._captured = list(state_dict.get("captured_steps", []))
        run_dir = state_dict.get("run_dir")
        self._resumed_run_dir = Path(run_dir) if run_dir else None
        self._resumed_fingerprint = state_dict.get("probe_fingerprint")

    # -- setup -------------------------------------------------------------------------------

    def _setup_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a new fit starts a new series; a resumed one gets its state back in load_state_dict,
        # which Lightning calls after setup
        self._captured, self._previous, self.previous_distances = [], None, []
        self._resumed_run_dir, self._resumed_fingerprint = None, None
        self.results, self.summary = [], {}
        model = unwrap_model(pl_module)
        self._layers = resolve_layer_names(model, self.layers)
        run_dir = self.dirpath if self.dirpath is not None else Path(trainer.log_dir or ".")
        self._use_run_dir(trainer, run_dir)

    def _use_run_dir(self, trainer: pl.Trainer, run_dir: Path) -> None:
        self.run_dir = Path(trainer.strategy.broadcast(str(run_dir)))
        self.store = SnapshotStore(self.run_dir / SNAPSHOT_DIR_NAME)

    def _continue_resumed_series(self, trainer: pl.Trainer) -> None:
        """After a checkpoint restore, keep writing to the resumed run's snapshot folder."""
        resumed = self._resumed_run_dir
        if resumed is None or self.dirpath is not None or resumed == self.run_dir:
            return
        if (resumed / SNAPSHOT_DIR_NAME).is_dir():
            self._use_run_dir(trainer, resumed)
        else:
            rank_zero_warn(
                f"CCAMonitor: the resumed run's snapshots ({resumed / SNAPSHOT_DIR_NAME}) are "
                f"gone; the series restarts in {self.run_dir}"
            )
            self._captured = []

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._continue_resumed_series(trainer)
        if not self._captured and self.store.steps():
            raise ValueError(
                f"{self.store.directory} already holds snapshots of another run (steps "
                f"{self.store.steps()[:5]}...); they would mix with this run's. Pass a new "
                "dirpath (or logger version), or resume that run with trainer.fit(ckpt_path=...)"
            )
        self._probe = self._resolve_probe(trainer)
        self._probe_batch_size = self.probe_batch_size or _batch_size(trainer.train_dataloader)
        fingerprint = probe_fingerprint(self._probe)
        if self._resumed_fingerprint is not None and self._resumed_fingerprint != fingerprint:
            raise ValueError(
                "the probe set differs from the one of the run being resumed (fingerprint "
                f"{fingerprint[:12]} vs {self._resumed_fingerprint[:12]}): snapshots on "
                "different inputs cannot be compared; pass the same probe, or a new dirpath"
            )
        self._schedule = self._fixed_schedule or evenly_spaced(
            _total_steps(trainer), self.num_snapshots
        )
        if trainer.is_global_zero:
            self.store.write_metadata(
                {
                    "probe_fingerprint": fingerprint,
                    "probe_shape": list(self._probe.shape),
                    "layers": self._layers,
                    "measures": self.measures,
                    **self.capture_options,
                }
            )
        if trainer.global_step not in self._captured:
            self._snapshot(trainer, pl_module, check_sizes=not self._captured)

    def _resolve_probe(self, trainer: pl.Trainer) -> torch.Tensor:
        source = self.probe_source
        if source is None:
            source = _first_loader(trainer.val_dataloaders) or _first_loader(
                trainer.train_dataloader
            )
            if source is None:
                raise ValueError(
                    "CCAMonitor found no validation or training dataloader to take the probe "
                    "from; pass probe=<tensor, Dataset or DataLoader>"
                )
        if isinstance(source, torch.Tensor):
            probe = source
        else:
            with preserved_rng_state():  # dataset transforms may draw random numbers
                probe = _first_inputs(source, self.probe_size)
        if probe.dim() == 0 or probe.shape[0] < 2:
            raise ValueError(f"the probe needs at least 2 examples, got shape {tuple(probe.shape)}")
        if probe.is_floating_point() and not bool(torch.isfinite(probe).all()):
            bad = int((~torch.isfinite(probe)).sum())
            raise ValueError(f"the probe holds {bad} NaN or infinite values; pass finite inputs")
        return probe.detach().cpu()

    # -- snapshots ---------------------------------------------------------------------------

    def _due(self, step: int) -> bool:
        return self._schedule is not None and step not in self._captured and self._schedule(step)

    def _snapshot(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, check_sizes: bool = False
    ) -> None:
        """Capture, store and compare one snapshot. Every rank runs this with the same steps."""
        step = trainer.global_step
        started = time.perf_counter()
        activations = self._capture(trainer, pl_module)
        if check_sizes:
            self._drop_too_wide(trainer, activations)
        self._captured.append(step)
        records: list[DistanceRecord] = []
        if trainer.is_global_zero:
            activations = _finite_layers(activations, step)
            cost = self._write(step, activations)
            records = self._distances_to_previous(activations, step)
            cost["cca/snapshot_seconds"] = time.perf_counter() - started
            log_records(trainer.loggers, records)
            _log_cost(trainer, cost, step)
        self.previous_distances.extend(trainer.strategy.broadcast(records, src=0))

    def _capture(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, torch.Tensor]:
        """The probe's activations, whole on rank 0; under several processes each runs a shard.

        With ``world_size > 1`` every rank forwards its contiguous slice of the probe (the row
        cap keeps the slice's share of the rows kept from the whole probe) and rank 0 gathers
        the slices in rank order, so the snapshot equals the one a single process takes.
        Other ranks return ``{}``.
        """
        shards = torch.tensor_split(self._probe, trainer.world_size)
        local = capture_activations(
            pl_module,
            shards[trainer.global_rank],
            self._layers,
            batch_size=self._probe_batch_size,
            device=pl_module.device,
            autocast_context=trainer.precision_plugin.forward_context,
            probe_offset=sum(len(shard) for shard in shards[: trainer.global_rank]),
            probe_total=len(self._probe),
            **self.capture_options,
        )
        if trainer.world_size == 1:
            return local
        parts = _gather_to_rank_zero(local, trainer)
        if not trainer.is_global_zero:
            return {}
        common = [layer for layer in local if all(layer in part for part in parts)]
        return {layer: torch.cat([part[layer] for part in parts]) for layer in common}

    def _drop_too_wide(self, trainer: pl.Trainer, activations: dict[str, torch.Tensor]) -> None:
        """Drop (defaults) or reject (named layers) layers with no more datapoints than neurons.

        Rank 0 decides (it holds the whole probe) and every rank acts on the same decision.
        """
        too_wide = {n: tuple(a.shape) for n, a in activations.items() if a.shape[0] <= a.shape[1]}
        too_wide = trainer.strategy.broadcast(too_wide, src=0)
        if not too_wide:
            return
        message = (
            f"layers {too_wide} have no more datapoints than neurons on a probe of "
            f"{self._probe.shape[0]} examples; CCA needs more (ideally 10x): raise probe_size"
        )
        if self.layers is not None:
            raise ValueError(message + " or leave those layers out of `layers`")
        rank_zero_warn(message + "; they are not monitored")
        self._layers = [name for name in self._layers if name not in too_wide]
        for name in too_wide:
            activations.pop(name, None)

    def _write(self, step: int, activations: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Store a snapshot; a failed write is reported and training goes on."""
        if not activations:
            rank_zero_warn(f"CCAMonitor: no layer could be recorded at step {step}; no snapshot")
            return {}
        try:
            path = self.store.write(step, activations)
        except OSError as error:
            rank_zero_warn(f"CCAMonitor could not write the snapshot at step {step}: {error}")
            return {}
        return {"cca/snapshot_megabytes": path.stat().st_size / 2**20}

    def _distances_to_previous(
        self, activations: Mapping[str, torch.Tensor], step: int
    ) -> list[DistanceRecord]:
        previous = self._previous if self._previous is not None else self._stored_before(step)
        self._previous = prepare_snapshot(activations)
        if previous is None:
            return []
        records, problems = snapshot_distances(
            previous, self._previous, self.measures, step=step, kind="previous"
        )
        report_problems(problems)
        return records

    def _stored_before(self, step: int) -> dict[str, Any] | None:
        earlier = [s for s in self.store.steps() if s < step]
        return prepare_snapshot(self.store.read(earlier[-1])) if earlier else None

    def _explain_recovery(self, trainer: pl.Trainer) -> None:
        if self.store is not None and trainer.is_global_zero and self._captured:
            rank_zero_warn(
                f"CCAMonitor: training stopped at step {trainer.global_step}; the "
                f"{len(self.store)} snapshots taken are kept in {self.store.directory}. "
                f"Compute the curves from them with: cca-monitor report {self.run_dir}"
            )

    # -- end of training -----------------------------------------------------------------------

    def _finish(self, trainer: pl.Trainer) -> None:
        started, step = time.perf_counter(), trainer.global_step
        if not self.store.steps():
            rank_zero_warn("CCAMonitor has no snapshots on disk; nothing to report")
            return
        analysis = analyse_snapshots(
            self.store,
            self.measures,
            threshold=self.convergence_threshold,
            layers=self._layers,
            known_previous=self.previous_distances,
        )
        self.results, self.summary = analysis.records, analysis.summary
        write_report(analysis, self.run_dir, loggers=trainer.loggers)
        _log_cost(trainer, {"cca/report_seconds": time.perf_counter() - started}, step)


class CCAMonitor(MonitorLogic, Callback):
    """Snapshot every monitored layer on a fixed probe set and report its convergence.

    At step 0 (before any update), at the scheduled steps and at the last step, the probe set
    runs through the model in eval mode without gradients (modes, RNG streams and BatchNorm
    statistics are left as they were) and each layer's activations, as (num_datapoints,
    num_neurons) matrices, are written to ``<log_dir>/cca_snapshots/``. At each snapshot the
    distance of every layer to the previous snapshot is logged at once as
    ``cca/<measure>_to_previous/<layer>``. When training ends, the distance of every snapshot to
    the final one is logged as ``cca/<measure>_to_final/<layer>`` at the snapshot's global step,
    TensorBoard loggers get a custom-scalars layout (one chart per measure, one line per layer),
    the curves and a layer x step heatmap, and ``cca_results.csv``, ``cca_results.json`` and PNG
    figures are written to the log dir.

    Args:
        probe: The probe inputs: a tensor (batch first), a map-style ``Dataset`` or a
            ``DataLoader`` whose first ``probe_size`` examples are used (the input is element 0
            of each example, or the example itself if it is a tensor), or None for the first
            ``probe_size`` examples of the first validation dataloader, else of the training one.
        layers: Module names or glob patterns (``"features.*"``); None monitors every Conv,
            Linear and recurrent module.
        measures: Measures to compute, from ``"svcca"``, ``"pwcca"``, ``"mean_cca"``,
            ``"linear_cka"``. For PWCCA the weights come from the reference snapshot.
        num_snapshots: About this many snapshots, evenly spread over
            ``trainer.estimated_stepping_batches``. Ignored when ``every_n_train_steps`` or
            ``schedule`` is given.
        every_n_train_steps: Snapshot every n optimizer steps instead.
        schedule: Any ``step -> bool`` callable (see :mod:`cca_monitor.schedule`) instead.
        probe_size: Number of examples taken from a Dataset or DataLoader probe.
        probe_batch_size: Examples per probe forward call. None uses the batch size of the
            training dataloader (a batch the model is known to fit in memory, and on a CPU
            faster than one large batch), or runs the probe at once when it has none.
        conv_mode: Layout of conv outputs; ``"positions"`` treats each spatial position as a
            datapoint and channels as neurons.
        max_rows: Cap on datapoints per layer (conv positions are subsampled with a fixed seed,
            the same at every snapshot).
        seed: Seed of that subsampling.
        dirpath: Where snapshots and results go; None means ``trainer.log_dir``.
        convergence_threshold: Distance counted as converged in the summary.

    Example:
        >>> monitor = CCAMonitor(measures=["svcca", "linear_cka"], num_snapshots=10)
        >>> monitor.measures
        ['svcca', 'linear_cka']
    """


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _total_steps(trainer: pl.Trainer) -> int:
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise ValueError(
            "CCAMonitor cannot spread num_snapshots over an unbounded run "
            "(trainer.estimated_stepping_batches is infinite); set max_steps or max_epochs, "
            "or pass every_n_train_steps or schedule"
        )
    return int(total)


def _first_loader(loaders: Any) -> DataLoader | None:
    if isinstance(loaders, DataLoader):
        return loaders
    if isinstance(loaders, Sequence) and loaders:
        return _first_loader(loaders[0])
    if isinstance(loaders, Mapping) and loaders:
        return _first_loader(next(iter(loaders.values())))
    return None


def _log_cost(trainer: pl.Trainer, cost: dict[str, float], step: int) -> None:
    """Log what the monitor cost (seconds, megabytes) to every logger at ``step``."""
    for logger in trainer.loggers:
        logger.log_metrics(cost, step=step)


def _batch_size(loaders: Any) -> int | None:
    """The batch size of the first training dataloader, None if unknown."""
    loader = _first_loader(loaders)
    return getattr(loader, "batch_size", None) if loader is not None else None


def _first_inputs(source: Dataset | DataLoader, size: int) -> torch.Tensor:
    """The inputs of the first ``size`` examples, read without touching any random stream."""
    dataset = source.dataset if isinstance(source, DataLoader) else source
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            "the probe cannot be read from an iterable-style dataset without consuming it; "
            "pass probe=<tensor of inputs> instead"
        )
    count = min(size, len(dataset))
    batch = default_collate([dataset[i] for i in range(count)])
    inputs = batch if isinstance(batch, torch.Tensor) else None
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        inputs = batch[0]
    if inputs is None:
        raise TypeError(
            f"cannot find the inputs in dataset examples of type {type(dataset[0]).__name__}; "
            "examples must be tensors or (input, ...) tuples, or pass probe=<tensor of inputs>"
        )
    return inputs


def _gather_to_rank_zero(
    local: dict[str, torch.Tensor], trainer: pl.Trainer
) -> list[dict[str, torch.Tensor]]:
    """Every rank's activations, in rank order, on rank 0 (an empty list elsewhere)."""
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * trainer.world_size if trainer.is_global_zero else None
    dist.gather_object(local, gathered, dst=0)
    return gathered or []


def _finite_layers(activations: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    """Drop layers with NaN or inf values at this snapshot, warning with layer and step."""
    finite = {}
    for layer, values in activations.items():
        bad = int((~torch.isfinite(values)).sum())
        if bad:
            rank_zero_warn(
                f"CCAMonitor: layer {layer!r} has {bad} non-finite values at step {step}; "
                "skipped in this snapshot"
            )
        else:
            finite[layer] = values
    return finite
