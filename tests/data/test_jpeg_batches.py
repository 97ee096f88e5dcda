"""The decode-on-the-device building blocks against PIL (decoding) and torchvision (crops, box sampling)."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from transferlab.data import jpeg_batches
from transferlab.data.jpeg_batches import (
    EncodedImages,
    TrainCrops,
    collate_encoded,
    decode_batch,
    encoded_image,
    eval_crops,
    jpeg_components,
    random_resized_crop_box,
    train_crops,
)
from transferlab.utils.errors import UserError

CONF = Path(__file__).resolve().parents[2] / "conf"
SIZES = [(37, 53), (64, 48), (90, 31), (40, 40), (17, 120)]  # (height, width): tall, wide, square, extreme


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth, asymmetric RGB image (photo-like, so JPEG decoders agree closely)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    channels = [127 + 100 * np.sin(x / (7 + 3 * c) + y / (11 + c) + phases[c]) + 0.3 * x for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def write(path: Path, image: Image.Image, **kwargs) -> str:
    image.save(path, **kwargs)
    return str(path)


def pil_rgb(path: str) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


@pytest.fixture
def jpegs(tmp_path: Path) -> list[str]:
    return [
        write(tmp_path / f"img{i}.jpg", Image.fromarray(smooth_image(h, w, i)), quality=90)
        for i, (h, w) in enumerate(SIZES)
    ]


# -- reading and decoding ------------------------------------------------------------------------------------


def test_jpeg_files_pass_through_untouched(jpegs: list[str], tmp_path: Path) -> None:
    grey = write(tmp_path / "grey.jpg", Image.fromarray(smooth_image(20, 30, 9)).convert("L"))
    for path in [*jpegs, grey]:
        encoded = encoded_image(path)
        assert encoded.dtype == torch.uint8 and encoded.ndim == 1
        assert bytes(encoded.numpy()) == Path(path).read_bytes()
    assert jpeg_components(Path(grey).read_bytes()) == 1
    assert jpeg_components(Path(jpegs[0]).read_bytes()) == 3


def test_decoded_like_pil(jpegs: list[str]) -> None:
    images = decode_batch([encoded_image(p) for p in jpegs], torch.device("cpu"))
    for path, image, (h, w) in zip(jpegs, images, SIZES):
        assert image.dtype == torch.uint8 and image.shape == (3, h, w)
        assert mean_abs_diff(image, pil_rgb(path)) < 1.5  # libjpeg vs PIL's decoder


def test_other_formats_come_out_rgb(tmp_path: Path) -> None:
    array = smooth_image(33, 47, 3)
    rgb = Image.fromarray(array)
    paths = [
        write(tmp_path / "a.png", rgb),
        write(tmp_path / "rgba.png", rgb.convert("RGBA")),
        write(tmp_path / "palette.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE)),
        write(tmp_path / "grey.png", rgb.convert("L")),
        write(tmp_path / "cmyk.jpg", rgb.convert("CMYK"), quality=95),
        write(tmp_path / "grey.jpg", rgb.convert("L"), quality=95),
        write(tmp_path / "a.bmp", rgb),
    ]
    assert jpeg_components(Path(paths[4]).read_bytes()) == 4  # CMYK: decoded by the worker, re-encoded
    encoded = EncodedImages([(p, 0) for p in paths])
    cmyk, grey = encoded[4][0], encoded[5][0]
    assert jpeg_components(bytes(cmyk.numpy())) == 3 and bytes(cmyk.numpy()) != Path(paths[4]).read_bytes()
    assert bytes(grey.numpy()) == Path(paths[5]).read_bytes()  # grey JPEGs go as they are
    images = decode_batch([encoded[i][0] for i in range(len(paths))], "cpu")
    for path, image in zip(paths, images):
        assert image.shape == (3, 33, 47) and image.dtype == torch.uint8
        # one quality-95 round trip at most; more on a palette image's sharp colour edges (chroma subsampling)
        assert mean_abs_diff(image, pil_rgb(path)) < (3.0 if "palette" in path else 1.5), path


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    broken_header = tmp_path / "broken.jpg"
    broken_header.write_bytes(b"\xff\xd8\xff\xe0\x00")
    for path in [garbage, broken_header, tmp_path / "missing.jpg"]:
        with pytest.raises(UserError) as err:
            EncodedImages([(str(path), 0)])[0]
        message = str(err.value)
        assert str(path) in message and "remove or replace" in message.lower() and "\n" not in message


def test_undecodable_image_of_a_batch_is_named(jpegs: list[str]) -> None:
    encoded = [encoded_image(p) for p in jpegs[:3]]
    encoded[1] = encoded[1][:200]  # the header parses, the scan data is cut
    with pytest.raises(UserError, match="image 1 of a batch of 3") as err:
        decode_batch(encoded, "cpu")
    assert "\n" not in str(err.value)


def test_through_a_dataloader(jpegs: list[str], tmp_path: Path) -> None:
    png = write(tmp_path / "x.png", Image.fromarray(smooth_image(25, 35, 7)))
    samples = [(p, i % 2) for i, p in enumerate([*jpegs, png])]
    dataset = EncodedImages(samples, classes=["a", "b"])
    assert dataset.targets == [0, 1, 0, 1, 0, 1] and len(dataset) == 6
    loader = DataLoader(dataset, batch_size=4, num_workers=0, collate_fn=collate_encoded)
    seen = 0
    for encoded, targets in loader:
        assert isinstance(encoded, list) and all(e.dtype == torch.uint8 and e.ndim == 1 for e in encoded)
        assert targets.dtype == torch.long and targets.tolist() == [t for _, t in samples[seen : seen + len(encoded)]]
        images = decode_batch(encoded, torch.device("cpu"))
        assert eval_crops(images, 16, 1.25).shape == (len(encoded), 3, 16, 16)
        assert TrainCrops(size=16, flip_p=0.5)(images).shape == (len(encoded), 3, 16, 16)
        seen += len(encoded)
    assert seen == 6


# -- crops ---------------------------------------------------------------------------------------------------


def random_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]


def test_eval_crops_equal_torchvision_compose() -> None:
    images = random_images([*SIZES, (10, 12)])  # the last is smaller than the crop: padded, as CenterCrop does
    for size, ratio in [(16, 256 / 224), (20, 1.14), (24, 1.0), (20, 0.5)]:  # 22.8 rounds up
        reference = v2.Compose([v2.Resize(round(size * ratio)), v2.CenterCrop(size)])
        out = eval_crops(images, size, ratio)
        assert out.shape == (len(images), 3, size, size) and out.dtype == torch.uint8
        assert torch.equal(out, torch.stack([reference(image) for image in images]))


def test_train_crops_equal_torchvision_random_resized_crop() -> None:
    """Same global seed: the same boxes and the same resized pixels as torchvision, image by image."""
    images = random_images(SIZES * 4)
    for scale, ratio in [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 0.9), (0.2, 5.0)), ((0.9, 1.0), (2.0, 3.0))]:
        reference = v2.RandomResizedCrop(24, scale=scale, ratio=ratio, antialias=True)
        torch.manual_seed(5)
        expected = torch.stack([reference(image) for image in images])
        torch.manual_seed(5)
        assert torch.equal(train_crops(images, 24, scale, ratio, flip_p=0.0), expected)


def torchvision_boxes(sizes: list[tuple[int, int]], scale, ratio) -> torch.Tensor:
    """torchvision's own sampler (named ``make_params`` since 0.21, ``_get_params`` before): (N, 4) boxes."""
    transform = v2.RandomResizedCrop(8, scale=scale, ratio=ratio)
    sample = getattr(transform, "make_params", None) or transform._get_params
    boxes = []
    for h, w in sizes:
        params = sample([torch.empty(3, h, w, dtype=torch.uint8)])
        boxes.append([params["top"], params["left"], params["height"], params["width"]])
    return torch.tensor(boxes, dtype=torch.float64)


def test_crop_boxes_distributed_like_torchvision() -> None:
    sizes = [(h, w) for h, w in [(375, 500), (500, 333), (224, 224), (120, 640)] for _ in range(800)]
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    generator = torch.Generator().manual_seed(1)
    ours = torch.tensor([random_resized_crop_box(h, w, scale, ratio, generator) for h, w in sizes], dtype=torch.float64)
    torch.manual_seed(2)
    theirs = torchvision_boxes(sizes, scale, ratio)
    hw = torch.tensor(sizes, dtype=torch.float64)

    def stats(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        area = boxes[:, 2] * boxes[:, 3] / (hw[:, 0] * hw[:, 1])
        log_aspect = torch.log(boxes[:, 3] / boxes[:, 2])
        centre_x = (boxes[:, 1] + boxes[:, 3] / 2) / hw[:, 1]
        return area, log_aspect, centre_x

    for ours_stat, theirs_stat in zip(stats(ours), stats(theirs)):
        q = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
        assert (ours_stat.quantile(q) - theirs_stat.quantile(q)).abs().max() < 0.04
    area, log_aspect, _ = stats(ours)
    assert area.min() >= 0.07 and area.max() <= 1.0  # rounding to whole pixels moves the bounds slightly
    assert log_aspect.abs().max() <= np.log(4 / 3) + 0.02
    assert (ours[:, :2] >= 0).all() and (ours[:, 0] + ours[:, 2] <= hw[:, 0]).all()
    assert (ours[:, 1] + ours[:, 3] <= hw[:, 1]).all()

    torch.manual_seed(3)  # and with the global generator, the very same boxes as torchvision
    same = torch.tensor([random_resized_crop_box(h, w, scale, ratio) for h, w in sizes[::50]], dtype=torch.float64)
    torch.manual_seed(3)
    assert torch.equal(same, torchvision_boxes(sizes[::50], scale, ratio))


def test_fallback_box_is_torchvision_central_crop() -> None:
    """No attempt fits a 10:1 image with ratio (3/4, 4/3) at scale 1: the central fallback crop."""
    for h, w in [(20, 200), (200, 20), (50, 60)]:
        torch.manual_seed(0)
        expected = torchvision_boxes([(h, w)], (1.0, 1.0), (3 / 4, 4 / 3))[0].tolist()
        assert list(random_resized_crop_box(h, w, (1.0, 1.0), (3 / 4, 4 / 3))) == expected


def test_train_crops_flip_frequency_and_determinism() -> None:
    ramp = torch.arange(40, dtype=torch.uint8).repeat(3, 30, 1) * 6  # asymmetric: a flip always shows
    images = [ramp] * 1000
    base = train_crops(images, 8, flip_p=0.0, generator=torch.Generator().manual_seed(4))
    assert base.shape == (1000, 3, 8, 8) and base.dtype == torch.uint8
    for p in (0.0, 0.3, 1.0):
        out = train_crops(images, 8, flip_p=p, generator=torch.Generator().manual_seed(4))
        flipped = (out != base).flatten(1).any(1)
        assert torch.equal(out[flipped], base[flipped].flip(-1)) and torch.equal(out[~flipped], base[~flipped])
        assert abs(flipped.float().mean().item() - p) < 0.045
    again = train_crops(images[:50], 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(again, train_crops(images[:50], 8, generator=torch.Generator().manual_seed(4)))


def test_from_preset_reads_torchvision_objects() -> None:
    crop = v2.RandomResizedCrop(32, scale=(0.2, 0.9), ratio=(0.5, 2.0), antialias=True)
    crops = TrainCrops.from_preset(v2.Compose([crop, v2.RandomHorizontalFlip(p=0.3)]), 32)
    assert crops == TrainCrops(size=32, scale=(0.2, 0.9), ratio=(0.5, 2.0), flip_p=0.3, antialias=True)
    assert TrainCrops.from_preset(v2.Compose([v2.RandomHorizontalFlip(), v2.Compose([crop])]), 32).flip_p == 0.5
    assert TrainCrops.from_preset(crop, 32).flip_p == 0.0

    cfg = OmegaConf.create({"data": {"image_size": 48, "augment": OmegaConf.load(CONF / "data/augment/imagenet.yaml")}})
    imagenet = TrainCrops.from_preset(hydra.utils.instantiate(cfg.data.augment), 48)
    assert imagenet == TrainCrops(size=48, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5)


@pytest.mark.parametrize(
    "preset",
    [
        None,
        torch.nn.Identity(),
        v2.RandomHorizontalFlip(),
        v2.Compose([v2.RandomResizedCrop(32), v2.RandomHorizontalFlip(), v2.ColorJitter(0.4)]),
        v2.Compose([v2.RandomHorizontalFlip(), v2.RandAugment()]),
        v2.Compose([v2.RandomResizedCrop(32), v2.RandomVerticalFlip()]),
        v2.Compose([v2.RandomResizedCrop(32), v2.RandomResizedCrop(32)]),
        v2.Compose([v2.RandomResizedCrop(64), v2.RandomHorizontalFlip()]),  # to another size than image_size
        v2.Compose([v2.RandomResizedCrop((32, 24))]),
    ],
)
def test_from_preset_refuses_other_presets(preset) -> None:
    assert TrainCrops.from_preset(preset, 32) is None


# -- batched resampling (the CUDA path) against torchvision's per-image resize ---------------------------------

# torchvision resizes a uint8 image on CUDA as float (interpolate, round): that is the reference the batched
# float64 products must meet, up to float32 summation order. Its CPU uint8 kernel also rounds the first pass.
MIXED_SIZES = [*SIZES, (10, 12), (300, 200), (123, 456), (64, 64)]


def like_cuda(image: torch.Tensor, resize) -> torch.Tensor:  # noqa: ANN001
    """torchvision's uint8 resize as it runs on CUDA (float interpolate, round), here on the CPU."""
    return resize(image.float()).round().to(torch.uint8)


def assert_within_one_level(out: torch.Tensor, reference: torch.Tensor, fraction: float) -> None:
    diff = (out.int() - reference.int()).abs()
    assert diff.max().item() <= 1 and (diff > 0).float().mean().item() < fraction


@pytest.mark.parametrize("size", [24, 40])
def test_batched_train_crops_match_per_image_torchvision(size: int) -> None:
    images = random_images(MIXED_SIZES * 3, seed=size)
    torch.manual_seed(7)
    boxes = [random_resized_crop_box(i.shape[1], i.shape[2], (0.08, 1.0), (3 / 4, 4 / 3)) for i in images]
    torch.manual_seed(7)
    out = train_crops(images, size, flip_p=0.0, batched=True)
    assert out.shape == (len(images), 3, size, size) and out.dtype == torch.uint8

    def crop(box):  # noqa: ANN001, ANN202
        return lambda image: v2.functional.resized_crop(image, *box, [size, size], antialias=True)

    cuda_like = torch.stack([like_cuda(image, crop(box)) for image, box in zip(images, boxes)])
    assert_within_one_level(out, cuda_like, fraction=0.01)
    torch.manual_seed(7)
    assert_within_one_level(out, train_crops(images, size, flip_p=0.0, batched=False), fraction=0.25)


@pytest.mark.parametrize("size, ratio", [(16, 256 / 224), (20, 1.14), (24, 1.0), (20, 0.5), (32, 1.3)])
def test_batched_eval_crops_match_per_image_torchvision(size: int, ratio: float) -> None:
    images = random_images(MIXED_SIZES, seed=3)  # (10, 12) is smaller than most crops: zero-padded
    reference = v2.Compose([v2.Resize(round(size * ratio)), v2.CenterCrop(size)])
    out = eval_crops(images, size, ratio, batched=True)
    assert_within_one_level(out, torch.stack([like_cuda(image, reference) for image in images]), fraction=0.01)
    assert_within_one_level(out, eval_crops(images, size, ratio, batched=False), fraction=0.25)


def test_resample_in_chunks_equals_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch too large for the memory budget is resampled in chunks, sorted by size, and put back in order."""
    images = random_images(MIXED_SIZES * 2, seed=11)
    whole = eval_crops(images, 24, 1.14, batched=True)
    torch.manual_seed(2)
    whole_train = train_crops(images, 24, flip_p=0.5, batched=True)
    monkeypatch.setattr(jpeg_batches, "RESAMPLE_BUDGET", 3 * 90 * 60)
    assert torch.equal(eval_crops(images, 24, 1.14, batched=True), whole)
    torch.manual_seed(2)
    assert torch.equal(train_crops(images, 24, flip_p=0.5, batched=True), whole_train)
