"""Write the small real image datasets that ship with transferlab's dependencies as ImageFolders.

    python experiments/own_data/make_datasets.py OUT_DIR

writes ``OUT_DIR/digits`` (scikit-learn's 1,797 handwritten 8×8 digits, 10 classes) and ``OUT_DIR/faces``
(scikit-image's LFW subset: 100 face and 100 non-face 25×25 crops), each as ``train/<class>/*.png`` and
``val/<class>/*.png`` (a stratified 75/25 split, seed 0; transferlab reports ``val/`` as its test split).
The same split is what ``baselines.py`` scores, so every number in the table is on the same test images.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.utils.errors import report_user_errors
from transferlab.utils.extras import require

SKLEARN = {"sklearn": "scikit-learn"}  # the [experiments] extra (import name → pip name)
TEST_FRACTION = 0.25
SEED = 0


def digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 (N, H, W) grey images, int labels, class names."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images / 16.0 * 255).astype(np.uint8)
    return images, data.target.astype(int), [str(i) for i in range(10)]


def faces() -> tuple[np.ndarray, np.ndarray, list[str]]:
    import skimage.data

    images = np.round(skimage.data.lfw_subset() * 255).astype(np.uint8)  # first 100 faces, then 100 non-faces
    labels = np.repeat([0, 1], len(images) // 2)
    return images, labels, ["face", "non_face"]


DATASETS = {"digits": digits, "faces": faces}


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices, the same for every method."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    return train_test_split(indices, test_size=TEST_FRACTION, stratify=labels, random_state=SEED)


def write(name: str, out: Path, per_class: int | None = None) -> Path:
    """Write dataset `name` under ``out/name``; `per_class` keeps only that many images per class and split."""
    require("experiments/own_data", "experiments", SKLEARN)  # the digits and every split come from scikit-learn
    images, labels, classes = DATASETS[name]()
    root = out / name
    shutil.rmtree(root, ignore_errors=True)  # a rewrite never mixes with an earlier, differently sized one
    for split_name, indices in zip(("train", "val"), split(labels)):
        if per_class is not None:
            indices = np.concatenate([indices[labels[indices] == c][:per_class] for c in range(len(classes))])
        for index in indices:
            folder = root / split_name / classes[labels[index]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(folder / f"{index:05d}.png")
    return root


@report_user_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the datasets into")
    parser.add_argument("--only", choices=sorted(DATASETS), nargs="*", default=sorted(DATASETS))
    args = parser.parse_args()
    for name in args.only:
        print(write(name, args.out))


if __name__ == "__main__":
    main()
