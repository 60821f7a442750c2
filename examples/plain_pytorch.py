"""Monitor a plain PyTorch training loop, without Lightning.

A small MLP learns the bundled MNIST digits for one epoch. The loop takes the snapshots itself:
at a few evenly spread steps it runs the probe set through the model with
:func:`cca_monitor.capture.capture_activations` (eval mode, no gradients, modes and random state
restored) and stores the activations with :class:`cca_monitor.storage.SnapshotStore`. After
training, :func:`cca_monitor.convergence.analyse_snapshots` computes each layer's distance to
its final representation and :func:`cca_monitor.report.write_report` writes the tables, figures
and TensorBoard events.

Run::

    python examples/plain_pytorch.py --out plain_run
    tensorboard --logdir plain_run/tensorboard

``--smoke`` trains on a few batches only (a test runs it that way).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cca_monitor.capture import capture_activations
from cca_monitor.convergence import analyse_snapshots
from cca_monitor.data import load_mnist_digits
from cca_monitor.report import write_report
from cca_monitor.schedule import evenly_spaced
from cca_monitor.storage import SNAPSHOT_DIR_NAME, SnapshotStore, probe_fingerprint

LAYERS = ["fc1", "fc2", "fc3"]
MEASURES = ["svcca", "pwcca"]
PROBE_SIZE = 1000
"""Held-out digits on which every snapshot is taken: 15 or more datapoints per neuron."""
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
NUM_SNAPSHOTS = 16
SMOKE_TRAIN_SIZE = 640
SMOKE_NUM_SNAPSHOTS = 4


class MLP(nn.Module):
    """28x28 images -> 64 -> 32 -> 10 logits; the monitored layers are fc1, fc2 and fc3."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) of images (N, 1, 28, 28)."""
        hidden = F.relu(self.fc1(images.flatten(1)))
        return self.fc3(F.relu(self.fc2(hidden)))


def split_digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shuffle the 5,000 digits; the first PROBE_SIZE are the probe set, the rest train.

    Returns:
        ``(probe_images, probe_labels, train_images, train_labels)``.
    """
    images, labels = load_mnist_digits()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    probe, train = order[:PROBE_SIZE], order[PROBE_SIZE:]
    return images[probe], labels[probe], images[train], labels[train]


def train(out: Path, *, smoke: bool = False, seed: int = 0) -> tuple[MLP, SnapshotStore]:
    """Train for one epoch, storing a snapshot of every layer at evenly spread steps.

    Returns:
        The trained model and the store of its snapshots (``out/cca_snapshots``).
    """
    torch.manual_seed(seed)
    probe, _, images, labels = split_digits(seed)
    if smoke:
        images, labels = images[:SMOKE_TRAIN_SIZE], labels[:SMOKE_TRAIN_SIZE]
    batches = list(zip(images.split(BATCH_SIZE), labels.split(BATCH_SIZE), strict=True))
    snapshot_due = evenly_spaced(len(batches), SMOKE_NUM_SNAPSHOTS if smoke else NUM_SNAPSHOTS)

    model = MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    store = SnapshotStore(out / SNAPSHOT_DIR_NAME)
    store.write_metadata(
        {
            "layers": LAYERS,
            "measures": MEASURES,
            "probe_shape": list(probe.shape),
            "probe_fingerprint": probe_fingerprint(probe),
        }
    )
    for step, (inputs, targets) in enumerate(batches):
        if snapshot_due(step):
            store.write(step, capture_activations(model, probe, LAYERS))
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    store.write(len(batches), capture_activations(model, probe, LAYERS))
    return model, store


def probe_accuracy(model: MLP, seed: int) -> float:
    """Accuracy on the held-out probe digits."""
    probe, probe_labels, _, _ = split_digits(seed)
    model.eval()
    with torch.no_grad():
        return float((model(probe).argmax(dim=1) == probe_labels).float().mean())


def main(argv: Sequence[str] | None = None) -> int:
    """Train, analyse the snapshots, write the report and print each layer's convergence step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("plain_pytorch_run"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few batches only (seconds)")
    args = parser.parse_args(argv)

    model, store = train(args.out, smoke=args.smoke, seed=args.seed)
    analysis = analyse_snapshots(store, MEASURES, layers=LAYERS)
    write_report(analysis, args.out, tensorboard_dir=args.out / "tensorboard")

    summary = analysis.summary
    print(f"held-out accuracy {probe_accuracy(model, args.seed):.1%}")
    print(f"first step within {summary['threshold']} {summary['measure']} of the final layer:")
    for layer, step in summary["convergence_step"].items():
        print(f"  {layer:<6} {'never' if step is None else step}")
    print(f"report and TensorBoard events in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
