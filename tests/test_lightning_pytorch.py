"""The monitor with a Trainer of the unified ``lightning`` package."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch", reason="the lightning package is not installed")

from cca_monitor.lightning_pytorch import CCAMonitor  # noqa: E402


class _Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_pytorch_trainer(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    data = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=20)
    monitor = CCAMonitor(x[:150], every_n_train_steps=5)
    trainer = L.Trainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        callbacks=[monitor],
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=L.loggers.TensorBoardLogger(tmp_path),
    )
    trainer.fit(_Net(), data)
    assert monitor.store.steps() == [0, 5, 10]
    final = [r for r in monitor.results if r.reference == "final" and r.step == 10]
    assert {r.layer for r in final} == {"fc1", "fc2"}
    assert list(monitor.run_dir.glob("events.out.tfevents.*"))
