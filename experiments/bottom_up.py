"""Bottom-up convergence of a CNN (Raghu et al. 2017, SVCCA).

A small convolutional network is trained on the bundled MNIST digits (or CIFAR-10) while
:class:`cca_monitor.CCAMonitor` snapshots every layer on a fixed probe of held-out images. For
each layer, the convergence step is the first snapshot from which its SVCCA distance to its own
final representation stays within ``THRESHOLD``. The finding: lower layers converge earlier, so
the Spearman correlation of depth and convergence step is high.

Writes ``summary.json`` (``convergence_step``, ``spearman_depth_vs_convergence_step``,
``val_accuracy``), ``bottom_up.png`` and the run's TensorBoard logs under ``--out``.

    python experiments/bottom_up.py --out runs/bottom_up           # default run, a few minutes
    python experiments/bottom_up.py --out /tmp/bottom_up --smoke   # seconds
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from _common import Classifier, bottom_up_experiment, parse_args, scaled, setup_run
from torch import nn

CONV_CHANNELS = (16, 32, 32)
HIDDEN = 64
LEARNING_RATE = 1e-3
DEFAULTS = {
    "NUM_TRAIN": 4000,  # training digits (the other 1,000 bundled digits are the probe)
    "NUM_PROBE": 1000,
    "EPOCHS": 6,
    "BATCH_SIZE": 64,
    "NUM_SNAPSHOTS": 40,
    "MEASURES": ("svcca", "pwcca"),  # the first one defines the convergence step
    "THRESHOLD": 0.1,
    "SEED": 0,
    "MAX_STEPS": -1,
}
SMOKE = {"NUM_TRAIN": 256, "NUM_PROBE": 200, "EPOCHS": 1, "NUM_SNAPSHOTS": 4, "MAX_STEPS": 8}


class ConvNet(Classifier):
    """``conv1`` ... ``convK`` (3x3, each followed by ReLU and 2x2 max-pooling), ``fc1``, ``out``.

    The monitor records conv outputs ``(N, C, H, W)`` with every spatial position as a
    datapoint and channels as neurons, and the linear outputs ``(N, width)``, pre-activation.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        channels: Sequence[int],
        hidden: int,
        *,
        num_classes: int = 10,
        learning_rate: float,
    ) -> None:
        super().__init__(learning_rate=learning_rate)
        in_channels, height, width = image_shape
        widths = [in_channels, *channels]
        self.conv_names = [f"conv{i + 1}" for i in range(len(channels))]
        layers = zip(self.conv_names, itertools.pairwise(widths), strict=True)
        for name, (fan_in, fan_out) in layers:
            self.add_module(name, nn.Conv2d(fan_in, fan_out, kernel_size=3, padding=1))
            height, width = height // 2, width // 2
        self.fc1 = nn.Linear(widths[-1] * height * width, hidden)
        self.out = nn.Linear(hidden, num_classes)

    @property
    def layer_names(self) -> list[str]:
        """The monitored layers, bottom to top."""
        return [*self.conv_names, "fc1", "out"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for name in self.conv_names:
            x = F.max_pool2d(F.relu(getattr(self, name)(x)), 2)
        return self.out(F.relu(self.fc1(x.flatten(1))))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "runs/bottom_up")
    setup_run(args)
    settings = scaled(DEFAULTS, SMOKE, args.smoke)

    def build(image_shape: tuple[int, int, int]) -> ConvNet:
        return ConvNet(image_shape, CONV_CHANNELS, HIDDEN, learning_rate=LEARNING_RATE)

    bottom_up_experiment(args, build, name="cnn", settings=settings)


if __name__ == "__main__":
    main()
