"""EfficientNet-Lite0 as an OpenVINO graph, built from the PyTorch weights without torch.

Mirrors the network of PyPI `efficientnet-lite-pytorch` 0.1.0 (`efficientnet_lite()` and
`EfficientNet.from_name("efficientnet-lite0")`): width and depth 1.0 at 224x224, ReLU6, no
squeeze-and-excitation, stem and head not scaled, batch norm eps 1e-3, TensorFlow "SAME" padding
computed for the static input size, a residual add on every repeated block, and at inference
no dropout or drop-connect. Batch norm is folded into the convolution before it (weights times
gamma / sqrt(var + eps), then an added shift), in f32, as OpenVINO's own conversion does: the
weights come out bit for bit those of `openvino.convert_model` on the PyTorch model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

IMAGE_SIZE = 224
BN_EPS = np.float32(1e-3)
# (repeats, kernel, first stride, expand ratio, input filters, output filters): the block
# strings 'r1_k3_s11_e1_i32_o16' ... 'r1_k3_s11_e6_i192_o320' of efficientnet_lite()
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
HEAD_FILTERS = 1280
CLASSES = 1000

Weights = Mapping[str, npt.NDArray[Any]]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """(pad before, pad after, output size) of TensorFlow's SAME padding, as the network
    code's Conv2dStaticSamePadding computes it."""
    out = math.ceil(size / stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return pad // 2, pad - pad // 2, out


def build_model(weights: Weights) -> Any:
    """The `openvino.Model` of EfficientNet-Lite0 with these weights ([1,3,224,224] -> [1,1000])."""
    import openvino as ov  # noqa: PLC0415  (loaded only when converting)

    graph = _Graph(weights)
    inputs = ov.opset13.parameter([1, 3, IMAGE_SIZE, IMAGE_SIZE], ov.Type.f32, name="inputs")
    inputs.output(0).set_names({"inputs"})
    x, size = graph.conv_bn(inputs, "_conv_stem", "_bn0", IMAGE_SIZE, 3, 2)
    block = 0
    for repeats, kernel, stride, expand, first_in, filters_out in STAGES:
        for r in range(repeats):
            name = f"_blocks.{block}"
            filters_in = first_in if r == 0 else filters_out
            graph.expect(f"{name}._project_conv.weight", (filters_out, filters_in * expand, 1, 1))
            x, size = graph.block(x, name, size, kernel, stride if r == 0 else 1, expand, r > 0)
            block += 1
    x, _ = graph.conv_bn(x, "_conv_head", "_bn1", size, 1, 1)
    logits = graph.classifier(x)
    logits.output(0).set_names({"logits"})
    result = graph.named(ov.opset13.result(logits), "logits/result")
    unused = sorted(set(weights) - graph.used - {k for k in weights if "num_batches" in k})
    if unused:
        raise ValueError(f"weights not used by EfficientNet-Lite0: {', '.join(unused[:5])}")
    return ov.Model([result], [inputs], "efficientnet-lite0")


def save_model(weights: Weights, xml: Path) -> None:
    """Write `xml` and the .bin beside it (fp32)."""
    import openvino as ov  # noqa: PLC0415

    ov.save_model(build_model(weights), str(xml), compress_to_fp16=False)


class _Graph:
    """Node builders that name every node after its PyTorch module, so the IR is reproducible."""

    def __init__(self, weights: Weights) -> None:
        import openvino as ov  # noqa: PLC0415

        self.ops = ov.opset13
        self.weights = weights
        self.used: set[str] = set()

    def tensor(self, name: str) -> npt.NDArray[np.float32]:
        if name not in self.weights:
            raise ValueError(f"the weights lack {name}")
        self.used.add(name)
        return np.asarray(self.weights[name], dtype=np.float32)

    def expect(self, name: str, shape: tuple[int, ...]) -> None:
        got = tuple(self.tensor(name).shape)
        if got != shape:
            raise ValueError(f"{name} has shape {got}, EfficientNet-Lite0 needs {shape}")

    def const(self, value: npt.NDArray[Any], name: str) -> Any:
        node = self.ops.constant(value)
        node.set_friendly_name(name)
        return node

    def named(self, node: Any, name: str) -> Any:
        node.set_friendly_name(name)
        return node

    def conv_bn(
        self,
        x: Any,
        conv: str,
        bn: str,
        size: int,
        kernel: int,
        stride: int,
        depthwise: bool = False,
        relu6: bool = True,
    ) -> tuple[Any, int]:
        gamma, beta, mean, var = (
            self.tensor(f"{bn}.{k}") for k in ("weight", "bias", "running_mean", "running_var")
        )
        scale = gamma / np.sqrt(var + BN_EPS)
        shift = (beta - mean * scale).reshape(1, -1, 1, 1)
        w = self.tensor(f"{conv}.weight") * scale.reshape(-1, 1, 1, 1)
        before, after, out = same_padding(size, kernel, stride)
        args = ([stride, stride], [before, before], [after, after], [1, 1])
        if depthwise:
            w = w.reshape(w.shape[0], 1, 1, kernel, kernel)
            y = self.ops.group_convolution(x, self.const(w, f"{conv}.weight"), *args)
        else:
            y = self.ops.convolution(x, self.const(w, f"{conv}.weight"), *args)
        self.named(y, conv)
        y = self.named(self.ops.add(y, self.const(shift, f"{bn}.shift")), bn)
        if relu6:
            y = self.named(self.ops.clamp(y, 0.0, 6.0), f"{bn}.relu6")
        return y, out

    def block(
        self, x: Any, name: str, size: int, kernel: int, stride: int, expand: int, residual: bool
    ) -> tuple[Any, int]:
        """MBConvBlock: expand 1x1 (unless the ratio is 1), depthwise, project 1x1, skip."""
        h = x
        if expand != 1:
            h, _ = self.conv_bn(h, f"{name}._expand_conv", f"{name}._bn0", size, 1, 1)
        h, out = self.conv_bn(
            h, f"{name}._depthwise_conv", f"{name}._bn1", size, kernel, stride, depthwise=True
        )
        h, _ = self.conv_bn(h, f"{name}._project_conv", f"{name}._bn2", out, 1, 1, relu6=False)
        if residual:
            h = self.named(self.ops.add(h, x), f"{name}.residual")
        return h, out

    def classifier(self, x: Any) -> Any:
        axes = self.const(np.array([2, 3], dtype=np.int64), "_avg_pooling.axes")
        x = self.named(self.ops.reduce_mean(x, axes, keep_dims=True), "_avg_pooling")
        shape = self.const(np.array([-1, HEAD_FILTERS], dtype=np.int64), "flatten.shape")
        x = self.named(self.ops.reshape(x, shape, special_zero=False), "flatten")
        fc = self.const(self.tensor("_fc.weight"), "_fc.weight")
        x = self.named(self.ops.matmul(x, fc, False, True), "_fc.matmul")
        bias = self.tensor("_fc.bias").reshape(1, CLASSES)
        return self.named(self.ops.add(x, self.const(bias, "_fc.bias")), "_fc")
