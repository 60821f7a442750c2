"""Train the tiny model with CCAMonitor under DDP on 2 CPU processes (gloo); used by test_ddp.

Usage: python ddp_run.py OUT_DIR. Rank 0 saves the initial weights to OUT_DIR/initial.pt.
"""

import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).parent))
from lightning_models import TinyConvNet, tiny_loaders  # noqa: E402

from cca_monitor import CCAMonitor  # noqa: E402

MAX_ROWS = 1000


def main(out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = TinyConvNet()
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "initial.pt")
    train, val = tiny_loaders()
    monitor = CCAMonitor(every_n_train_steps=2, max_rows=MAX_ROWS)
    trainer = pl.Trainer(
        callbacks=[monitor],
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        default_root_dir=out,
        logger=pl.loggers.TensorBoardLogger(out, name="tb"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, train, val)
    if trainer.is_global_zero:
        assert monitor.results, "rank 0 computed no results"
    assert monitor.previous_distances, f"rank {trainer.global_rank} got no previous distances"


if __name__ == "__main__":
    main(Path(sys.argv[1]))
