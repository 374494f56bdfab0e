"""Images to the raw tensors the example guests read (the EfficientNet-Lite0 convention).

Resize the shorter side to 256 (bilinear), centre-crop 224, RGB, (pixel - 127) / 128, NCHW,
little-endian f32: the layout of ../shared/models/efficientnet-lite0/tensors. Needs Pillow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt


class PillowMissingError(ImportError):
    """Pillow is not installed."""


def preprocess(path: Path, size: int = 224, resize: int = 256) -> npt.NDArray[np.float32]:
    """The [1,3,size,size] f32 tensor of one image."""
    try:
        from PIL import Image  # noqa: PLC0415  (an optional dependency)
    except ImportError:
        raise PillowMissingError(
            "turning images into tensors needs Pillow (pip install pillow)"
        ) from None

    image = Image.open(path).convert("RGB")
    scale = resize / min(image.size)
    image = image.resize(
        (round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR
    )
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image, dtype=np.float32)
    tensor: npt.NDArray[np.float32] = (
        ((pixels - 127.0) / 128.0).transpose(2, 0, 1)[np.newaxis].astype("<f4")
    )
    return tensor
