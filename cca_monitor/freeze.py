"""Freeze training: stop training each layer, bottom-up, once its representation stops moving.

Raghu et al. (2017, "SVCCA", section 4.1) observe that networks converge bottom-up and propose
to freeze the lower layers one after another once they have converged, which saves the
computation of their gradients for the rest of training. :class:`FreezeTraining` decides with
the distances that :class:`~cca_monitor.callback.CCAMonitor` computes at each snapshot between
a layer and its previous snapshot: a layer whose distance stays below ``threshold`` for
``patience`` consecutive snapshots, and whose lower monitored layers are all frozen already, is
frozen.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from cca_monitor.capture import resolve_layer_names
from cca_monitor.records import DistanceRecord
from cca_monitor.similarity import Measure, check_measures

__all__ = ["FreezeTraining"]

log = logging.getLogger(__name__)


class _Monitor(Protocol):
    """What :class:`FreezeTraining` reads from the monitor."""

    measures: list[str]
    layers: list[str] | None
    previous_distances: list[DistanceRecord]


class FreezeTraining(BaseFinetuning):
    """Freeze converged layers bottom-up, from the monitor's distances to the previous snapshot.

    At every snapshot of ``monitor``, each layer's distance (1 - similarity, with ``measure``)
    to its previous snapshot is compared with ``threshold``. A layer is frozen once that
    distance has been below ``threshold`` for ``patience`` consecutive snapshots and every
    monitored layer below it (in the model's registration order, the order the monitor uses)
    is frozen; several layers can freeze at the same snapshot. A layer with no distance at a
    snapshot (NaN, or skipped) starts its count again. A layer whose freezing, with all the
    layers below it, would leave no parameter of the model to train (typically the output
    layer) is never frozen.

    Freezing a layer sets ``requires_grad=False`` on its parameters and on those of the
    modules listed for it in ``groups`` (for example the BatchNorm after a convolution), drops
    their gradients, stops BatchNorm statistics updates and puts the modules in eval mode, with
    the helpers of :class:`~pytorch_lightning.callbacks.BaseFinetuning`. Frozen modules stay in
    eval mode at every epoch start. Optimizers skip parameters without gradients, so the model's
    ``configure_optimizers`` needs no change. Nothing is unfrozen again.

    Add the monitor to the trainer as well, before this callback::

        monitor = CCAMonitor(measures=["svcca"], num_snapshots=40)
        trainer = Trainer(callbacks=[monitor, FreezeTraining(monitor, threshold=0.02)])

    The monitor broadcasts its distances from rank 0, so every rank freezes the same layers at
    the same step. Under DDP, parameters that stop receiving gradients need
    ``strategy="ddp_find_unused_parameters_true"``.

    Args:
        monitor: The :class:`~cca_monitor.callback.CCAMonitor` of the same trainer.
        threshold: Distance to the previous snapshot below which a layer counts as still.
        patience: Consecutive still snapshots before a layer may freeze.
        measure: One of the monitor's measures.
        groups: ``{monitored layer: [module names]}``: further modules frozen with that layer.

    Attributes:
        frozen_at: ``{layer: global step at which it was frozen}``, bottom-up.

    Raises:
        TypeError: If ``monitor`` has no ``previous_distances`` and ``measures``.
        ValueError: If ``measure`` is not computed by the monitor, ``threshold`` is not in
            (0, 1] or ``patience`` is not a positive int; at setup, if ``monitor`` is not one of
            the trainer's callbacks, a name in ``groups`` is not a module of the model or a key
            is not a monitored layer.

    Example:
        >>> from cca_monitor import CCAMonitor
        >>> freeze = FreezeTraining(CCAMonitor(measures=["svcca"]), threshold=0.02, patience=2)
        >>> freeze.frozen_at
        {}
    """

    def __init__(
        self,
        monitor: _Monitor,
        *,
        threshold: float = 0.02,
        patience: int = 2,
        measure: Measure = "svcca",
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        if not all(hasattr(monitor, name) for name in ("previous_distances", "measures")):
            raise TypeError(
                f"monitor must be the CCAMonitor of the same trainer, got {type(monitor).__name__}"
            )
        (measure,) = check_measures([measure])
        if measure not in monitor.measures:
            raise ValueError(
                f"measure {measure!r} is not computed by the monitor (measures="
                f"{monitor.measures}); add it to CCAMonitor(measures=...) or pick one of those"
            )
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be a distance in (0, 1], got {threshold!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive int of snapshots, got {patience!r}")
        self.monitor = monitor
        self.threshold = threshold
        self.patience = patience
        self.measure = measure
        self.groups = {layer: list(names) for layer, names in (groups or {}).items()}
        self.frozen_at: dict[str, int] = {}
        self._layers: list[str] = []
        self._streaks: dict[str, int] = {}
        self._seen: set[str] = set()
        self._consumed = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(measure=self.measure, threshold=self.threshold)

    # -- Lightning hooks ---------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            if not any(callback is self.monitor for callback in trainer.callbacks):
                raise ValueError(
                    "FreezeTraining's monitor is not one of the trainer's callbacks, so it takes "
                    "no snapshots and no layer would ever freeze; pass it as well, before "
                    "FreezeTraining: Trainer(callbacks=[monitor, FreezeTraining(monitor)])"
                )
            self._layers = resolve_layer_names(pl_module, self.monitor.layers)
            self._check_groups(pl_module)
            self._layers = self._freezable_layers(pl_module)
            self._consumed = len(self.monitor.previous_distances)

    @override
    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Nothing is frozen before training: layers freeze as they converge."""

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for layer in self.frozen_at:  # restored from a checkpoint
            self._freeze_modules(pl_module, layer)

    @override
    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        """Keep frozen modules in eval mode, whatever mode the epoch starts in."""
        for layer in self.frozen_at:
            for module in self._modules(pl_module, layer):
                module.eval()

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        records = self.monitor.previous_distances[self._consumed :]
        self._consumed += len(records)
        for step, distances in _distances_by_step(records, self.measure).items():
            for layer in self.observe(distances):
                self._freeze(trainer, pl_module, layer, step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "frozen_at": dict(self.frozen_at),
            "streaks": dict(self._streaks),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.frozen_at = dict(state_dict.get("frozen_at", {}))
        self._streaks = dict(state_dict.get("streaks", {}))

    # -- decisions ---------------------------------------------------------------------------

    def observe(self, distances: Mapping[str, float]) -> list[str]:
        """Count one snapshot's distances to the previous one; return the layers to freeze now.

        Args:
            distances: ``{layer: distance to the previous snapshot}`` for one snapshot; a
                missing layer or a NaN distance resets that layer's count.

        Returns:
            The layers that meet the rule now, bottom-up; :attr:`frozen_at` is not changed.
        """
        self._seen.update(distances)
        for layer in self._layers:
            if layer not in self.frozen_at:
                still = distances.get(layer, float("nan")) < self.threshold
                self._streaks[layer] = self._streaks.get(layer, 0) + 1 if still else 0
        ready = []
        for layer in self._layers:
            if layer in self.frozen_at or layer not in self._seen:
                continue
            if self._streaks[layer] < self.patience:
                break
            ready.append(layer)
        return ready

    # -- freezing ----------------------------------------------------------------------------

    def _modules(self, pl_module: pl.LightningModule, layer: str) -> list[nn.Module]:
        return [pl_module.get_submodule(name) for name in [layer, *self.groups.get(layer, [])]]

    def _freeze_modules(self, pl_module: pl.LightningModule, layer: str) -> None:
        modules = self._modules(pl_module, layer)
        self.freeze(modules, train_bn=False)
        for module in modules:
            module.eval()
            for parameter in module.parameters():
                parameter.grad = None

    def _freeze(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, layer: str, step: int
    ) -> None:
        self._freeze_modules(pl_module, layer)
        self.frozen_at[layer] = step
        if trainer.is_global_zero:
            log.info("FreezeTraining: froze %s at step %d", layer, step)
            for logger in trainer.loggers:
                logger.log_metrics({"freeze/frozen_layers": float(len(self.frozen_at))}, step)

    def _freezable_layers(self, pl_module: pl.LightningModule) -> list[str]:
        """The monitored layers up to the last whose freezing leaves something to train."""
        trainable = {id(p) for p in pl_module.parameters() if p.requires_grad}
        freezable = []
        for layer in self._layers:
            for module in self._modules(pl_module, layer):
                trainable.difference_update(id(p) for p in module.parameters())
            if not trainable:
                log.info(
                    "FreezeTraining: %s and the layers above it keep training; freezing it "
                    "would leave nothing to train",
                    layer,
                )
                break
            freezable.append(layer)
        return freezable

    def _check_groups(self, pl_module: pl.LightningModule) -> None:
        names = dict(pl_module.named_modules())
        unknown_keys = [layer for layer in self.groups if layer not in self._layers]
        if unknown_keys:
            raise ValueError(
                f"groups names layers {unknown_keys} that the monitor does not watch; keys must "
                f"be monitored layers: {self._layers}"
            )
        unknown = [name for group in self.groups.values() for name in group if name not in names]
        if unknown:
            raise ValueError(
                f"groups names modules {unknown} that the model does not have; its modules: "
                f"{[name for name in names if name]}"
            )


def _distances_by_step(
    records: Sequence[DistanceRecord], measure: str
) -> dict[int, dict[str, float]]:
    """``{step: {layer: distance}}`` of one measure, steps ascending."""
    grouped: dict[int, dict[str, float]] = {}
    for record in records:
        if record.measure == measure and record.reference == "previous":
            grouped.setdefault(record.step, {})[record.layer] = record.distance
    return dict(sorted(grouped.items()))
