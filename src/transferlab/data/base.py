"""What datamodules share: `BatchedDataModule` (global batch split per device, loaders) for every task, and
`ClassificationDataModule` on top of it (splits, few-shot sampling, transforms) for classification.

A subclass only says where its official ``train`` and ``test`` splits come from (`load_split`). This base
optionally keeps only some ``classes`` (in every split, labels re-indexed in the order given), carves a seeded
validation set out of ``train`` (the test split is never touched for model selection), optionally keeps
``examples_per_class`` training images per class, applies the augmentation preset to
training images only, and splits the global batch size across devices.

Images leave the datamodule as uint8 tensors (C, H, W); tasks convert and normalise them on the device,
which keeps host work and host→device traffic at a quarter of float32.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from torchvision.transforms import v2

from transferlab.data.device_loader import DeviceBatchLoader, device_augment_from
from transferlab.data.device_memory import keep_on_device
from transferlab.data.images import BadFiles
from transferlab.data.resumable import ResumableLoader
from transferlab.utils.errors import UserError, one_line
from transferlab.utils.seeding import stream_seed
from transferlab.utils.threads import loader_workers

if TYPE_CHECKING:
    from transferlab.backbones import Preprocessing

Transform = Callable[[torch.Tensor], torch.Tensor]


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Bilinear (antialiased) resize of a square uint8 batch to `size`², in chunks to bound memory."""
    out = [
        F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for part in images.split(chunk)
    ]
    return torch.cat(out)


def center_crop_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    return images[..., top : top + size, left : left + size]


class TensorImageDataset(Dataset):
    """Images already in memory as one uint8 tensor (N, C, H, W); per-sample transform on access."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> None:
        self.images, self.targets, self.classes = images, targets, list(classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])


class Transformed(Dataset):
    """A view of `dataset` (optionally restricted to `indices`) with `transform` applied to each image."""

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None, transform: Transform | None) -> None:
        self.dataset = dataset if indices is None else Subset(dataset, list(indices))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        image, target = self.dataset[index]
        if image is None:  # an unreadable file the loader skipped (`images.SkippingLoader`)
            return None
        return (self.transform(image) if self.transform else image), target


class RankSeededSamples(Dataset):
    """`dataset` whose random transforms draw, per sample, from torch's RNG seeded by (run seed, rank, epoch, index)
    inside a fork of the RNG.

    Under DDP with no loader workers the transforms run in the training process and draw from the global RNG,
    which `seed_everything` seeds alike on every rank: every rank would augment alike. The global RNG cannot simply
    be re-seeded per rank, because the shuffle (`SeededShuffle`) draws each epoch's permutation from it and the
    ranks' shards are disjoint only while that permutation is the same on all of them. Forking leaves it untouched.
    (With workers, Lightning already seeds each worker from the rank.)"""

    def __init__(self, dataset: Dataset, seed: int, rank: int, epoch: Callable[[], int]) -> None:
        self.dataset, self.seed, self.rank, self.epoch = dataset, seed, rank, epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(self.seed, self.rank, self.epoch(), index))
            return self.dataset[index]


def collate_readable(batch: list[Any]) -> Any:
    """Default collation of the samples that were read (a skipped unreadable file arrives as None)."""
    readable = [sample for sample in batch if sample is not None]
    if not readable:
        raise UserError(f"all {len(batch)} images of a batch were unreadable (see the warnings). Check data.root")
    return default_collate(readable)


def targets_of(dataset: Dataset) -> torch.Tensor:
    """Class index of every sample, without decoding images (datasets expose ``targets``)."""
    return torch.as_tensor(dataset.targets)  # type: ignore[attr-defined]


class ClassSubset(Dataset):
    """The samples of `dataset` at `indices`, relabelled: ``targets`` and ``classes`` are the new ones."""

    def __init__(self, dataset: Dataset, indices: list[int], targets: torch.Tensor, classes: list[str]) -> None:
        self.dataset, self.indices, self.targets, self.classes = dataset, indices, targets, classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int]:
        image, _ = self.dataset[self.indices[index]]
        return image, int(self.targets[index])


def class_positions(available: Sequence[str], wanted: Sequence[str | int]) -> list[int]:
    """Positions in `available` of the `wanted` classes, given by name or by index; a one-line error otherwise."""
    positions = []
    for item in wanted:
        name = str(item)
        if name in available:
            positions.append(list(available).index(name))
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(available):
            positions.append(item)
        else:
            raise UserError(
                f"data.classes: no class '{item}' in this dataset. Available (names, or indices 0–"
                f"{len(available) - 1}): {', '.join(available)}"
            )
    if len(set(positions)) != len(positions):
        raise UserError(f"data.classes lists a class twice: {list(wanted)}")
    return positions


def select_classes(dataset: Dataset, wanted: Sequence[str | int]) -> Dataset:
    """Only the samples of the `wanted` classes, labelled 0..k-1 in the order given (names kept for checkpoints).

    In-memory data stays in memory (a smaller `TensorImageDataset`, still eligible for the device path);
    file-backed data is viewed through `ClassSubset`, so nothing is decoded here."""
    available = list(dataset.classes)  # type: ignore[attr-defined]
    positions = class_positions(available, wanted)
    relabel = torch.full((len(available),), -1, dtype=torch.long)
    relabel[positions] = torch.arange(len(positions))
    new_targets = relabel[targets_of(dataset)]
    keep = (new_targets >= 0).nonzero().flatten()
    names = [available[i] for i in positions]
    if isinstance(dataset, TensorImageDataset):
        return TensorImageDataset(dataset.images[keep], new_targets[keep], names)
    return ClassSubset(dataset, keep.tolist(), new_targets[keep], names)


def split_train_val(num: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random split of ``range(num)``; the same seed always gives the same split."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    order = torch.randperm(num, generator=torch.Generator().manual_seed(seed)).tolist()
    num_val = max(1, round(num * val_fraction))
    return sorted(order[num_val:]), sorted(order[:num_val])


def few_shot(indices: list[int], targets: torch.Tensor, per_class: int, seed: int) -> list[int]:
    """Keep `per_class` seeded random examples of each class among `indices` (BiT's few-shot protocol)."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.as_tensor(indices)
    kept: list[int] = []
    for cls in targets[pool].unique().tolist():
        members = pool[targets[pool] == cls]
        if len(members) < per_class:
            raise UserError(
                f"class {cls} has only {len(members)} training images, fewer than "
                f"data.examples_per_class={per_class}. Lower examples_per_class or val_fraction"
            )
        kept += members[torch.randperm(len(members), generator=generator)[:per_class]].tolist()
    return sorted(kept)


def _unchanged(image: torch.Tensor) -> torch.Tensor:
    return image


class BatchedDataModule(pl.LightningDataModule):
    """What every transferlab datamodule shares: a global batch split across devices, and its loaders."""

    def __init__(self, batch_size: int, num_workers: int | None = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise UserError(f"data.batch_size must be a positive integer, got {batch_size}")
        self.batch_size = batch_size
        self.num_workers = num_workers  # None: sized from the run's CPU threads (`loader_workers`)
        self.workers_used: int | None = None  # what the last loader got (metrics.json records it)
        self.bad_files = BadFiles("skip")  # datamodules that read files take data.on_bad_file
        self._train_loader: ResumableLoader | None = None
        self._train_loader_state: dict[str, Any] | None = None
        self._fits_on_device: bool | None = None  # the size check, made once at the first loader
        self._splits: dict[str, Dataset] = {}

    def record_skipped_files_in(self, folder: Path) -> None:
        """Keep the record of skipped unreadable files in `folder` (the run's), shared by workers and ranks."""
        self.bad_files.folder = folder

    def skipped_files(self) -> list[dict[str, str]]:
        """The unreadable files this run skipped (path and reason), for ``metrics.json``."""
        return self.bad_files.skipped()

    # -- the protocol tasks, tl-train and tl-predict rely on (defaults fit data without classes) ----------
    def task_args(self) -> dict[str, Any]:
        """Constructor arguments a task derives from the data (never hard-coded in a model config)."""
        return {}

    def follow_weights(self, preprocessing: Preprocessing | None) -> None:
        """What the model's weights expect of their inputs (`backbones.Preprocessing`; None: nothing to follow).
        tl-train, tl-eval, tl-predict and tl-export call it before the data is set up; a datamodule whose config
        leaves a setting to the weights (``data.resize_ratio: null``) takes it from here. By default none is."""

    def preprocessing_record(self) -> dict[str, Any]:
        """What this data's preprocessing took from where (the run's header and ``metrics.json``); {}: nothing."""
        return {}

    def file_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Makes a decoded image file (uint8 RGB, any size) into an input like this data's test images, for
        ``tl-predict``; by default the file as it is (image-to-image tasks take any size)."""
        return _unchanged

    def fits_on_device(self, device: torch.device, what: str, nbytes: Callable[[], int], forced: bool) -> bool:
        """`device_memory.keep_on_device` for data of `nbytes()` bytes (`what` names it in the message; `forced`:
        ``data.on_gpu=true``), decided once per run, at the first loader."""
        if self._fits_on_device is None:
            self._fits_on_device = keep_on_device(nbytes(), device, forced, what)
        return self._fits_on_device

    def training_device(self) -> torch.device:
        """The device this rank trains on (the CPU before a trainer is attached)."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def per_device_batch_size(self) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise UserError(
                f"data.batch_size={self.batch_size} is the global batch and must divide evenly across "
                f"{world} devices. Use a multiple of {world}"
            )
        return self.batch_size // world

    def _loader(
        self, split: str, shuffle: bool, dataset: Dataset | None = None, collate_fn: Callable[..., Any] | None = None
    ) -> DataLoader:
        dataset = self._splits[split] if dataset is None else dataset
        batch_size = self.per_device_batch_size()
        workers = loader_workers() if self.num_workers is None else self.num_workers
        self.workers_used = workers
        if workers > 0:
            self.bad_files.ready_folder()  # before the workers fork, so they all record into one folder
        options: dict[str, Any] = {
            "batch_size": batch_size,
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "pin_memory": torch.cuda.is_available(),
            "collate_fn": collate_fn or collate_readable,
        }
        if not shuffle:
            return DataLoader(dataset, **options)
        if workers == 0 and self.trainer is not None and self.trainer.world_size > 1:
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything, equal on every rank
            dataset = RankSeededSamples(dataset, seed, self.trainer.global_rank, self._current_epoch)
        self._train_loader = ResumableLoader(  # training: resumable mid-epoch
            dataset,
            shuffle=True,
            drop_last=len(dataset) > batch_size,  # a size-1 last batch breaks BatchNorm
            current_epoch=self._current_epoch,
            **options,
        )
        if self._train_loader_state is not None:
            self._train_loader.load_state_dict(self._train_loader_state)
        return self._train_loader

    # -- resuming mid-epoch: the training loader's position travels in the checkpoint -----------------
    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint (Lightning's datamodule hook): where the training loader is in its epoch."""
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Applied to the training loader whether it exists yet or is made later (see `ResumableLoader`)."""
        self._train_loader_state = state_dict.get("train_loader")
        if self._train_loader is not None and self._train_loader_state is not None:
            self._train_loader.load_state_dict(self._train_loader_state)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches of the device-resident path are already there: skip Lightning's generic collection walk."""
        tensors = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, tuple | list) else None
        if tensors is not None and all(isinstance(t, torch.Tensor) and t.device == device for t in tensors):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class ClassificationDataModule(BatchedDataModule, abc.ABC):
    """Base for image-classification datamodules; subclasses implement `load_split`."""

    def __init__(
        self,
        batch_size: int,
        image_size: int,
        val_fraction: float,
        num_workers: int | None = 0,
        split_seed: int = 0,
        examples_per_class: int | None = None,
        augment: Transform | None = None,
        on_gpu: bool | None = None,
        classes: Sequence[str | int] | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if classes is not None and len(classes) < 2:
            raise UserError(f"data.classes must list at least 2 classes (or be null for all), got {classes}")
        if examples_per_class is not None and examples_per_class < 1:
            raise UserError(f"data.examples_per_class must be >= 1 or null, got {examples_per_class}")
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.examples_per_class = examples_per_class
        self.image_size = image_size
        self.augment = augment
        self.on_gpu = on_gpu
        self.class_selection = list(classes) if classes is not None else None
        self.classes: list[str] = []
        self._sources: dict[str, tuple[Dataset, list[int] | None]] = {}
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- what subclasses provide -------------------------------------------------------------------
    @abc.abstractmethod
    def load_split(self, split: str) -> Dataset:
        """The official ``train`` or ``test`` split: uint8 (C, H, W) images, with ``targets`` and ``classes``."""

    def eval_transform(self) -> Transform | None:
        """Deterministic preprocessing for validation/test images (none for fixed-size in-memory data)."""
        return None

    def train_transform(self) -> Transform | None:
        return self.augment

    def file_transform(self) -> Transform:
        """An image file of any size made into an input like this data's test images (``tl-predict``): the
        short side resized to ``image_size``, centre-cropped square (datasets with an eval transform use it)."""
        return v2.Compose([v2.Resize(self.image_size, antialias=True), v2.CenterCrop(self.image_size)])

    def fit_eval_images(self, images: torch.Tensor) -> torch.Tensor:
        """What `eval_transform` does, for a whole in-memory split at once (the device path); none by default."""
        return images

    # -- shared machinery --------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def task_args(self) -> dict[str, Any]:
        self.setup("fit")
        return {"num_classes": self.num_classes, "class_names": list(self.classes)}

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        train, test = self.load_split("train"), self.load_split("test")
        if self.class_selection is not None:
            train, test = (select_classes(split, self.class_selection) for split in (train, test))
        self.classes = list(train.classes)  # type: ignore[attr-defined]
        if list(test.classes) != self.classes:  # type: ignore[attr-defined]
            raise UserError(f"train and test splits have different classes: {self.classes} vs {test.classes}")
        train_idx, val_idx = split_train_val(len(train), self.val_fraction, self.split_seed)  # type: ignore
        if self.examples_per_class:
            train_idx = few_shot(train_idx, targets_of(train), self.examples_per_class, self.split_seed)
        self._sources = {"train": (train, train_idx), "val": (train, val_idx), "test": (test, None)}
        self._splits = {
            "train": Transformed(train, train_idx, self.train_transform()),
            "val": Transformed(train, val_idx, self.eval_transform()),
            "test": Transformed(test, None, self.eval_transform()),
        }

    def device_resident(self) -> bool:
        """Whether batches come from tensors kept on the training device (`on_gpu`; auto: in-memory data on a
        GPU, when it takes a small share of the free memory: `device_memory.keep_on_device`)."""
        in_memory = all(isinstance(source, TensorImageDataset) for source, _ in self._sources.values())
        if self.on_gpu and not in_memory:
            raise UserError(f"data.on_gpu=true needs an in-memory dataset; {type(self).__name__} reads files")
        device = self.training_device()
        if self.on_gpu is False or (self.on_gpu is None and not (in_memory and device.type == "cuda")):
            return False
        what = "the dataset (train, validation and test images)"
        return self.fits_on_device(device, what, self.device_bytes, bool(self.on_gpu))

    def device_bytes(self) -> int:
        """What the device path uploads for the whole run: every split's images and targets, as stored."""
        total = 0
        for source, indices in self._sources.values():
            images, targets = source.images, source.targets  # type: ignore[attr-defined]
            count = len(images) if indices is None else len(indices)
            per_image = images.numel() // max(1, len(images)) * images.element_size()
            total += count * (per_image + targets.element_size())
        return total

    def _device_loader(self, split: str, shuffle: bool) -> DeviceBatchLoader:
        device = self.training_device()
        if split not in self._on_device:  # copied to the device once, kept for the whole run
            source, indices = self._sources[split]
            images, targets = source.images, source.targets  # type: ignore[attr-defined]
            if indices is not None:
                images, targets = images[indices], targets[indices]
            images = images.to(device)
            self._on_device[split] = (images if shuffle else self.fit_eval_images(images), targets.to(device))
        images, targets = self._on_device[split]
        augment = device_augment_from(self.train_transform(), self.image_size) if shuffle else None
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        return DeviceBatchLoader(images, targets, self.per_device_batch_size(), shuffle, augment, rank, world)

    def _loader(self, split: str, shuffle: bool) -> DataLoader | DeviceBatchLoader:
        if not self.device_resident():
            return super()._loader(split, shuffle)
        try:
            loader = self._device_loader(split, shuffle)
            self.workers_used = 0  # batches come from device memory, no loader processes
            return loader
        except UserError as err:
            if self.on_gpu:  # asked for explicitly: say why it cannot be done
                raise
            rank_zero_warn(f"{one_line(err)}; data.on_gpu=null (auto) uses the CPU DataLoader path instead")
            self.on_gpu = False
            return super()._loader(split, shuffle)
