"""Splits and few-shot samplers: disjoint, the stated sizes and per-class counts, seeded, and the
classification datamodule never lets a training image into validation or test (for any examples_per_class)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transferlab.data.base import (
    ClassificationDataModule,
    TensorImageDataset,
    Transformed,
    few_shot,
    split_train_val,
    targets_of,
)
from transferlab.utils.errors import UserError

FAST = settings(max_examples=40, deadline=None)


# -- split_train_val -------------------------------------------------------------------------------------------
@FAST
@given(
    num=st.integers(2, 300),
    val_fraction=st.floats(0.01, 0.99, exclude_min=True, exclude_max=True),
    seed=st.integers(0, 2**31 - 1),
)
def test_split_is_a_sorted_partition_of_the_stated_size(num: int, val_fraction: float, seed: int) -> None:
    train, val = split_train_val(num, val_fraction, seed)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(num))
    assert len(val) == max(1, round(num * val_fraction))
    assert train == sorted(train) and val == sorted(val)
    assert (train, val) == split_train_val(num, val_fraction, seed)


@FAST
@given(seed=st.integers(0, 2**31 - 2), val_fraction=st.floats(0.1, 0.5))
def test_split_differs_between_seeds(seed: int, val_fraction: float) -> None:
    # 200 images, ≥ 20 in validation: two seeds giving the same split has probability < 1e-25.
    assert split_train_val(200, val_fraction, seed)[1] != split_train_val(200, val_fraction, seed + 1)[1]


def test_split_is_the_seeded_permutation() -> None:
    """The first round(n·f) images of torch's seeded permutation are validation (the documented protocol)."""
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3)).tolist()
    assert split_train_val(50, 0.2, seed=3) == (sorted(order[10:]), sorted(order[:10]))


def test_split_keeps_at_least_one_validation_image() -> None:
    assert len(split_train_val(10, 0.01, seed=0)[1]) == 1
    assert len(split_train_val(10, 0.35, seed=0)[1]) == 4


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_fractions_outside_the_open_interval(fraction: float) -> None:
    with pytest.raises(UserError, match=r"data.val_fraction must be in \(0, 1\), got"):
        split_train_val(10, fraction, seed=0)


# -- few_shot --------------------------------------------------------------------------------------------------
@st.composite
def labelled_pool(draw: st.DrawFn) -> tuple[list[int], torch.Tensor, int]:
    """A dataset's targets, a pool of its indices with ≥ `per_class` members of every class present, and K."""
    per_class = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(per_class, per_class + 6), min_size=1, max_size=5))
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(draw(st.integers(0, 999))))
    extra = draw(st.integers(0, 5))  # indices outside the pool (like validation images)
    targets = torch.cat([targets[order], torch.zeros(extra, dtype=torch.long)])
    pool = list(range(len(order)))
    return pool, targets, per_class


@FAST
@given(data=labelled_pool(), seed=st.integers(0, 2**31 - 1))
def test_few_shot_keeps_k_per_class_from_the_pool_only(data, seed: int) -> None:
    pool, targets, per_class = data
    kept = few_shot(pool, targets, per_class, seed)
    assert set(kept) <= set(pool) and len(set(kept)) == len(kept) and kept == sorted(kept)
    counts = torch.bincount(targets[kept], minlength=int(targets[pool].max()) + 1)
    assert counts.tolist() == [per_class] * len(targets[pool].unique())
    assert kept == few_shot(pool, targets, per_class, seed)


def test_few_shot_never_reaches_outside_its_pool() -> None:
    targets = torch.arange(60) % 3
    pool = list(range(0, 60, 2))  # the even images only (the odd ones are, say, validation)
    for seed in range(5):
        assert all(i % 2 == 0 for i in few_shot(pool, targets, per_class=4, seed=seed))


@FAST
@given(seed=st.integers(0, 2**31 - 2))
def test_few_shot_differs_between_seeds(seed: int) -> None:
    targets = torch.arange(100) % 5  # 20 per class, keep 3: an identical draw has probability 1140⁻⁵
    pool = list(range(100))
    assert few_shot(pool, targets, 3, seed) != few_shot(pool, targets, 3, seed + 1)


def test_few_shot_is_the_seeded_permutation_per_class() -> None:
    targets = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    pool = [0, 1, 2, 3, 4, 5, 6, 7]
    generator = torch.Generator().manual_seed(5)
    zeros, ones = torch.tensor([0, 2, 4, 6]), torch.tensor([1, 3, 5, 7])
    expected = zeros[torch.randperm(4, generator=generator)[:2]].tolist()
    expected += ones[torch.randperm(4, generator=generator)[:2]].tolist()
    assert few_shot(pool, targets, 2, seed=5) == sorted(expected)


def test_few_shot_takes_a_class_with_exactly_k_and_rejects_fewer() -> None:
    targets = torch.tensor([0, 0, 0, 1, 1])
    kept = few_shot([0, 1, 2, 3, 4], targets, per_class=2, seed=0)
    assert len(kept) == 4 and {3, 4} <= set(kept)
    with pytest.raises(UserError) as err:
        few_shot([0, 1, 2, 3, 4], targets, per_class=3, seed=0)
    assert str(err.value) == (
        "class 1 has only 2 training images, fewer than data.examples_per_class=3. "
        "Lower examples_per_class or val_fraction"
    )


# -- the classification datamodule ----------------------------------------------------------------------------
NUM_CLASSES = 4


class TaggedData(ClassificationDataModule):
    """In-memory images whose pixels carry their identity: value = split tag · 100 + index (train < 100)."""

    def __init__(self, per_class: int = 12, **kwargs) -> None:
        super().__init__(**{"batch_size": 4, "image_size": 2, "val_fraction": 0.1, "augment": None, **kwargs})
        self.per_class = per_class

    def load_split(self, split: str) -> TensorImageDataset:
        assert split in ("train", "test"), split
        num = self.per_class * NUM_CLASSES if split == "train" else 20
        ids = torch.arange(num) + (0 if split == "train" else 100)
        images = ids.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
        return TensorImageDataset(images, torch.arange(num) % NUM_CLASSES, [f"c{i}" for i in range(NUM_CLASSES)])


def image_ids(split: Transformed) -> list[int]:
    return [int(split[i][0][0, 0, 0]) for i in range(len(split))]


@pytest.mark.parametrize("examples_per_class", [None, 1, 2, 5, 8])
@pytest.mark.parametrize("split_seed", [0, 1])
def test_datamodule_train_val_test_are_disjoint(examples_per_class: int | None, split_seed: int) -> None:
    dm = TaggedData(val_fraction=0.25, split_seed=split_seed, examples_per_class=examples_per_class)
    dm.setup("fit")
    train, val, test = (image_ids(dm._splits[s]) for s in ("train", "val", "test"))
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert all(i >= 100 for i in test) and len(test) == 20
    expected_train, expected_val = split_train_val(48, 0.25, split_seed)
    assert val == expected_val  # validation is the same whatever examples_per_class is
    if examples_per_class is None:
        assert train == expected_train
    else:
        assert set(train) <= set(expected_train)
        assert torch.bincount(torch.tensor(train) % NUM_CLASSES).tolist() == [examples_per_class] * NUM_CLASSES
        assert train == few_shot(expected_train, targets_of(dm.load_split("train")), examples_per_class, split_seed)
    assert dm._sources["train"][1] == train and dm._sources["val"][1] == val and dm._sources["test"][1] is None


def test_datamodule_few_shot_too_large_for_the_training_part_is_a_user_error() -> None:
    # 12 per class, 3 per class go to validation on average: 12 per class cannot all stay for training.
    with pytest.raises(UserError, match="fewer than data.examples_per_class=12"):
        TaggedData(val_fraction=0.25, examples_per_class=12).setup("fit")


def test_datamodule_rejects_nonpositive_examples_per_class() -> None:
    with pytest.raises(UserError, match="examples_per_class must be >= 1 or null, got 0"):
        TaggedData(examples_per_class=0)
    assert TaggedData(examples_per_class=1).examples_per_class == 1


def test_datamodule_defaults() -> None:
    """Sizes and fractions come from the data config (required here); the rest defaults to off: split seed 0,
    all training images, no workers, no augmentation, automatic device placement."""
    dm = TaggedData.__new__(TaggedData)
    with pytest.raises(TypeError, match="batch_size', 'image_size', and 'val_fraction'"):
        ClassificationDataModule.__init__(dm)
    ClassificationDataModule.__init__(dm, batch_size=64, image_size=32, val_fraction=0.1)
    assert (dm.batch_size, dm.num_workers, dm.val_fraction, dm.split_seed) == (64, 0, 0.1, 0)
    assert (dm.examples_per_class, dm.image_size, dm.augment, dm.on_gpu) == (None, 32, None, None)
    assert dm.classes == [] and dm._sources == {} and dm._on_device == {} and dm._splits == {}
    dm.per_class = 12
    dm.setup("fit")
    assert len(dm._splits["val"]) == round(48 * 0.1) and dm.num_classes == NUM_CLASSES
    assert dm._splits["val"].dataset.indices == split_train_val(48, 0.1, seed=0)[1]


def test_datamodule_settings_are_kept() -> None:
    augment = lambda image: image + 1  # noqa: E731
    dm = TaggedData(num_workers=3, image_size=48, on_gpu=False, augment=augment)
    assert (dm.num_workers, dm.image_size, dm.on_gpu, dm.augment) == (3, 48, False, augment)


class Flipped(TaggedData):
    """Tags the eval transform so the test can see which split got which transform."""

    def eval_transform(self):
        return lambda image: 255 - image


def test_datamodule_transforms_train_with_augment_and_eval_splits_with_eval_transform() -> None:
    dm = Flipped(val_fraction=0.25, augment=lambda image: image + 1)
    dm.setup("fit")
    train_ids, val_ids = split_train_val(48, 0.25, 0)
    assert image_ids(dm._splits["train"]) == [i + 1 for i in train_ids]
    assert image_ids(dm._splits["val"]) == [255 - i for i in val_ids]
    assert image_ids(dm._splits["test"]) == [255 - i for i in range(100, 120)]
    assert dm._splits["train"][0][1] == train_ids[0] % NUM_CLASSES  # targets pass through untouched


class OtherTestClasses(TaggedData):
    def load_split(self, split: str) -> TensorImageDataset:
        data = super().load_split(split)
        if split == "test":
            data.classes = ["x", "y", "z", "w"]
        return data


def test_datamodule_rejects_test_classes_that_differ_from_train() -> None:
    with pytest.raises(UserError) as err:
        OtherTestClasses().setup("fit")
    assert str(err.value) == (
        "train and test splits have different classes: ['c0', 'c1', 'c2', 'c3'] vs ['x', 'y', 'z', 'w']"
    )


def test_setup_runs_once() -> None:
    dm = TaggedData(val_fraction=0.25, examples_per_class=2)
    dm.setup("fit")
    first = dm._splits
    dm.split_seed = 5  # a second setup (e.g. for "test") keeps the splits of the first
    dm.setup("test")
    assert dm._splits is first
