import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cca_monitor.demo import (
    DEFAULT_MAX_EPOCHS,
    SMOKE_TRAIN_BATCHES,
    DemoCNN,
    DemoResult,
    run_demo,
)

TARGET_ACCURACY = 0.95
TRAINING_SECONDS = 120.0  # training budget of the demo on two CPU cores, monitor excluded


class _RecordingCallback(pl.Callback):
    def __init__(self):
        self.hooks = []

    def on_train_start(self, trainer, pl_module):
        self.hooks.append("train_start")

    def on_train_end(self, trainer, pl_module):
        self.hooks.append("train_end")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    callback = _RecordingCallback()
    out_dir = tmp_path_factory.mktemp("demo")
    return out_dir, callback, run_demo(out_dir, fast_dev=True, callbacks=[callback])


def _scalar_tags(log_dir):
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_smoke_run_writes_tensorboard_events(smoke_run):
    out_dir, _, result = smoke_run
    assert result.log_dir == out_dir / "mnist_cnn" / "version_0"
    assert list(result.log_dir.glob("events.out.tfevents.*"))
    assert {"train_loss_step", "train_loss_epoch", "val_loss", "val_acc"} <= _scalar_tags(
        result.log_dir
    )


def test_smoke_run_result_fields(smoke_run):
    _, _, result = smoke_run
    assert isinstance(result, DemoResult)
    assert 0.0 <= result.val_accuracy <= 1.0
    assert result.val_loss > 0.0
    assert result.seconds > 0.0
    assert result.trainer.global_step == SMOKE_TRAIN_BATCHES
    assert result.trainer.current_epoch == 1
    assert isinstance(result.model, DemoCNN)


def test_smoke_run_passes_callbacks(smoke_run):
    _, callback, result = smoke_run
    assert callback.hooks == ["train_start", "train_end"]
    assert callback in result.trainer.callbacks


def test_result_is_frozen(smoke_run):
    _, _, result = smoke_run
    with pytest.raises(AttributeError, match="val_accuracy"):
        result.val_accuracy = 1.0


def _weights(result):
    return torch.cat([p.detach().flatten() for p in result.model.parameters()])


def test_same_seed_same_weights(smoke_run, tmp_path):
    _, _, first = smoke_run
    again = run_demo(tmp_path, fast_dev=True)
    other_seed = run_demo(tmp_path, fast_dev=True, seed=1)
    assert torch.equal(_weights(first), _weights(again))
    assert not torch.equal(_weights(first), _weights(other_seed))
    assert again.log_dir.name == "version_0"
    assert other_seed.log_dir.name == "version_1"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_epochs": 0}, "max_epochs must be a positive int, got 0"),
        ({"num_threads": 0}, "num_threads must be a positive int or None, got 0"),
    ],
    ids=["max-epochs", "num-threads"],
)
def test_run_demo_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_demo("unused", **kwargs)


def test_num_threads_applies_during_fit_and_is_restored(tmp_path):
    class _ThreadProbe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.threads = torch.get_num_threads()

    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    probe = _ThreadProbe()
    run_demo(tmp_path, fast_dev=True, num_threads=wanted, callbacks=[probe])
    assert probe.threads == wanted
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("kwargs", "input_shape"),
    [({}, (2, 1, 28, 28)), ({"in_channels": 3, "image_size": 32}, (2, 3, 32, 32))],
    ids=["mnist", "cifar10"],
)
def test_cnn_logits_shape(kwargs, input_shape):
    model = DemoCNN(**kwargs)
    assert model(torch.randn(input_shape)).shape == (2, 10)


def test_cnn_layer_names():
    names = [name for name, _ in DemoCNN().named_modules() if name]
    assert names == ["conv1", "bn1", "conv2", "bn2", "fc1", "dropout", "fc2"]


def test_cnn_monitored_shapes():
    model = DemoCNN(width=4, hidden=8).eval()
    shapes = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape))
        )
        for name, module in model.named_modules()
        if name
    ]
    model(torch.randn(5, 1, 28, 28))
    for hook in hooks:
        hook.remove()
    assert shapes == {
        "conv1": (5, 4, 28, 28),
        "bn1": (5, 4, 28, 28),
        "conv2": (5, 8, 14, 14),
        "bn2": (5, 8, 14, 14),
        "fc1": (5, 8),
        "dropout": (5, 8),
        "fc2": (5, 10),
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 30}, r"image_size must be a positive multiple of 4 \(.*\), got 30"),
        ({"image_size": 0}, "got 0"),
        ({"width": 0}, "width must be a positive int, got 0"),
        ({"hidden": -1}, "hidden must be a positive int, got -1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"learning_rate": 0.0}, "learning_rate must be positive, got 0.0"),
    ],
    ids=["image-size-not-multiple", "image-size-zero", "width", "hidden", "dropout", "lr"],
)
def test_cnn_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoCNN(**kwargs)


@pytest.mark.slow
def test_full_demo_reaches_target_accuracy(tmp_path):
    # one thread: on a busy machine two oversubscribed threads can run ten times slower
    result = run_demo(tmp_path, num_threads=1)
    assert result.val_accuracy > TARGET_ACCURACY
    assert result.seconds < TRAINING_SECONDS
    assert result.trainer.current_epoch == DEFAULT_MAX_EPOCHS
