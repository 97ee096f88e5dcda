"""torchvision's JPEG codec on a CUDA device, made safe for the training stream around it.

torchvision's CUDA ``decode_jpeg`` (up to at least 0.29) allocates its outputs with the caller's *current*
stream, then has nvJPEG write them on a private stream that waits for nothing the caller queued. PyTorch's
caching allocator hands a block back out as soon as it is freed on its stream, because later use on that
stream is ordered after earlier use: so the decoder can be given a block that kernels still queued on the
training stream are about to read, and overwrite it first (corrupted batches, pytorch/vision#9606; the
nvJPEG hardware engine does not even honour the stream it is given, so ordering streams cannot fix it).
The encoder has the mirror hazard: it reads its input images on its private stream, unordered after the
kernels that write them, and copies the bytes out on the legacy default stream.

What makes it safe here, without a host sync of the training stream per call:

* The codec runs with a dedicated *codec stream* current (`codec_stream`), on which no kernel of ours ever
  runs. Its outputs are therefore carved from that stream's pool, which holds only blocks whose every use has
  finished: earlier outputs, each `record_stream`-ed on the stream that consumes it, so the allocator keeps
  it out of the pool until that stream's work at free time has completed. The decoder can only ever write
  into idle memory, whatever stream nvJPEG really writes on.
* The consumer's stream then waits on the codec stream (and on the legacy default stream, where the
  encoder copies its bytes), so kernels that read the outputs run after they are written.
* The encoder reads its inputs unordered, so before encoding the host waits for the consumer's stream up to
  that point (one sync per batch, where the old code paid one per image).

On a CPU device these functions are plain torchvision calls.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg


def _cuda_device(device: torch.device | str) -> torch.device:
    """`device` with its index filled in (``cuda`` means the current device), so each device has one stream."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@functools.cache
def codec_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream that is current while torchvision's codec allocates on `device` (one per device, made once):
    nothing else runs on it, so every block in its pool is idle (module docstring)."""
    return torch.cuda.Stream(device=device)


def _hand_over(outputs: Sequence[torch.Tensor], codec: torch.cuda.Stream, consumer: torch.cuda.Stream) -> None:
    """Order `consumer` after the codec and keep the outputs' blocks out of the codec's pool until the work
    `consumer` has queued on them when they are freed has run."""
    consumer.wait_stream(codec)
    for output in outputs:
        output.record_stream(consumer)


def decode_jpeg_on_device(
    datas: Sequence[torch.Tensor], device: torch.device | str, mode: ImageReadMode = ImageReadMode.RGB
) -> list[torch.Tensor]:
    """Decode JPEG bytes (1-D uint8 CPU tensors) in one call, on `device` (nvJPEG on CUDA): uint8 images there,
    ready for the current stream. Raises what ``decode_jpeg`` raises (RuntimeError for a damaged file)."""
    device = _cuda_device(device)
    if device.type != "cuda":
        return list(decode_jpeg(list(datas), device=device, mode=mode))
    consumer = torch.cuda.current_stream(device)
    codec = codec_stream(device)
    # torchvision may run a clone on the current stream (grey images with mode UNCHANGED): let it finish, so
    # the blocks it frees are idle too. The codec stream never waits on training work: this costs nothing.
    codec.synchronize()
    with torch.cuda.stream(codec):
        images = list(decode_jpeg(list(datas), device=device, mode=mode))
    _hand_over(images, codec, consumer)
    return images


def encode_jpeg_on_device(images: Sequence[torch.Tensor], quality: int) -> list[torch.Tensor]:
    """Encode uint8 (3, H, W) images of one device at one quality: 1-D uint8 byte tensors on that device,
    ready for the current stream. On CUDA the host first waits for the current stream (see the module
    docstring: the encoder reads its inputs unordered)."""
    if not images:
        return []
    device = _cuda_device(images[0].device)
    if device.type != "cuda":
        return list(encode_jpeg(list(images), quality=quality))
    consumer = torch.cuda.current_stream(device)
    consumer.synchronize()  # the inputs are written: nvJPEG reads them on a stream ordered after nothing
    codec = codec_stream(device)
    codec.synchronize()
    with torch.cuda.stream(codec):
        encoded = list(encode_jpeg(list(images), quality=quality))
    codec.wait_stream(torch.cuda.default_stream(device))  # the bytes are copied out on the legacy default stream
    _hand_over(encoded, codec, consumer)
    return encoded


def bytes_to_host(encoded: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Byte tensors of one device as CPU tensors (what the decoder reads) with one copy and one host sync for
    the whole list, not one per tensor: concatenated on the device, split on the host."""
    if not encoded:
        return []
    if encoded[0].device.type == "cpu":
        return list(encoded)
    flat = torch.cat([data.reshape(-1) for data in encoded]).cpu()
    return list(flat.split([data.numel() for data in encoded]))
