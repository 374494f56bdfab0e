"""Running a component as a WASI command: what it may import, and calling `wasi:cli/run`.

A component runs where a module runs when it is a WASI 0.2 command (it exports
`wasi:cli/run@0.2.x`) and imports only WASI 0.2 (`add_wasip2`: cli, clocks, filesystem, io,
random, sockets) and `wasi:nn@0.2.0-rc-2024-10-28`. Anything else is refused before
instantiation with an error naming each unsupported import or the missing export.
"""

from __future__ import annotations

import wasmtime
from wasmtime.component import Component, ExportIndex, Instance, Linker

from .nn import INTERFACES, PACKAGE, VERSION, ComponentNNHost
from .staging import STAGING

WASI_PACKAGES = ("wasi:cli", "wasi:clocks", "wasi:filesystem", "wasi:io", "wasi:random")
WASI_PACKAGES_ALL = (*WASI_PACKAGES, "wasi:sockets")
RUN_EXPORT = "wasi:cli/run@0.2."
PROVIDED = (
    f"it provides WASI 0.2 ({', '.join(p.removeprefix('wasi:') for p in WASI_PACKAGES_ALL)}) "
    f"and {PACKAGE} ({', '.join(INTERFACES)})"
)


class ComponentError(ValueError):
    """The component needs something this host does not provide."""


def _split(name: str) -> tuple[str, str, str]:
    """`ns:pkg/iface@version` as (`ns:pkg`, `iface`, `version`)."""
    path, _, version = name.partition("@")
    package, _, iface = path.partition("/")
    return package, iface, version


def prepare(
    component: Component, engine: wasmtime.Engine, nn: bool | None, invoke: str | None
) -> tuple[bool, ExportIndex]:
    """Check that the component can run here: whether it imports wasi:nn, and its `run`."""
    if invoke is not None:
        raise ComponentError(
            "--invoke: a component runs its wasi:cli/run export; --invoke is for core modules"
        )
    return check_world(component, engine, nn), command_export(component, engine)


def link(engine: wasmtime.Engine, nn: ComponentNNHost | None) -> Linker:
    """A linker with WASI 0.2 and, when given, wasi:nn."""
    linker = Linker(engine)
    linker.add_wasip2()
    if nn is not None:
        nn.define(linker)
    return linker


def check_world(component: Component, engine: wasmtime.Engine, nn: bool | None) -> bool:
    """Refuse unsupported imports; return whether the component imports `wasi:nn`.

    `nn` is the run's wasi-nn switch (None: on when imported; False: refused if imported).
    """
    unsupported: list[str] = []
    wants_nn = False
    for name in component.type.imports(engine):
        package, iface, version = _split(name)
        if name == STAGING:  # the bridge's (bridge.py)
            continue
        if package == "wasi:nn":
            if version != VERSION or iface not in INTERFACES:
                unsupported.append(name)
            wants_nn = True
        elif package not in WASI_PACKAGES_ALL or not version.startswith("0.2."):
            unsupported.append(name)
    if unsupported:
        raise ComponentError(
            f"the component imports {', '.join(unsupported)}, which this host does not provide "
            f"({PROVIDED})"
        )
    if wants_nn and nn is False:
        raise ComponentError(f"the component imports {PACKAGE}, and wasi-nn is off (-S nn=n)")
    return wants_nn


def command_export(component: Component, engine: wasmtime.Engine) -> ExportIndex:
    """The index of the component's `wasi:cli/run@0.2.x#run` function."""
    exports = list(component.type.exports(engine))
    for name in exports:
        if name.startswith(RUN_EXPORT):
            run_instance = component.get_export_index(name)
            index = component.get_export_index("run", run_instance)
            if index is not None:
                return index
    listed = ", ".join(exports) or "nothing"
    raise ComponentError(
        "the component is not a WASI command: it exports no wasi:cli/run@0.2 "
        f"(it exports {listed}); only commands can run"
    )


def call_run(store: wasmtime.Store, instance: Instance, index: ExportIndex) -> bool:
    """Call `run`; True when it returned `ok` (traps and exits raise, as for modules)."""
    func = instance.get_func(store, index)
    if func is None:
        raise ComponentError("the component's wasi:cli/run export is not a function")
    outcome = func(store)
    func.post_return(store)
    return getattr(outcome, "tag", "ok") == "ok"
