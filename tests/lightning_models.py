"""Tiny Lightning models and data for callback tests (a few hundred parameters, CPU seconds)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 3


class TinyConvNet(pl.LightningModule):
    """Conv -> BatchNorm -> Linear -> Dropout -> Linear on (N, 1, 8, 8) inputs.

    Layers monitored by default: ``conv``, ``fc1``, ``fc2``.
    """

    def __init__(self, lr: float = 0.1, frozen_bn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(16, NUM_CLASSES)
        self.lr = lr
        self.frozen_bn = frozen_bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.bn(self.conv(x))).flatten(1)
        return self.fc2(self.drop(F.relu(self.fc1(hidden))))

    def on_train_epoch_start(self) -> None:
        if self.frozen_bn:
            self.bn.eval()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def tiny_dataset(n: int = 256, seed: int = 0) -> TensorDataset:
    """Inputs whose class is the sign pattern of a few pixels, so a tiny net learns it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, 0, 2, 2] > 0).long() + (x[:, 0, 5, 5] > 0).long()
    return TensorDataset(x, y)


def tiny_loaders(batch_size: int = 32, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """A shuffled training loader (seeded through the global RNG) and a validation loader."""
    return (
        DataLoader(tiny_dataset(256, seed), batch_size=batch_size, shuffle=True),
        DataLoader(tiny_dataset(128, seed + 1), batch_size=64),
    )


def tiny_trainer(tmp_path, **kwargs) -> pl.Trainer:
    options = {
        "max_epochs": 2,
        "default_root_dir": tmp_path,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": pl.loggers.TensorBoardLogger(tmp_path, name="tb"),
        "accelerator": "cpu",
        "deterministic": True,
    }
    options.update(kwargs)
    return pl.Trainer(**options)
