"""FreezeTraining: the bottom-up rule on given distances, and real Trainer runs."""

import math
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from lightning_models import TinyConvNet, tiny_loaders, tiny_trainer
from torch import nn

from cca_monitor import CCAMonitor, DistanceRecord
from cca_monitor.freeze import FreezeTraining

LAYERS = ["conv", "fc1", "fc2"]
STILL = 0.001
MOVING = 0.5
ZERO_TOL = 1e-9


class Net(nn.Module):
    """The layers of TinyConvNet, without Lightning: conv, bn, fc1, fc2."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 3)


def _monitor(measures=("svcca",)):
    return SimpleNamespace(measures=list(measures), layers=None, previous_distances=[])


def _trainer(*callbacks):
    return SimpleNamespace(
        strategy=object(), is_global_zero=True, loggers=[], callbacks=list(callbacks)
    )


def _ready(freeze, module, monitor):
    freeze.setup(_trainer(monitor, freeze), module, "fit")
    return freeze


def _snapshot(freeze, module, monitor, step, distances):
    """Append one snapshot's distances to the monitor and let the callback see them."""
    monitor.previous_distances.extend(
        DistanceRecord(step, layer, measure, "previous", distance)
        for layer, distance in distances.items()
        for measure in monitor.measures
    )
    freeze.on_train_batch_end(_trainer(), module, None, None, 0)


def _trainable(module, name):
    return [p.requires_grad for p in module.get_submodule(name).parameters()]


@pytest.fixture
def setting():
    monitor = _monitor()
    module = Net()
    freeze = FreezeTraining(monitor, threshold=0.01, patience=2, groups={"conv": ["bn"]})
    return _ready(freeze, module, monitor), module, monitor


def test_still_layers_freeze_bottom_up_after_patience(setting):
    freeze, module, monitor = setting
    _snapshot(freeze, module, monitor, 10, {"conv": STILL, "fc1": STILL, "fc2": STILL})
    assert freeze.frozen_at == {}
    _snapshot(freeze, module, monitor, 20, {"conv": STILL, "fc1": STILL, "fc2": STILL})
    # freezing fc2 as well would leave nothing to train
    assert freeze.frozen_at == {"conv": 20, "fc1": 20}
    assert _trainable(module, "conv") == [False, False]
    assert _trainable(module, "bn") == [False, False]
    assert _trainable(module, "fc1") == [False, False]
    assert _trainable(module, "fc2") == [True, True]


def test_top_layer_freezes_while_other_parameters_train():
    monitor = _monitor()
    module = Net()
    freeze = _ready(FreezeTraining(monitor, patience=1), module, monitor)
    _snapshot(freeze, module, monitor, 10, {"conv": STILL, "fc1": STILL, "fc2": STILL})
    assert freeze.frozen_at == {"conv": 10, "fc1": 10, "fc2": 10}
    assert _trainable(module, "bn") == [True, True]


def test_upper_layer_waits_for_the_layers_below(setting):
    freeze, module, monitor = setting
    for step, conv in [(10, MOVING), (20, MOVING), (30, STILL), (40, STILL)]:
        _snapshot(freeze, module, monitor, step, {"conv": conv, "fc1": STILL})
        if step < 40:
            assert freeze.frozen_at == {}
    assert freeze.frozen_at == {"conv": 40, "fc1": 40}


@pytest.mark.parametrize(
    "interruption",
    [MOVING, math.nan, None],
    ids=["moving", "nan", "missing"],
)
def test_an_interruption_restarts_the_count(setting, interruption):
    freeze, module, monitor = setting
    for step, distance in [(10, STILL), (20, interruption), (30, STILL)]:
        distances = {"fc1": MOVING} if distance is None else {"conv": distance, "fc1": MOVING}
        _snapshot(freeze, module, monitor, step, distances)
        assert freeze.frozen_at == {}
    _snapshot(freeze, module, monitor, 40, {"conv": STILL, "fc1": MOVING})
    assert freeze.frozen_at == {"conv": 40}


def test_layer_the_monitor_never_reports_does_not_block(setting):
    freeze, module, monitor = setting
    for step in (10, 20):
        _snapshot(freeze, module, monitor, step, {"fc1": STILL})
    assert freeze.frozen_at == {"fc1": 20}


def test_other_measures_are_ignored():
    monitor = _monitor(["svcca", "pwcca"])
    module = Net()
    freeze = _ready(FreezeTraining(monitor, patience=1, measure="pwcca"), module, monitor)
    monitor.previous_distances.append(DistanceRecord(10, "conv", "svcca", "previous", STILL))
    monitor.previous_distances.append(DistanceRecord(10, "conv", "pwcca", "previous", MOVING))
    freeze.on_train_batch_end(_trainer(), module, None, None, 0)
    assert freeze.frozen_at == {}


def test_several_snapshots_between_batches_are_all_counted(setting):
    freeze, module, monitor = setting
    monitor.previous_distances.extend(
        DistanceRecord(step, "conv", "svcca", "previous", STILL) for step in (10, 20)
    )
    freeze.on_train_batch_end(_trainer(), module, None, None, 0)
    assert freeze.frozen_at == {"conv": 20}


def test_frozen_modules_and_groups_are_in_eval_without_gradients():
    monitor = _monitor()
    module = Net()
    module.conv.weight.grad = torch.ones_like(module.conv.weight)
    freeze = _ready(FreezeTraining(monitor, patience=1, groups={"conv": ["bn"]}), module, monitor)
    _snapshot(freeze, module, monitor, 10, {"conv": STILL, "fc1": MOVING})
    assert freeze.frozen_at == {"conv": 10}
    for name in ("conv", "bn"):
        submodule = module.get_submodule(name)
        assert not submodule.training
        assert all(p.grad is None and not p.requires_grad for p in submodule.parameters())
    assert not module.bn.track_running_stats
    assert module.fc1.training
    module.train()
    freeze.finetune_function(module, 1, torch.optim.SGD(module.parameters(), lr=0.1))
    assert not module.conv.training
    assert not module.bn.training
    assert module.fc1.training


def test_state_dict_round_trip_refreezes_on_train_start(setting):
    freeze, module, monitor = setting
    for step in (10, 20):
        _snapshot(freeze, module, monitor, step, {"conv": STILL, "fc1": STILL})
    state = freeze.state_dict()
    assert state["frozen_at"] == {"conv": 20, "fc1": 20}

    fresh_module = Net()
    restored = FreezeTraining(_monitor(), threshold=0.01, patience=2, groups={"conv": ["bn"]})
    restored.load_state_dict(state)
    _ready(restored, fresh_module, restored.monitor)
    restored.on_train_start(_trainer(), fresh_module)
    assert restored.frozen_at == {"conv": 20, "fc1": 20}
    assert _trainable(fresh_module, "conv") == [False, False]
    assert _trainable(fresh_module, "fc2") == [True, True]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"monitor": object()}, TypeError, "must be the CCAMonitor"),
        ({"measure": "pwcca"}, ValueError, r"'pwcca' is not computed by the monitor"),
        ({"measure": "cosine"}, ValueError, "unknown measure 'cosine'"),
        ({"threshold": 0.0}, ValueError, r"threshold must be a distance in \(0, 1\]"),
        ({"threshold": 1.5}, ValueError, r"threshold must be a distance in \(0, 1\]"),
        ({"patience": 0}, ValueError, "patience must be a positive int"),
        ({"patience": 1.5}, ValueError, "patience must be a positive int"),
    ],
    ids=["monitor", "measure-not-monitored", "measure-unknown", "zero", "above-one", "p0", "pf"],
)
def test_bad_arguments_are_named(kwargs, error, match):
    arguments = {"monitor": _monitor(), **kwargs}
    with pytest.raises(error, match=match):
        FreezeTraining(arguments.pop("monitor"), **arguments)


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        ({"bn": ["conv"]}, r"layers \['bn'\] that the monitor does not watch"),
        ({"conv": ["bn2"]}, r"modules \['bn2'\] that the model does not have.*'bn'"),
    ],
    ids=["key", "module"],
)
def test_bad_groups_are_named_at_setup(groups, match):
    monitor = _monitor()
    with pytest.raises(ValueError, match=match):
        _ready(FreezeTraining(monitor, groups=groups), Net(), monitor)


def test_real_monitor_is_accepted():
    monitor = CCAMonitor(measures=["svcca"])
    assert FreezeTraining(monitor).monitor is monitor


# -- real Trainer runs --------------------------------------------------------------------------


class _WeightsAt(pl.Callback):
    """Copies the model's parameters at the end of the batch that reaches ``step``."""

    def __init__(self, step):
        self.step = step
        self.weights = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            self.weights = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def _fit(tmp_path, freeze_kwargs, callbacks_after=()):
    pl.seed_everything(0, verbose=False)
    model = TinyConvNet()
    monitor = CCAMonitor(measures=["svcca"], every_n_train_steps=2)
    freeze = FreezeTraining(monitor, **freeze_kwargs)
    trainer = tiny_trainer(tmp_path, callbacks=[monitor, freeze, *callbacks_after])
    trainer.fit(model, *tiny_loaders())
    return model, monitor, freeze


def test_trainer_freezes_layers_and_they_stop_changing(tmp_path):
    # every distance is below 1: each layer freezes at its first comparison (step 2)
    weights = _WeightsAt(2)
    model, monitor, freeze = _fit(
        tmp_path, {"threshold": 1.0, "patience": 1, "groups": {"conv": ["bn"]}}, [weights]
    )
    assert freeze.frozen_at == {"conv": 2, "fc1": 2}
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter, weights.weights[name])
        assert changed == name.startswith("fc2"), name
    assert not model.conv.training
    assert not model.bn.training
    later = [
        r.distance for r in monitor.previous_distances if r.layer in ("conv", "fc1") and r.step > 2
    ]
    assert later
    assert max(later) == pytest.approx(0.0, abs=ZERO_TOL)


def test_trainer_with_unreachable_threshold_freezes_nothing(tmp_path):
    model, _, freeze = _fit(tmp_path, {"threshold": 1e-12, "patience": 1})
    assert freeze.frozen_at == {}
    assert all(p.requires_grad for p in model.parameters())


def test_a_monitor_missing_from_the_trainer_is_an_error_at_setup(tmp_path):
    monitor = CCAMonitor(measures=["svcca"], every_n_train_steps=2)
    trainer = tiny_trainer(tmp_path, callbacks=[FreezeTraining(monitor)])
    with pytest.raises(ValueError, match=r"monitor is not one of the trainer's callbacks"):
        trainer.fit(TinyConvNet(), *tiny_loaders())
