#!/usr/bin/env python3
"""Preprocess images into raw tensors for the classify guests (EfficientNet-Lite0 convention).

Resize the shorter side to 256 (bilinear), centre-crop 224, RGB, (pixel - 127) / 128, NCHW,
little-endian f32: the layout of ../shared/models/efficientnet-lite0/tensors (the code is
wasinn_operator.models.images, which `wasinn models fetch` uses too). Needs Pillow.

usage: hack/image_to_tensor.py IMAGE... --out DIR   (writes DIR/<stem>.rgb.f32)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wasinn_operator.models.images import PillowMissingError, preprocess


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for image in args.images:
        target = args.out / f"{image.stem}.rgb.f32"
        try:
            preprocess(image).tofile(target)
        except PillowMissingError as exc:
            print(f"image_to_tensor: {exc}", file=sys.stderr)
            return 2
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
