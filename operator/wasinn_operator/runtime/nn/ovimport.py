"""OpenVINO imported without its model converter (first import of this package, on purpose).

`import openvino` also imports `openvino.tools.ovc`, the model conversion API, and with it
OpenVINO's telemetry, `urllib`, `http.client` and `ssl`: about 40% of the engine's import
time, which every new proplet process pays, for `convert_model`, which the runtime never
calls. openvino's `__init__` tolerates a converter that cannot be imported, so the converter is
kept out while openvino loads; afterwards `import openvino.tools.ovc` works again for whoever
needs it (only the `openvino.convert_model` shortcut is then missing).
"""

from __future__ import annotations

import sys

CONVERTER = "openvino.tools.ovc"


def load() -> None:
    """Import openvino (once) without its converter, unless something imported it already."""
    if "openvino" in sys.modules:
        return
    kept_out = CONVERTER not in sys.modules
    if kept_out:
        sys.modules[CONVERTER] = None  # type: ignore[assignment]  # an import of it fails
    try:
        import openvino  # noqa: F401, PLC0415
    finally:
        if kept_out and sys.modules.get(CONVERTER, 0) is None:
            del sys.modules[CONVERTER]


load()
