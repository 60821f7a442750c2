"""Bottom-up convergence of a stacked LSTM (Morcos, Raghu & Bengio 2018).

Each image is read as a sequence, one pixel row per time step (28 steps of 28 pixels for the
MNIST digits, 32 steps of 3 x 32 values for CIFAR-10), by three stacked single-layer LSTMs
and a linear read-out of the last time step. :class:`cca_monitor.CCAMonitor` snapshots every
LSTM's output sequence on a fixed probe of held-out images, each (image, time step) pair being
a datapoint and the hidden units the neurons; the linear read-out is not part of the
comparison (its 10 logits settle as soon as the classes are separated, see the README). The
finding: lower LSTM layers converge to their final representation earlier than higher ones.

Writes ``summary.json`` (``convergence_step``, ``spearman_depth_vs_convergence_step``,
``val_accuracy``), ``bottom_up.png`` and the run's TensorBoard logs under ``--out``.

    python experiments/bottom_up_rnn.py --out runs/bottom_up_rnn           # default run
    python experiments/bottom_up_rnn.py --out /tmp/bottom_up_rnn --smoke   # seconds
"""

from __future__ import annotations

import torch
from _common import Classifier, LRSchedule, bottom_up_experiment, parse_args, scaled, setup_run
from torch import nn

NUM_LAYERS = 3
HIDDEN = 64
LEARNING_RATE = 2e-3
LR_SCHEDULE = "cosine"  # annealed to 0, so that the layers settle by the end of training
DEFAULTS = {
    "NUM_TRAIN": 4000,  # training digits (the other 1,000 bundled digits are the probe)
    "NUM_PROBE": 1000,
    "EPOCHS": 10,
    "BATCH_SIZE": 64,
    "NUM_SNAPSHOTS": 40,
    "MEASURES": ("svcca", "pwcca"),  # the first one defines the convergence step
    "THRESHOLD": 0.1,
    "SEED": 0,
    "MAX_STEPS": -1,
}
SMOKE = {"NUM_TRAIN": 256, "NUM_PROBE": 100, "EPOCHS": 1, "NUM_SNAPSHOTS": 4, "MAX_STEPS": 8}


class RowLSTM(Classifier):
    """``lstm1`` ... ``lstmK`` (single-layer LSTMs, batch first) and ``out`` on the last step.

    Images ``(N, C, H, W)`` become sequences ``(N, H, C * W)``. The monitor records each LSTM's
    output sequence ``(N, H, hidden)`` as ``(N * H, hidden)``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_layers: int,
        hidden: int,
        *,
        num_classes: int = 10,
        learning_rate: float,
        lr_schedule: LRSchedule = "constant",
    ) -> None:
        super().__init__(learning_rate=learning_rate, lr_schedule=lr_schedule)
        channels, _, width = image_shape
        self.lstm_names = [f"lstm{i + 1}" for i in range(num_layers)]
        inputs = channels * width
        for name in self.lstm_names:
            self.add_module(name, nn.LSTM(inputs, hidden, batch_first=True))
            inputs = hidden
        self.out = nn.Linear(hidden, num_classes)

    @property
    def layer_names(self) -> list[str]:
        """The monitored layers, bottom to top: the LSTMs (the read-out is not monitored)."""
        return list(self.lstm_names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 2, 1, 3).flatten(2)  # (N, H, C * W): one row per time step
        for name in self.lstm_names:
            x, _ = getattr(self, name)(x)
        return self.out(x[:, -1])


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "runs/bottom_up_rnn")
    setup_run(args)
    settings = scaled(DEFAULTS, SMOKE, args.smoke)

    def build(image_shape: tuple[int, int, int]) -> RowLSTM:
        return RowLSTM(
            image_shape,
            NUM_LAYERS,
            HIDDEN,
            learning_rate=LEARNING_RATE,
            lr_schedule=LR_SCHEDULE,
        )

    bottom_up_experiment(args, build, name="lstm", settings=settings)


if __name__ == "__main__":
    main()
