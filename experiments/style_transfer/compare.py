"""Which loss network stylizes offline: random-feature VGG-16 (the old default) or ImageNet EfficientNet-Lite0?

    python experiments/style_transfer/compare.py --run NAME=best.ckpt [--run NAME=best.ckpt ...] [--out DIR]

Each run is a Johnson stylizer trained by ``tl-train experiment=style_transfer`` (with its loss network).
Losses measured by one network are not comparable with another's, so every stylizer is scored by **every**
run's loss network (its content and style layers and the style image's Gram targets), next to the identity
(output = content: zero content loss, the style loss of doing nothing). A stylizer that stylizes brings the
style loss well below the identity's under a judge it was not trained with, too. Writes ``results.md`` and
``grid.png`` (rows: photos; columns: content, style, then each run's output) into --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from transferlab.losses import feature_loss, gram_matrix
from transferlab.trust import open_checkpoint
from transferlab.utils.io import atomic_file

PHOTOS = ("astronaut", "coffee", "chelsea")
SIZE = 128


def content_images() -> torch.Tensor:
    """(N, 3, SIZE, SIZE) float [0, 1]: scikit-image photos, short side resized and centre-cropped."""
    images = []
    for name in PHOTOS:
        image = torch.from_numpy(getattr(skimage.data, name)().copy()).permute(2, 0, 1).float()[None] / 255
        h, w = image.shape[-2:]
        image = F.interpolate(image, scale_factor=SIZE / min(h, w), mode="bilinear", antialias=True)
        top, left = (image.shape[-2] - SIZE) // 2, (image.shape[-1] - SIZE) // 2
        images.append(image[..., top : top + SIZE, left : left + SIZE].clamp(0, 1))
    return torch.cat(images)


def judge(task, outputs: torch.Tensor, contents: torch.Tensor) -> tuple[float, float]:
    """(content loss, style loss) of `outputs` under `task`'s loss network, layers and style targets."""
    with torch.no_grad():
        features = task.loss_net(outputs)
        targets = task.loss_net(contents)
        content = feature_loss(features, targets, task.content_layers)
        grams = task.style_grams()
        style = sum(
            w * F.mse_loss(gram_matrix(features[layer]), grams[layer].expand(len(outputs), -1, -1))
            for layer, w in task.style_layers.items()
        )
    return float(content), float(style)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=path/to/best.ckpt (two or more)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    runs = dict(spec.split("=", 1) for spec in args.run)
    tasks = {name: open_checkpoint(Path(path)).build_task().eval() for name, path in runs.items()}
    contents = content_images()
    with torch.no_grad():
        outputs = {"identity (no stylization)": contents}
        outputs.update({name: task(contents).clamp(0, 1) for name, task in tasks.items()})

    judges = list(tasks)
    lines = [
        "| stylizer | " + " | ".join(f"content / style loss under {j}" for j in judges) + " |",
        "|---|" + "---|" * len(judges),
    ]
    for name, images in outputs.items():
        cells = []
        for j in judges:
            content, style = judge(tasks[j], images, contents)
            base = judge(tasks[j], contents, contents)[1]
            cells.append(f"{content:.4g} / {style:.4g} ({style / base:.2f}× identity)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"

    style = tasks[judges[0]].style_images[:1].float() / 255
    style = F.interpolate(style, size=(SIZE, SIZE), mode="bilinear", antialias=True).expand(len(contents), -1, -1, -1)
    columns = [contents, style, *(outputs[name] for name in tasks)]
    rows = torch.cat([torch.cat(list(column), dim=1) for column in columns], dim=2)  # photos down, columns across
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.out / "grid.png") as tmp:
        Image.fromarray((rows.permute(1, 2, 0) * 255).round().byte().numpy()).save(tmp, format="PNG")
    with atomic_file(args.out / "results.md") as tmp:
        Path(tmp).write_text(f"Columns of grid.png: content, style, {', '.join(tasks)}.\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
