#!/usr/bin/env python3
"""Preprocess images into raw tensors for the classify guests (EfficientNet-Lite0 convention).

Resize the shorter side to 256 (bilinear), centre-crop 224, RGB, (pixel - 127) / 128, NCHW,
little-endian f32: the layout of ../shared/models/efficientnet-lite0/tensors. Needs Pillow.

usage: hack/image_to_tensor.py IMAGE... --out DIR   (writes DIR/<stem>.rgb.f32)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def preprocess(path: Path, size: int = 224, resize: int = 256) -> np.ndarray:
    """The [1,3,size,size] f32 tensor of one image."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = resize / min(image.size)
    image = image.resize(
        (round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR
    )
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image, dtype=np.float32)
    return ((pixels - 127.0) / 128.0).transpose(2, 0, 1)[np.newaxis].astype("<f4")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        import PIL  # noqa: F401
    except ImportError:
        print("image_to_tensor: needs Pillow (pip install pillow)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for image in args.images:
        target = args.out / f"{image.stem}.rgb.f32"
        preprocess(image).tofile(target)
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
