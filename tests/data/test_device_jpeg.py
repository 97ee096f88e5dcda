"""The JPEG codec helpers: torchvision's pixels on a CPU, the stream protocol that keeps nvJPEG off memory the
training stream still uses (with fake streams, on a CPU), and the real thing under memory reuse (GPU)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from transferlab.data import device_jpeg as dj

SIZES = [(37, 53), (64, 48), (90, 31), (17, 120), (200, 300)]


def smooth_jpegs(quality: int = 90) -> list[torch.Tensor]:
    """Photo-like JPEG bytes (smooth gradients, so nvJPEG and libjpeg agree closely) of several sizes."""
    jpegs = []
    for seed, (h, w) in enumerate(SIZES):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        phase = rng.uniform(0, 2 * np.pi, size=(3, 1, 1))
        image = np.clip(127 + 100 * np.sin(x / 9 + y / 13 + phase), 0, 255).astype(np.uint8)
        jpegs.append(encode_jpeg(torch.from_numpy(image), quality=quality))
    return jpegs


def test_decode_equals_torchvision_on_cpu() -> None:
    jpegs = smooth_jpegs()
    decoded = dj.decode_jpeg_on_device(jpegs, "cpu")
    for data, image, (h, w) in zip(jpegs, decoded, SIZES):
        assert image.shape == (3, h, w)
        assert torch.equal(image, decode_jpeg(data, mode=ImageReadMode.RGB))


def test_encode_and_bytes_to_host_on_cpu() -> None:
    images = [decode_jpeg(data) for data in smooth_jpegs()]
    encoded = dj.encode_jpeg_on_device(images, quality=40)
    assert [bytes(e.numpy()) for e in encoded] == [bytes(encode_jpeg(i, quality=40).numpy()) for i in images]
    assert dj.bytes_to_host(encoded) == encoded and dj.encode_jpeg_on_device([], 40) == []


def test_bytes_to_host_splits_one_copy_back_into_the_pieces() -> None:
    pieces = [torch.arange(n, dtype=torch.uint8) for n in (5, 1, 12)]
    host = dj.bytes_to_host([p.as_subclass(OnCuda) for p in pieces])  # the concatenate-and-split path
    assert [h.tolist() for h in host] == [p.tolist() for p in pieces]


# -- the stream protocol, with fake CUDA streams ------------------------------------------------------------


class OnCuda(torch.Tensor):
    """A CPU tensor that says it is on a CUDA device, to take the CUDA code paths on a CPU."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda", 0)


class FakeStream:
    def __init__(self, name: str) -> None:
        self.name, self.waited_on, self.synchronized = name, [], 0

    def wait_stream(self, other: FakeStream) -> None:
        self.waited_on.append(other)

    def synchronize(self) -> None:
        self.synchronized += 1


class FakeOutput:
    """What the fake codec returns: remembers the stream current when it was allocated, and record_stream."""

    def __init__(self, stream: FakeStream, consumer_syncs: int) -> None:
        self.allocated_on, self.recorded, self.consumer_syncs_before = stream, [], consumer_syncs

    def record_stream(self, stream: FakeStream) -> None:
        self.recorded.append(stream)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeStream]:
    streams = {name: FakeStream(name) for name in ("consumer", "codec", "legacy")}
    current = [streams["consumer"]]

    @contextlib.contextmanager
    def stream(s: FakeStream) -> Iterator[None]:
        current.append(s)
        yield
        current.pop()

    def fake_codec(items: list, **_: object) -> list[FakeOutput]:
        return [FakeOutput(current[-1], streams["consumer"].synchronized) for _ in items]

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: streams["legacy"])
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(dj, "codec_stream", lambda device: streams["codec"])
    monkeypatch.setattr(dj, "decode_jpeg", fake_codec)
    monkeypatch.setattr(dj, "encode_jpeg", fake_codec)
    return streams


def test_decoder_writes_only_memory_of_the_idle_codec_stream(fake_cuda: dict[str, FakeStream]) -> None:
    """torchvision allocates the outputs on the current stream: it must be the codec stream (whose pool holds
    only idle blocks), then the consumer waits for it and the blocks stay reserved until the consumer is done."""
    consumer, codec = fake_cuda["consumer"], fake_cuda["codec"]
    outputs = dj.decode_jpeg_on_device(smooth_jpegs()[:3], "cuda")
    assert len(outputs) == 3
    assert all(o.allocated_on is codec for o in outputs), "decoded into the consumer stream's pool (vision#9606)"
    assert all(o.recorded == [consumer] for o in outputs)
    assert codec in consumer.waited_on and consumer.synchronized == 0  # no host sync of the training stream


def test_encoder_reads_finished_inputs_and_hands_over_its_bytes(fake_cuda: dict[str, FakeStream]) -> None:
    consumer, codec, legacy = fake_cuda["consumer"], fake_cuda["codec"], fake_cuda["legacy"]
    images = [torch.zeros(3, 8, 8, dtype=torch.uint8).as_subclass(OnCuda)] * 2
    outputs = dj.encode_jpeg_on_device(images, quality=50)
    assert consumer.synchronized == 1  # once per call, before the encoder reads the inputs unordered
    assert all(o.consumer_syncs_before == 1 for o in outputs)
    assert all(o.allocated_on is codec and o.recorded == [consumer] for o in outputs)
    assert legacy in codec.waited_on and codec in consumer.waited_on


# -- the real decoder under memory reuse ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nvjpeg_never_overwrites_memory_queued_kernels_read() -> None:
    """vision#9606's recipe: tensors the size of the decoded images are read by kernels queued behind a long
    sleep, freed while those kernels wait, then a batch is decoded. Every reduction must see its own values,
    and every decoded image must match libjpeg (torchvision's own tolerance: mean |difference| < 2 levels)."""
    jpegs = smooth_jpegs()
    reference = [decode_jpeg(data, mode=ImageReadMode.RGB).float() for data in jpegs]
    device = torch.device("cuda")
    for iteration in range(60):
        blocks = [torch.full((3, h, w), iteration % 200 + 1, dtype=torch.uint8, device=device) for h, w in SIZES]
        torch.cuda.synchronize()
        torch.cuda._sleep(20_000_000)  # ~10 ms of queued work before the readers
        sums = [block.sum(dtype=torch.int64) for block in blocks]
        expected = [(iteration % 200 + 1) * block.numel() for block in blocks]
        del blocks  # freed while the reductions are still queued
        decoded = dj.decode_jpeg_on_device(jpegs, device)
        crops = torch.stack([image[:, :16, :16].float().mean() for image in decoded])  # consumer-stream reads
        torch.cuda.synchronize()
        assert [s.item() for s in sums] == expected, f"iteration {iteration}: the decoder overwrote queued inputs"
        assert crops.isfinite().all()
        for image, ref in zip(decoded, reference):
            assert image.shape == ref.shape and (image.cpu().float() - ref).abs().mean() < 2
