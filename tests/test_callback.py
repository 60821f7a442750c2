"""CCAMonitor on real Trainer runs of a tiny model."""

import csv
import json
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from lightning_models import TinyConvNet, tiny_dataset, tiny_loaders, tiny_trainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cca_monitor import CCAMonitor, SnapshotStore, read_results
from cca_monitor.callback import SNAPSHOT_DIR_NAME
from cca_monitor.convergence import distances_to_previous

LAYERS = ["conv", "fc1", "fc2"]
ZERO_TOL = 1e-9
STEPS_PER_EPOCH = 8  # 256 examples / batch 32


def _fit(tmp_path, monitor=None, seed=0, **trainer_kwargs):
    pl.seed_everything(seed, verbose=False)
    model = TinyConvNet(frozen_bn=trainer_kwargs.pop("frozen_bn", False))
    train, val = tiny_loaders()
    callbacks = [monitor] if monitor is not None else []
    trainer = tiny_trainer(tmp_path, callbacks=callbacks, **trainer_kwargs)
    trainer.fit(model, train, val)
    return trainer, model


def _events(log_dir):
    accumulator = EventAccumulator(
        str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    accumulator.Reload()
    return accumulator


def test_event_files_hold_the_convergence_curves(tmp_path):
    monitor = CCAMonitor(num_snapshots=5)
    trainer, _ = _fit(tmp_path, monitor)
    last = trainer.global_step
    assert last == 2 * STEPS_PER_EPOCH
    expected_steps = [0, 4, 8, 12, 16]
    events = _events(trainer.log_dir)
    scalar_tags = set(events.Tags()["scalars"])
    for measure in ("svcca", "pwcca"):
        for layer in LAYERS:
            tag = f"cca/{measure}_to_final/{layer}"
            assert tag in scalar_tags
            points = events.Scalars(tag)
            assert [p.step for p in points] == expected_steps
            assert points[-1].value == pytest.approx(0.0, abs=1e-6)
            assert points[0].value > 0.0
            previous = events.Scalars(f"cca/{measure}_to_previous/{layer}")
            assert [p.step for p in previous] == expected_steps[1:]
    images = set(events.Tags()["images"])
    assert {"cca/svcca_to_final_curves", "cca/svcca_to_final_heatmap"} <= images
    assert "custom_scalars__config__" in events.Tags()["tensors"]
    (text,) = events.Tensors("cca/convergence_summary/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert "first step within 0.1 svcca distance of final" in table
    for layer in LAYERS:
        assert f"| {layer} | " in table
    assert {"cca/snapshot_seconds", "cca/snapshot_megabytes"} <= scalar_tags
    assert [p.step for p in events.Scalars("cca/snapshot_seconds")] == expected_steps
    (report_cost,) = events.Scalars("cca/report_seconds")
    assert report_cost.step == last
    assert report_cost.value > 0

    for name in [
        "cca_results.csv",
        "cca_results.json",
        "cca_svcca_to_final.png",
        "cca_svcca_heatmap.png",
        "cca_pwcca_to_final.png",
    ]:
        assert (monitor.run_dir / name).is_file(), name
    summary = json.loads((monitor.run_dir / "cca_results.json").read_text())["summary"]
    assert summary["steps"] == expected_steps
    assert set(summary["convergence_step"]) == set(LAYERS)
    assert SnapshotStore(monitor.run_dir / SNAPSHOT_DIR_NAME).steps() == expected_steps


def test_results_in_memory_match_files(tmp_path):
    monitor = CCAMonitor(num_snapshots=3, measures=["mean_cca", "linear_cka"])
    _fit(tmp_path, monitor, max_epochs=1)
    final = [r for r in monitor.results if r.reference == "final"]
    assert {r.measure for r in final} == {"mean_cca", "linear_cka"}
    assert all(0.0 <= r.distance <= 1.0 for r in final)
    with open(monitor.run_dir / "cca_results.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(monitor.results)


def test_previous_distances_logged_in_training_are_those_of_the_stored_snapshots(tmp_path):
    monitor = CCAMonitor(num_snapshots=4, measures=["svcca", "pwcca", "linear_cka"])
    _fit(tmp_path, monitor, max_epochs=1)
    recomputed = distances_to_previous(monitor.store, monitor.measures)
    reported = [r for r in monitor.results if r.reference == "previous"]
    assert len(reported) == len(recomputed) == len(monitor.previous_distances) > 0
    key = lambda r: (r.step, r.layer, r.measure)  # noqa: E731
    for got, want in zip(sorted(reported, key=key), sorted(recomputed, key=key), strict=True):
        assert key(got) == key(want)
        assert got.distance == pytest.approx(want.distance, abs=1e-9)


def test_one_monitor_can_watch_a_second_fit(tmp_path):
    monitor = CCAMonitor(num_snapshots=3, dirpath=tmp_path / "first")
    _fit(tmp_path / "a", monitor, max_epochs=1)
    first = list(monitor.results)
    monitor.dirpath = tmp_path / "second"
    _fit(tmp_path / "b", monitor, max_epochs=1, seed=1)
    assert monitor.store.steps() == [0, 4, 8]
    assert sorted({r.step for r in monitor.previous_distances}) == [4, 8]
    assert len(monitor.results) == len(first)
    assert (tmp_path / "second" / "cca_results.json").is_file()


def test_probe_runs_in_training_sized_batches_by_default(tmp_path, monkeypatch):
    sizes = []
    original = TinyConvNet.forward

    def recording_forward(self, x):
        if not self.training:
            sizes.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(TinyConvNet, "forward", recording_forward)
    monitor = CCAMonitor(num_snapshots=2, probe_size=100)
    _fit(tmp_path, monitor, max_epochs=1, limit_val_batches=0)
    assert sizes[:4] == [32, 32, 32, 4]  # the probe of 100 in batches of the training 32


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "options",
    [{}, {"accumulate_grad_batches": 2}, {"frozen_bn": True}, {"precision": "bf16-mixed"}],
    ids=["plain", "accumulate", "frozen-bn", "bf16"],
)
def test_training_is_bit_identical_with_and_without_monitor(tmp_path, options):
    """Dropout, BatchNorm and a shuffled loader: any RNG or mode leak changes the weights."""
    trainer_a, without = _fit(tmp_path / "a", None, **dict(options))
    trainer_b, with_monitor = _fit(
        tmp_path / "b", CCAMonitor(every_n_train_steps=3), **dict(options)
    )
    state_a, state_b = _state(without), _state(with_monitor)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    optim_a = trainer_a.optimizers[0].state_dict()["state"]
    optim_b = trainer_b.optimizers[0].state_dict()["state"]
    for index in optim_a:
        for name, value in optim_a[index].items():
            assert torch.equal(value, optim_b[index][name]), (index, name)
    assert trainer_a.callback_metrics["train_loss"] == trainer_b.callback_metrics["train_loss"]
    assert with_monitor.training
    assert with_monitor.drop.training


def test_the_monitor_does_change_the_model_when_rng_is_not_restored(tmp_path, monkeypatch):
    """The identical-weights test can fail: a leak of the RNG state makes it differ."""
    import cca_monitor.capture as capture

    monkeypatch.setattr(capture, "preserved_rng_state", _consume_rng)
    _, without = _fit(tmp_path / "a", None)
    _, with_monitor = _fit(tmp_path / "b", CCAMonitor(every_n_train_steps=3))
    assert any(
        not torch.equal(a, b)
        for a, b in zip(_state(without).values(), _state(with_monitor).values(), strict=True)
    )


class _consume_rng:
    def __enter__(self):
        torch.rand(1)

    def __exit__(self, *exc):
        return False


def test_every_n_train_steps_with_first_and_last(tmp_path):
    monitor = CCAMonitor(every_n_train_steps=5)
    trainer, _ = _fit(tmp_path, monitor)
    assert monitor.store.steps() == [0, 5, 10, 15, 16]
    assert trainer.global_step == 16


def test_csv_logger_alone(tmp_path):
    monitor = CCAMonitor(num_snapshots=3)
    trainer, _ = _fit(tmp_path, monitor, logger=pl.loggers.CSVLogger(tmp_path, name="csv"))
    with open(trainer.loggers[0].experiment.metrics_file_path, newline="") as file:
        reader = csv.DictReader(file)
        columns = set(reader.fieldnames)
        rows = list(reader)
    assert "cca/svcca_to_final/fc1" in columns
    assert "cca/pwcca_to_previous/conv" in columns
    final_steps = [int(r["step"]) for r in rows if r["cca/svcca_to_final/fc1"]]
    assert final_steps == [0, 8, 16]
    assert (monitor.run_dir / "cca_results.json").is_file()
    assert (monitor.run_dir / "cca_svcca_heatmap.png").is_file()


def test_no_logger_writes_under_default_root_dir(tmp_path):
    monitor = CCAMonitor(num_snapshots=3)
    _fit(tmp_path, monitor, logger=False)
    assert monitor.run_dir == tmp_path
    assert (tmp_path / "cca_results.csv").is_file()
    assert (tmp_path / SNAPSHOT_DIR_NAME).is_dir()


@pytest.mark.parametrize(
    "probe",
    [
        tiny_dataset(200, 5).tensors[0],
        tiny_dataset(200, 5),
        torch.utils.data.DataLoader(tiny_dataset(200, 5), batch_size=7, shuffle=True),
    ],
    ids=["tensor", "dataset", "shuffled-loader"],
)
def test_probe_sources_give_the_same_probe(tmp_path, probe):
    monitor = CCAMonitor(probe, num_snapshots=2, probe_size=200)
    _fit(tmp_path, monitor, max_epochs=1)
    snapshot = monitor.store.read(0)
    assert snapshot["fc1"].shape == (200, 16)
    assert snapshot["conv"].shape == (200 * 36, 4)


def test_default_probe_is_first_validation_examples(tmp_path):
    monitor = CCAMonitor(num_snapshots=2, probe_size=100)
    _fit(tmp_path, monitor, max_epochs=1)
    assert torch.equal(monitor._probe, tiny_dataset(128, 1).tensors[0][:100])


def test_layer_selection_by_glob(tmp_path):
    monitor = CCAMonitor(layers=["fc*"], num_snapshots=2)
    _fit(tmp_path, monitor, max_epochs=1)
    assert set(monitor.store.read(0)) == {"fc1", "fc2"}


def test_unknown_layer_lists_available_names(tmp_path):
    with pytest.raises(ValueError, match=r"'nope'.*available.*'fc1'"):
        _fit(tmp_path, CCAMonitor(layers=["nope"]))


def test_named_layer_wider_than_probe_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no more datapoints than neurons"):
        _fit(tmp_path, CCAMonitor(layers=["fc1"], probe_size=10))


def test_default_layer_wider_than_probe_is_dropped_with_warning(tmp_path):
    monitor = CCAMonitor(probe_size=10)
    with pytest.warns(UserWarning, match="not monitored"):
        _fit(tmp_path, monitor, max_epochs=1)
    assert set(monitor.store.read(0)) == {"conv", "fc2"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"measures": ["svcca", "cosine"]}, ValueError, "unknown measure 'cosine'"),
        ({"measures": "svcca"}, TypeError, "collection of names"),
        ({"measures": []}, ValueError, "at least one"),
        ({"layers": []}, ValueError, "layers is empty"),
        ({"layers": "fc1"}, TypeError, r"\['fc1'\]"),
        ({"every_n_train_steps": 2, "schedule": lambda s: True}, ValueError, "not both"),
        ({"schedule": 5}, TypeError, "callable"),
        ({"every_n_train_steps": 0}, ValueError, "every_n_train_steps must be >= 1"),
        ({"num_snapshots": 1}, ValueError, "num_snapshots must be >= 2"),
        ({"probe_size": 1.5}, TypeError, "probe_size must be an int"),
        ({"convergence_threshold": 2.0}, ValueError, r"\[0, 1\]"),
        ({"probe": [1, 2, 3]}, TypeError, "probe must be a tensor"),
        ({"probe_batch_size": 0}, ValueError, "probe_batch_size must be >= 1"),
        ({"probe_batch_size": "8"}, TypeError, "probe_batch_size must be an int"),
        ({"conv_mode": "dft"}, ValueError, "conv_mode must be one of"),
        ({"max_rows": 0}, ValueError, "max_rows must be >= 1"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
    ],
    ids=[
        "unknown-measure",
        "measure-str",
        "no-measures",
        "no-layers",
        "layers-str",
        "two-schedules",
        "bad-schedule",
        "n-zero",
        "one-snapshot",
        "probe-size-float",
        "threshold",
        "probe-list",
        "probe-batch-zero",
        "probe-batch-str",
        "conv-mode",
        "max-rows",
        "seed",
    ],
)
def test_bad_arguments_fail_in_init(kwargs, error, match):
    with pytest.raises(error, match=match):
        CCAMonitor(**kwargs)


def test_non_finite_layer_is_skipped_and_training_goes_on(tmp_path):
    pl.seed_everything(0, verbose=False)
    monitor = CCAMonitor(layers=["conv", "fc1"], every_n_train_steps=4)
    trainer = tiny_trainer(tmp_path, callbacks=[monitor], limit_val_batches=0)
    model = TinyConvNet()

    def poison_probe_at_step_12(module, args, output):
        if trainer.global_step == 12 and not module.training:
            output.fill_(math.nan)

    model.fc1.register_forward_hook(poison_probe_at_step_12)
    with pytest.warns(UserWarning, match=r"layer 'fc1' has \d+ non-finite values at step 12"):
        trainer.fit(model, tiny_loaders()[0])
    assert 12 in monitor.store.steps()
    assert "fc1" not in monitor.store.read(12)
    assert "fc1" in monitor.store.read(16)
    assert trainer.global_step == 16


def test_resume_continues_the_snapshot_series(tmp_path):
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    monitor = CCAMonitor(every_n_train_steps=4, dirpath=tmp_path / "run")
    pl.seed_everything(0, verbose=False)
    train, val = tiny_loaders()
    trainer = tiny_trainer(
        tmp_path, max_epochs=1, callbacks=[monitor, checkpoint], enable_checkpointing=True
    )
    trainer.fit(TinyConvNet(), train, val)
    assert monitor.store.steps() == [0, 4, 8]

    resumed = CCAMonitor(every_n_train_steps=4)
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[resumed])
    trainer.fit(TinyConvNet(), train, val, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.run_dir == tmp_path / "run"
    assert resumed.store.steps() == [0, 4, 8, 12, 16]
    final_steps = sorted({r.step for r in resumed.results if r.reference == "final"})
    assert final_steps == [0, 4, 8, 12, 16]


def test_a_fresh_fit_after_a_resumed_one_starts_its_own_series(tmp_path):
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    monitor = CCAMonitor(every_n_train_steps=4)
    train, val = tiny_loaders()
    trainer = tiny_trainer(
        tmp_path, max_epochs=1, callbacks=[monitor, checkpoint], enable_checkpointing=True
    )
    trainer.fit(TinyConvNet(), train, val)
    first_run = monitor.run_dir
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[monitor])
    trainer.fit(TinyConvNet(), train, val, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert monitor.run_dir == first_run
    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[monitor])
    trainer.fit(TinyConvNet(), train, val)
    assert monitor.run_dir != first_run
    assert monitor.store.steps() == [0, 4, 8]


def test_resume_with_another_probe_is_an_error(tmp_path):
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    train, val = tiny_loaders()
    trainer = tiny_trainer(
        tmp_path,
        max_epochs=1,
        enable_checkpointing=True,
        callbacks=[CCAMonitor(every_n_train_steps=4), checkpoint],
    )
    trainer.fit(TinyConvNet(), train, val)
    other_probe = tiny_dataset(300, 9).tensors[0]
    trainer = tiny_trainer(
        tmp_path, max_epochs=2, callbacks=[CCAMonitor(other_probe, every_n_train_steps=4)]
    )
    with pytest.raises(ValueError, match="probe set differs"):
        trainer.fit(TinyConvNet(), train, val, ckpt_path=tmp_path / "ckpt" / "last.ckpt")


def test_numpy_integers_are_accepted_as_sizes():
    monitor = CCAMonitor(
        num_snapshots=np.int64(5), probe_size=np.int32(64), probe_batch_size=np.int64(8)
    )
    assert monitor.num_snapshots == 5


def test_state_key_depends_on_configuration():
    assert CCAMonitor(layers=["fc1"]).state_key != CCAMonitor(layers=["fc2"]).state_key
    assert CCAMonitor().state_key == CCAMonitor().state_key


class _CrashingNet(TinyConvNet):
    def __init__(self, crash_at: int, error: type[BaseException]) -> None:
        super().__init__()
        self.crash_at, self.error = crash_at, error

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == self.crash_at:
            raise self.error("stop")
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("error", "raised"),
    [(RuntimeError, RuntimeError), (KeyboardInterrupt, SystemExit)],
    ids=["exception", "keyboard-interrupt"],
)
def test_crash_keeps_snapshots_and_report_recovers_the_curves(tmp_path, error, raised):
    import signal

    from cca_monitor.cli import main

    handler = signal.getsignal(signal.SIGINT)
    monitor = CCAMonitor(every_n_train_steps=3)
    train, val = tiny_loaders()
    trainer = tiny_trainer(tmp_path, callbacks=[monitor])
    try:
        with pytest.raises(raised), pytest.warns(UserWarning, match="cca-monitor report"):
            trainer.fit(_CrashingNet(crash_at=7, error=error), train, val)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after an interrupt
    assert monitor.store.steps() == [0, 3, 6]
    out = tmp_path / "recovered"
    assert main(["report", str(monitor.run_dir), "--out", str(out)]) == 0
    records = read_results(out / "cca_results.json")
    final = [r for r in records if r.reference == "final" and r.measure == "svcca"]
    assert sorted({r.step for r in final}) == [0, 3, 6]
    assert all(r.distance == pytest.approx(0.0, abs=1e-6) for r in final if r.step == 6)
    assert (out / "cca_svcca_heatmap.png").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_failed_snapshot_write_is_reported_and_training_goes_on(tmp_path, monkeypatch):
    def disk_full(self, step, activations):
        if step == 3:
            raise OSError(28, "No space left on device")
        return original(self, step, activations)

    original = SnapshotStore.write
    monkeypatch.setattr(SnapshotStore, "write", disk_full)
    monitor = CCAMonitor(every_n_train_steps=3)
    with pytest.warns(UserWarning, match="could not write the snapshot at step 3"):
        trainer, _ = _fit(tmp_path, monitor)
    assert trainer.global_step == 16
    assert monitor.store.steps() == [0, 6, 9, 12, 15, 16]
    assert {r.step for r in monitor.results if r.reference == "final"} == {0, 6, 9, 12, 15, 16}


class _AugmentedDataset(torch.utils.data.Dataset):
    """Training examples with random noise drawn from torch's, Python's and numpy's RNGs."""

    def __init__(self) -> None:
        self.data = tiny_dataset(256, 0)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        import random

        x, y = self.data[index]
        noise = 0.1 * torch.randn_like(x) + random.random() * 0.01 + float(np.random.rand()) * 0.01
        return x + noise, y


def test_probe_from_augmented_training_data_leaves_rng_alone(tmp_path):
    def fit(root, callbacks):
        pl.seed_everything(0, verbose=False)
        model = TinyConvNet()
        loader = torch.utils.data.DataLoader(_AugmentedDataset(), batch_size=32, shuffle=True)
        tiny_trainer(root, callbacks=callbacks, max_epochs=1).fit(model, loader)
        return model

    without = fit(tmp_path / "a", [])
    with_monitor = fit(tmp_path / "b", [CCAMonitor(num_snapshots=3, probe_size=100)])
    for a, b in zip(_state(without).values(), _state(with_monitor).values(), strict=True):
        assert torch.equal(a, b)


def test_large_probe_runs_in_minibatches(tmp_path):
    """50,400 conv rows per snapshot: the probe forward runs in minibatches of 100 examples."""
    probe = tiny_dataset(1400, 7).tensors[0]
    monitor = CCAMonitor(
        probe, layers=["conv"], probe_batch_size=100, max_rows=None, num_snapshots=2
    )
    model = TinyConvNet()
    eval_batches = []
    model.register_forward_hook(
        lambda module, args, out: eval_batches.append(len(args[0])) if not module.training else None
    )
    pl.seed_everything(0, verbose=False)
    trainer = tiny_trainer(tmp_path, callbacks=[monitor], max_epochs=1, limit_val_batches=0)
    trainer.fit(model, tiny_loaders()[0])
    assert eval_batches == [100] * 28  # 14 minibatches at each of the 2 snapshots
    assert monitor.store.read(0)["conv"].shape == (1400 * 36, 4)
    assert all(math.isfinite(r.distance) for r in monitor.results)


def test_a_run_whose_every_layer_diverges_keeps_training(tmp_path):
    monitor = CCAMonitor(layers=["fc1"], every_n_train_steps=4)
    trainer = tiny_trainer(tmp_path, callbacks=[monitor], limit_val_batches=0)
    model = TinyConvNet()

    def diverge_after_step_8(module, args, output):
        if trainer.global_step >= 8 and not module.training:
            output.fill_(math.inf)

    model.fc1.register_forward_hook(diverge_after_step_8)
    with pytest.warns(UserWarning, match="no layer could be recorded at step 8"):
        trainer.fit(model, tiny_loaders()[0])
    assert trainer.global_step == 16
    assert monitor.store.steps() == [0, 4]


def test_a_folder_with_another_runs_snapshots_is_refused(tmp_path):
    _fit(tmp_path, CCAMonitor(num_snapshots=2, dirpath=tmp_path / "run"), max_epochs=1)
    with pytest.raises(ValueError, match="already holds snapshots of another run"):
        _fit(tmp_path, CCAMonitor(num_snapshots=2, dirpath=tmp_path / "run"), max_epochs=1)


def test_a_probe_with_nan_is_refused_at_the_start(tmp_path):
    probe = tiny_dataset(100, 3).tensors[0]
    probe[5, 0, 1, 1] = math.nan
    with pytest.raises(ValueError, match="probe holds 1 NaN or infinite values"):
        _fit(tmp_path, CCAMonitor(probe, num_snapshots=2), max_epochs=1)
