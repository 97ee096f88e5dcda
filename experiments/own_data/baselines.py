"""Reference scores on an ImageFolder's own split: SVC and logistic regression on raw pixels, and a linear
probe (logistic regression) on the ImageNet EfficientNet-Lite0 features transferlab starts from.

    python experiments/own_data/baselines.py ROOT [--size PX]

ROOT holds ``train/<class>/*`` and ``val/<class>/*`` (``val/`` is the test split, as for ``tl-train``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.datasets import ImageFolder

from transferlab.constants import IMAGENET_MEAN, IMAGENET_STD
from transferlab.data.images import decode_rgb as load_rgb
from transferlab.utils.errors import report_user_errors
from transferlab.utils.extras import require

SKLEARN = {"sklearn": "scikit-learn"}  # the [experiments] extra (import name → pip name)


def read_split(root: Path, split: str) -> tuple[list[torch.Tensor], np.ndarray]:
    """RGB uint8 images (3, H, W) and labels, read as tl-train reads them (same classes, order, decoding)."""
    dataset = ImageFolder(str(root / split), loader=load_rgb)
    return [load_rgb(path) for path, _ in dataset.samples], np.array(dataset.targets)


def pixels(images: list[torch.Tensor]) -> np.ndarray:
    size = min(min(image.shape[-2:]) for image in images)
    batch = torch.stack(images).float() / 255
    batch = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)
    return batch.flatten(1).numpy()


def imagenet_features(images: list[torch.Tensor], size: int) -> np.ndarray:
    from transferlab.backbones import build_backbone

    body = build_backbone("efficientnet_lite0", "imagenet").body.eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            part = images[start : start + 256]
            batch = torch.stack(part).float() / 255
            batch = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)
            out.append(body((batch - mean) / std))
    return torch.cat(out).numpy()


def scores(root: Path, size: int) -> dict[str, float]:
    require("experiments/own_data baselines", "experiments", SKLEARN)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    train_images, train_labels = read_split(root, "train")
    test_images, test_labels = read_split(root, "val")
    results = {}
    x_train, x_test = pixels(train_images), pixels(test_images)
    for name, model in (("svc_pixels", SVC()), ("logreg_pixels", LogisticRegression(max_iter=5000))):
        results[name] = float(model.fit(x_train, train_labels).score(x_test, test_labels))
    f_train, f_test = imagenet_features(train_images, size), imagenet_features(test_images, size)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    results["linear_probe_imagenet"] = float(probe.fit(f_train, train_labels).score(f_test, test_labels))
    return results


@report_user_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--size", type=int, default=64, help="resolution the ImageNet features are taken at (px)")
    args = parser.parse_args()
    print(json.dumps(scores(args.root, args.size)))


if __name__ == "__main__":
    main()
