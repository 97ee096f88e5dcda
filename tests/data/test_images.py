"""Decoding every image mode the same way, and what a run does with files it cannot read."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from transferlab.data.images import BadFiles, UnreadableImage, decode_rgb
from transferlab.utils.errors import UserError


def test_modes_become_the_rgb_a_viewer_shows(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "wide.png")  # 16-bit grey
    wide = decode_rgb(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")
    expected = torch.from_numpy(np.rint(ramp / 257.0).astype(np.uint8))
    assert wide.shape == (3, 8, 8) and torch.equal(wide[0], expected) and torch.equal(wide[1], wide[2])

    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in CMYK
    red = decode_rgb(tmp_path / "cmyk.jpg").float().mean(dim=(1, 2))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60

    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # transparent: the background shows, white
    rgba.save(tmp_path / "alpha.png")
    alpha = decode_rgb(tmp_path / "alpha.png")
    assert alpha[:, 0, 0].tolist() == [255, 255, 255] and alpha[:, 1, 1].tolist() == [10, 20, 30]

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "palette.png", transparency=0)
    decoded = decode_rgb(tmp_path / "palette.png")
    assert decoded[:, 0, 0].tolist() == [255, 255, 255] and decoded[:, 2, 2].tolist() == [200, 100, 50]

    Image.new("L", (4, 4), 77).save(tmp_path / "grey.png")
    assert decode_rgb(tmp_path / "grey.png").unique().tolist() == [77]


def _jpeg(size: int = 32, value: int = 128) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (value, 255 - value, value // 2)).save(out, format="JPEG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "cannot identify image file"),
        (b"just some text", "cannot identify image file"),
        (_jpeg(64)[:300], "(?i:truncated)"),
    ],
    ids=["zero-byte", "not-an-image", "truncated"],
)
def test_unreadable_files_name_themselves(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(UnreadableImage, match=rf"cannot read image {re.escape(str(path))} \(.*{reason}") as caught:
        decode_rgb(path)
    assert caught.value.path == str(path)


def test_skipped_files_are_recorded_once_across_processes(tmp_path: Path, capsys) -> None:
    first, second = BadFiles("skip", tmp_path / "record"), BadFiles("skip", tmp_path / "record")  # two workers
    err = UnreadableImage(tmp_path / "a.jpg", "truncated")
    for bad_files in (first, second, first):
        bad_files.handle(err)
    first.handle(UnreadableImage(tmp_path / "b.jpg", "cannot identify image file"))
    (tmp_path / "record" / ".c1f2.x7.tmp").write_text("")  # a record another worker is writing right now
    assert [e["path"] for e in second.skipped()] == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert len(capsys.readouterr().err.strip().splitlines()) == 2
    with pytest.raises(UserError, match=r"a.jpg \(truncated\). Remove or replace the file, or set data.on_bad_file"):
        BadFiles("error").handle(err)
    with pytest.raises(UserError, match="data.on_bad_file must be one of skip, error, got 'ignore'"):
        BadFiles("ignore")


def test_a_record_that_cannot_be_written_is_a_plain_one_line_error(small_disk) -> None:
    disk = small_disk(16 * 1024)
    (disk / "filler").write_bytes(bytes(16 * 1024))
    with pytest.raises(UserError) as failed:
        BadFiles("skip", disk / "skipped").handle(UnreadableImage("a.jpg", "truncated"))
    assert type(failed.value) is UserError  # a DataLoader worker re-raises it from its message: no other arguments
    expected = r"cannot write .*/skipped/\w+: no space left on device \(0 B free\)\. Free space.*"
    assert re.fullmatch(expected, str(failed.value))


def _folder_with_bad_files(root: Path) -> list[Path]:
    """A two-class ImageFolder with odd but valid modes and three unreadable files; returns the bad ones."""
    for split, count in (("train", 10), ("val", 4)):
        for index, cls in enumerate(("dark", "light")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i}.jpg").write_bytes(_jpeg(value=40 + 150 * index + i))
    light = root / "train" / "light"
    Image.fromarray(np.full((32, 32), 50000, dtype=np.uint16)).save(light / "wide.png")
    Image.new("CMYK", (32, 32), (0, 0, 0, 20)).save(light / "cmyk.jpg")
    Image.new("P", (32, 32), 3).save(light / "palette.png")
    Image.new("RGBA", (32, 32), (220, 220, 220, 128)).save(light / "alpha.png")
    bad = [root / "train" / "dark" / "zero.jpg", root / "train" / "dark" / "cut.jpg", light / "text.png"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(_jpeg(64)[:300])
    bad[2].write_bytes(b"not an image at all")
    return bad


TRAIN = [
    "data=imagefolder",
    "data.image_size=32",
    "data.batch_size=4",
    "data.num_workers=2",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "model.backbone.name=mobilenet_v3_small",
    "model.backbone.weights=null",
]


@pytest.mark.slow
def test_a_run_skips_unreadable_files_and_lists_them(tmp_path: Path) -> None:
    bad = _folder_with_bad_files(tmp_path / "images")
    run_dir = tmp_path / "run"
    args = [*TRAIN, f"data.root={tmp_path / 'images'}", f"hydra.run.dir={run_dir}"]
    result = run_cli("tl-train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = json.loads((run_dir / "metrics.json").read_text())["skipped_files"]
    assert sorted(entry["path"] for entry in skipped) == sorted(map(str, bad))  # odd modes were converted
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: skipped unreadable")]
    assert len(warnings) == 3, result.stderr[-3000:]  # once each, over two workers and two epochs

    strict = run_cli(
        "tl-train", *args[:-1], f"hydra.run.dir={tmp_path / 'strict'}", "data.on_bad_file=error", cwd=tmp_path
    )
    assert strict.returncode == 2
    errors = [line for line in strict.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.on_bad_file=skip" in errors[0] and "Traceback" not in strict.stderr
    assert any(str(path) in errors[0] for path in bad) and not (tmp_path / "strict" / "metrics.json").exists()
