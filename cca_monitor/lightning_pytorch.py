"""``CCAMonitor`` for Trainers of the unified ``lightning`` package (``lightning.pytorch``).

``cca_monitor.CCAMonitor`` is a ``pytorch_lightning`` callback; a ``lightning.pytorch.Trainer``
only accepts callbacks of its own package, so use this one there::

    from lightning.pytorch import Trainer
    from cca_monitor.lightning_pytorch import CCAMonitor

    trainer = Trainer(callbacks=[CCAMonitor()])

Requires ``pip install lightning``.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from cca_monitor.callback import MonitorLogic


class CCAMonitor(MonitorLogic, Callback):
    """:class:`cca_monitor.CCAMonitor` as a ``lightning.pytorch`` callback: same arguments."""
