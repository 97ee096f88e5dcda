"""Device-resident augmentation: every op equals torchvision's on fixed parameters, the per-sample draws follow
torchvision's distributions, every built-in preset translates, and nothing synchronises with the host."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import hydra
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from omegaconf import OmegaConf
from torchvision.transforms import v2

from transferlab.data import device_augment as da
from transferlab.data.device_augment import DeviceAugment, device_augment_from
from transferlab.utils.config import config_dir
from transferlab.utils.errors import UserError

PRESETS = sorted((Path(config_dir()) / "data" / "augment").glob("*.yaml"))


def random_images(batch: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random uint8 RGB images; the top rows are gray (r = g = b), where blends hit their rounding edge cases."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    images[:, :, : size // 4] = images[:, :1, : size // 4]
    return images


def assert_matches(out: torch.Tensor, ref: torch.Tensor, max_fraction: float = 0.0) -> None:
    """Equal, or (max_fraction > 0) off by at most 1 on at most that fraction of the values."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    diff = (out.int() - ref.int()).abs()
    fraction = (diff > 0).float().mean().item()
    assert fraction <= max_fraction and (max_fraction == 0 or diff.max() <= 1), (fraction, diff.max().item())


# Blends fuse ``x*r + y*(1-r)`` with one rounding (addcmul, like torchvision's add_(alpha=)); measured exact
# here. The allowance only absorbs a build that does not fuse, where a rare value lands 1 ulp across an integer.
BLEND_TOLERANCE = 1e-3


# -- (1) each op equals torchvision's on fixed parameters ----------------------------------------------------


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_rotate_matches_torchvision(mode: str) -> None:
    images = random_images(12, size=15)
    angles = torch.tensor([0.0, 90.0, -90.0, 180.0, 270.0, 45.0, -7.3, 9.99, -135.0, 3.5, 120.25, -0.5])
    out = da.rotate_batch(images, angles, mode)
    assert_matches(out, torch.stack([TF.rotate(im, float(a), mode) for im, a in zip(images, angles)]))
    # a fill and a custom centre go through torchvision's mask-channel path
    out = da.rotate_batch(images, angles, mode, fill=(10.0, 200.0, 30.0), center=(3.0, 5.0))
    ref = [TF.rotate(im, float(a), mode, center=[3.0, 5.0], fill=[10.0, 200.0, 30.0]) for im, a in zip(images, angles)]
    assert_matches(out, torch.stack(ref))


def test_identity_matrix_leaves_images_unchanged() -> None:
    images = random_images(4, size=17)
    matrices = da.inverse_affine_matrix(torch.zeros(4, dtype=torch.float64))
    assert torch.equal(da.affine_batch(images, matrices), images)


@pytest.mark.parametrize(("cls", "size"), [(v2.TrivialAugmentWide, 15), (v2.RandAugment, 16)])
def test_every_auto_augment_op_matches_torchvision(cls: type, size: int) -> None:
    """Every op of the class's space, at every magnitude bin and both signs, against torchvision's own op."""
    transform = cls()
    (step,) = device_augment_from(transform).steps  # type: ignore[union-attr]
    table, signed = step.tables(size, size, torch.device("cpu"))
    bins = torch.arange(step.num_bins).repeat(2)
    negate = torch.arange(2 * step.num_bins) >= step.num_bins
    single = da.AutoAugmentStep(step.ops, step.magnitude_fns, step.signed, 1, None, step.num_bins, step.mode, step.fill)
    for index, name in enumerate(step.ops):
        images = random_images(len(bins), size, seed=index)
        magnitude = torch.where(negate & signed[index], -table[index, bins], table[index, bins])
        out = single.apply(images, {"op": torch.full((1, len(bins)), index), "magnitude": magnitude[None]})
        ref = [
            transform._apply_image_or_video_transform(
                im[None], name, float(m), transform.interpolation, transform._fill
            )[0]
            for im, m in zip(images, magnitude)
        ]
        tolerance = BLEND_TOLERANCE if name in ("Brightness", "Color", "Contrast", "Sharpness") else 0.0
        assert_matches(out, torch.stack(ref), tolerance)


@pytest.mark.parametrize(
    ("kernel", "reference", "low", "high"),
    [
        (da.adjust_brightness_batch, TF.adjust_brightness, 0.0, 2.0),
        (da.adjust_contrast_batch, TF.adjust_contrast, 0.0, 2.0),
        (da.adjust_saturation_batch, TF.adjust_saturation, 0.0, 2.0),
        (da.adjust_sharpness_batch, TF.adjust_sharpness, 0.0, 2.0),
        (da.adjust_hue_batch, TF.adjust_hue, -0.5, 0.5),
    ],
)
def test_colour_adjustments_match_torchvision(kernel, reference, low: float, high: float) -> None:
    images = random_images(16)
    factors = torch.empty(16).uniform_(low, high, generator=torch.Generator().manual_seed(1))
    out = kernel(images, factors.double())
    ref = [reference(im[None], float(f))[0] for im, f in zip(images, factors)]  # 4-D: CPU conv2d's fast path
    assert_matches(out, torch.stack(ref), BLEND_TOLERANCE)


def test_histogram_ops_match_torchvision() -> None:
    images = random_images(9)
    images[1] = 77  # constant image: autocontrast and equalize leave it alone
    images[2] = images[2] // 4 + 100  # low contrast
    bits = torch.arange(9)
    assert_matches(
        da.posterize_batch(images, bits), torch.stack([TF.posterize(im, int(b)) for im, b in zip(images, bits)])
    )
    thresholds = 255.0 * torch.linspace(1.0, 0.0, 9).double()
    ref = [TF.solarize(im, float(t)) for im, t in zip(images, thresholds)]
    assert_matches(da.solarize_batch(images, thresholds), torch.stack(ref))
    assert_matches(da.autocontrast_batch(images), torch.stack([TF.autocontrast(im) for im in images]))
    assert_matches(da.equalize_batch(images), torch.stack([TF.equalize(im) for im in images]))


def test_color_jitter_applies_each_samples_own_order() -> None:
    transform = v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    (step,) = device_augment_from(transform).steps  # type: ignore[union-attr]
    images = random_images(24)
    params = step.sample_params(images.shape, images.device)
    functions = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    ref = []
    for image, factors, order in zip(images, params["factors"], params["order"]):
        for index in order:
            image = functions[index](image[None], float(factors[index]))[0]
        ref.append(image)
    assert_matches(step.apply(images, params), torch.stack(ref), BLEND_TOLERANCE)


@pytest.mark.parametrize("padding_mode", ["constant", "edge", "reflect", "symmetric"])
def test_pad_crop_matches_torchvision(padding_mode: str) -> None:
    transform = v2.RandomCrop(12, padding=[1, 2, 3, 4], padding_mode=padding_mode, fill=9)
    (step,) = device_augment_from(transform).steps  # type: ignore[union-attr]
    images = random_images(20)
    params = step.sample_params(images.shape, images.device)
    assert params["top"].max() <= 16 + 2 + 4 - 12 and params["left"].max() <= 16 + 1 + 3 - 12
    ref = [
        TF.crop(TF.pad(im, [1, 2, 3, 4], fill=9, padding_mode=padding_mode), int(top), int(left), 12, 12)
        for im, top, left in zip(images, params["top"], params["left"])
    ]
    assert_matches(step.apply(images, params), torch.stack(ref))


def test_reflect_crop_lands_on_a_crop_of_the_padded_image() -> None:
    images = random_images(6, size=8)
    cropped = device_augment_from(v2.RandomCrop(8, padding=2, padding_mode="reflect"))(images)  # type: ignore[misc]
    padded = F.pad(images.float(), (2, 2, 2, 2), mode="reflect")
    for out, ref in zip(cropped.float(), padded):
        windows = ref.unfold(1, 8, 1).unfold(2, 8, 1)  # (C, 5, 5, 8, 8): every crop position
        assert (windows == out[:, None, None]).flatten(3).all(-1).all(0).any()


def test_flip() -> None:
    images = random_images(6)
    assert torch.equal(da.HorizontalFlipStep(1.0)(images), images.flip(-1))
    assert torch.equal(da.HorizontalFlipStep(0.0)(images), images)


@pytest.mark.parametrize("antialias", [True, False])
def test_resized_crop_matches_torchvision(antialias: bool) -> None:
    """Against torchvision on float images, the path it takes on the GPU (interpolate in float, round): exact with
    antialias (the presets' setting); without, PyTorch's 2-D bilinear kernel sums in another order, which moves
    a rare exact .5 to the other side (measured 7e-4 of the values, by 1). On CPU uint8 input torchvision uses
    fixed-point weights instead, which land within 1 (measured on ~17% of the values)."""
    images = random_images(6, size=24)
    boxes = [(0, 0, 24, 24), (3, 5, 10, 7), (0, 10, 24, 14), (20, 1, 4, 23), (2, 2, 19, 21), (7, 0, 17, 3)]
    top, left, height, width = (torch.tensor(column) for column in zip(*boxes))
    for size in [(24, 24), (16, 31)]:  # up- and downscaling
        out = da.resized_crop_batch(images, top, left, height, width, size, antialias)
        on_gpu, on_cpu = [], []
        for image, box in zip(images, boxes):
            on_gpu.append(TF.resized_crop(image.float(), *box, list(size), antialias=antialias).round().to(torch.uint8))
            on_cpu.append(TF.resized_crop(image, *box, list(size), antialias=antialias))
        assert_matches(out, torch.stack(on_gpu), 0.0 if antialias else 2e-3)
        assert_matches(out, torch.stack(on_cpu), max_fraction=0.3)


# -- (2) the per-sample draws follow torchvision's distributions ----------------------------------------------

N = 12_000  # draws per distribution check; frequencies within a few standard errors


def test_rotation_angles_are_uniform_in_range() -> None:
    (step,) = device_augment_from(v2.RandomRotation(10)).steps  # type: ignore[union-attr]
    angle = step.sample_params(torch.Size([N, 3, 8, 8]), torch.device("cpu"))["angle"]
    assert angle.min() >= -10 and angle.max() <= 10
    assert abs(angle.mean()) < 0.2 and abs(angle.std() - 20 / math.sqrt(12)) < 0.1
    # the sampled angle is the one applied: a lone pixel lands where rotate puts it
    images = torch.zeros(3, 1, 15, 15, dtype=torch.uint8)
    images[:, :, 2, 7] = 255
    params = {"angle": torch.tensor([-10.0, 4.0, 9.5])}
    ref = torch.stack([TF.rotate(im, float(a)) for im, a in zip(images, params["angle"])])
    assert torch.equal(step.apply(images, params), ref)


def test_color_jitter_factors_and_orders_are_uniform() -> None:
    (step,) = device_augment_from(v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)).steps  # type: ignore
    params = step.sample_params(torch.Size([N, 3, 8, 8]), torch.device("cpu"))
    factors = params["factors"]
    assert factors.shape == (N, 3) and factors.min() >= 0.6 and factors.max() <= 1.4
    assert torch.allclose(factors.mean(0), torch.ones(3, dtype=torch.float64), atol=0.01)
    quartiles = factors.quantile(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=0)
    assert torch.allclose(quartiles, torch.tensor([[0.8], [1.0], [1.2]], dtype=torch.float64), atol=0.02)
    orders = [tuple(order) for order in params["order"].tolist()]
    counts = [orders.count(permutation) for permutation in itertools.permutations(range(3))]
    assert min(counts) > N / 6 * 0.85 and max(counts) < N / 6 * 1.15


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_sharpness_and_flip_apply_with_probability_p(p: float) -> None:
    images = random_images(N // 10, size=8)
    for transform, key in [(v2.RandomAdjustSharpness(2.0, p=p), "apply"), (v2.RandomHorizontalFlip(p), "flip")]:
        (step,) = device_augment_from(transform).steps  # type: ignore[union-attr]
        params = step.sample_params(images.shape, images.device)
        assert abs(params[key].float().mean() - p) < 0.04
        out = step.apply(images, params)
        assert torch.equal(out[~params[key]], images[~params[key]])
        assert (out[params[key]] != images[params[key]]).flatten(1).any(1).all()


@pytest.mark.parametrize("cls", [v2.TrivialAugmentWide, v2.RandAugment])
def test_auto_augment_ops_bins_and_signs_are_uniform(cls: type) -> None:
    transform = cls()
    (step,) = device_augment_from(transform).steps  # type: ignore[union-attr]
    assert step.ops == tuple(cls._AUGMENTATION_SPACE)
    params = step.sample_params(torch.Size([N, 3, 32, 32]), torch.device("cpu"))
    op, bin_, negate = params["op"].flatten(), params["bin"].flatten(), params["negate"].flatten()
    assert params["op"].shape == (getattr(transform, "num_ops", 1), N)
    counts = torch.bincount(op, minlength=len(step.ops)).float()
    assert counts.min() > counts.mean() * 0.85 and counts.max() < counts.mean() * 1.15
    if cls is v2.RandAugment:
        assert (bin_ == transform.magnitude).all()
    else:
        bin_counts = torch.bincount(bin_, minlength=step.num_bins).float()
        assert bin_counts.min() > bin_counts.mean() * 0.75 and bin_counts.max() < bin_counts.mean() * 1.25
    signed = torch.tensor(step.signed)[op]
    assert not negate[~signed].any() and abs(negate[signed].float().mean() - 0.5) < 0.03
    table, _ = step.tables(32, 32, torch.device("cpu"))
    assert torch.equal(params["magnitude"].flatten().abs(), table[op, bin_].abs())


def test_resized_crop_boxes_follow_torchvision() -> None:
    torch.manual_seed(0)  # statistical comparison: seeded, so a tolerance breach is a bug, not bad luck
    transform = v2.RandomResizedCrop(32, antialias=True)
    (step,) = device_augment_from(transform).steps  # type: ignore[union-attr]
    params = step.sample_params(torch.Size([N, 3, 32, 32]), torch.device("cpu"))
    top, left, height, width = params["top"], params["left"], params["height"], params["width"]
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 32).all() and (left + width <= 32).all()
    assert (height >= 1).all() and (width >= 1).all()
    make_params = getattr(transform, "make_params", None) or transform._get_params
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    ref = [make_params([image]) for _ in range(N // 4)]
    for ours, key in [(height, "height"), (width, "width"), (top, "top"), (left, "left")]:
        theirs = torch.tensor([box[key] for box in ref], dtype=torch.float64)
        assert abs(ours.double().mean() - theirs.mean()) < 0.35, key
        assert abs(ours.double().std() - theirs.std()) < 0.35, key
    area = (height * width).double() / 32**2
    theirs = torch.tensor([box["height"] * box["width"] / 32**2 for box in ref], dtype=torch.float64)
    assert (
        abs(area.mean() - theirs.mean()) < 0.01
        and abs((area < 0.25).double().mean() - (theirs < 0.25).double().mean()) < 0.02
    )


def test_fallback_box_when_no_attempt_fits() -> None:
    step = da.ResizedCropStep((8, 8), scale=(2.0, 3.0), ratio=(3.0 / 4.0, 4.0 / 3.0))  # every attempt too big
    params = step.sample_params(torch.Size([5, 3, 10, 20]), torch.device("cpu"))
    assert params["height"].tolist() == [10] * 5 and params["width"].tolist() == [13] * 5  # round(10 * 4/3)
    assert params["top"].tolist() == [0] * 5 and params["left"].tolist() == [3] * 5


def test_a_generator_makes_augmentation_reproducible() -> None:
    augment = device_augment_from(v2.Compose([v2.RandomHorizontalFlip(), v2.TrivialAugmentWide()]))
    images = random_images(32)
    first = augment(images, torch.Generator().manual_seed(3))  # type: ignore[misc]
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(3)))  # type: ignore[misc]
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(4)))  # type: ignore[misc]


# -- (3) every built-in preset translates and runs -------------------------------------------------------------


def build_preset(path: Path, image_size: int = 32) -> torch.nn.Module:
    """The preset's torchvision object, instantiated by Hydra with ${data.image_size} resolved."""
    cfg = OmegaConf.create({"data": {"image_size": image_size}, "augment": OmegaConf.load(path)})
    return hydra.utils.instantiate(cfg.augment)


def test_all_presets_are_covered() -> None:
    names = {path.stem for path in PRESETS}
    assert {"cifar", "enhance", "flip_rotate", "imagenet", "none", "randaugment", "trivialaugment"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda path: path.stem)
def test_every_preset_runs_on_the_device(path: Path) -> None:
    transform = build_preset(path)
    augment = device_augment_from(transform, 32)
    if path.stem == "none":
        assert augment is None
        return
    assert isinstance(augment, DeviceAugment)
    assert len(augment.steps) == len(transform.transforms)  # one device step per torchvision transform
    images = random_images(64, size=32)
    out = augment(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    changed = (out != images).flatten(1).any(1)
    assert changed.sum() >= 16  # most images are changed by every preset


def test_settings_come_from_the_torchvision_objects() -> None:
    augment = device_augment_from(
        v2.Compose(
            [
                v2.RandomCrop(28, padding=[1, 2], padding_mode="edge"),
                v2.RandomHorizontalFlip(0.3),
                v2.RandomRotation((-5, 20), center=[1, 2]),
                v2.ColorJitter(contrast=(0.5, 0.9)),
                v2.RandomAdjustSharpness(3.0, p=0.1),
                v2.RandAugment(num_ops=3, magnitude=4),
            ]
        ),
        32,
    )
    crop, flip, rotation, jitter, sharpness, rand_augment = augment.steps  # type: ignore[union-attr]
    assert (crop.size, crop.padding, crop.padding_mode) == ((28, 28), (1, 1, 2, 2), "edge")
    assert flip.p == 0.3 and rotation.degrees == (-5.0, 20.0) and rotation.center == (1.0, 2.0)
    assert jitter.ranges == (("contrast", (0.5, 0.9)),)
    assert (sharpness.factor, sharpness.p) == (3.0, 0.1)
    assert (rand_augment.num_ops, rand_augment.magnitude_bin) == (3, 4)
    assert augment(random_images(4, size=32)).shape == (4, 3, 28, 28)  # type: ignore[misc]


def test_unsupported_transforms_and_options_are_refused() -> None:
    assert device_augment_from(torch.nn.Identity(), 32) is None
    assert device_augment_from(None, 32) is None
    with pytest.raises(UserError, match="GaussianBlur has no device-resident version.*data.on_gpu=false"):
        device_augment_from(v2.Compose([v2.RandomHorizontalFlip(), v2.GaussianBlur(3)]), 32)
    with pytest.raises(UserError, match=r"RandomRotation\(expand=True\) has no device-resident.*data.on_gpu=false"):
        device_augment_from(v2.RandomRotation(10, expand=True), 32)
    with pytest.raises(UserError, match="interpolation=bicubic.*data.on_gpu=false"):
        device_augment_from(v2.RandomResizedCrop(32, interpolation=v2.InterpolationMode.BICUBIC), 32)
    with pytest.raises(UserError, match="RandomCrop size .* is larger"):
        device_augment_from(v2.RandomCrop(40), 32)

    class MyFlip(v2.RandomHorizontalFlip):
        """A subclass may sample differently: refused, not approximated."""

    with pytest.raises(UserError, match="MyFlip has no device-resident version"):
        device_augment_from(MyFlip(), 32)


# -- (4) no host synchronisation ------------------------------------------------------------------------------


def test_no_host_synchronisation(host_reads) -> None:
    """Every preset (and hue jitter, fills, RandomResizedCrop's fallback) runs without reading a tensor value back
    on the host: no item/tolist/bool/int/float conversion, no nonzero, no boolean-mask indexing."""
    transforms = [build_preset(path) for path in PRESETS] + [
        v2.Compose([v2.ColorJitter(hue=0.2), v2.RandomRotation(10, fill=[1, 2, 3], interpolation="bilinear")]),
        v2.Compose([v2.RandomCrop(30, padding=2, fill=5), v2.RandomResizedCrop(24, scale=(2.0, 3.0))]),
    ]
    augments = [augment for augment in map(device_augment_from, transforms) if augment is not None]
    images = random_images(16, size=32)
    host_reads.armed = True
    for augment in augments:
        assert augment(images).dtype == torch.uint8
    host_reads.armed = False
    assert host_reads.calls == []
