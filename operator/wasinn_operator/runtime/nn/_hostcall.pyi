"""Types of the C extension `_hostcall.c` (see there)."""

from collections.abc import Callable
from types import ModuleType

GENERIC: int
SET_INPUT: int
COMPUTE: int
GET_OUTPUT: int
NN_CONTEXTS: int
NN_PORTS: int
TRAMPOLINE: int
FINALIZER: int

class Memory:
    @property
    def base(self) -> int: ...
    @property
    def size(self) -> int: ...
    def grown(self) -> int: ...

class NNCache:
    def __init__(self, memory: Memory) -> None: ...
    def remember_input(self, ctx: int, index: int, record: bytes, dims: bytes) -> None: ...
    def remember_output(
        self,
        ctx: int,
        index: int,
        out_ptr: int,
        out_max: int,
        written: int,
        serial: int,
        source: int,
        nbytes: int,
    ) -> None: ...
    def remember_compute(
        self,
        ctx: int,
        serial: int,
        *,
        start: Callable[..., object],
        start_args: tuple[object, ...],
        wait: Callable[..., object],
        deadline: float,
        checks: tuple[tuple[Callable[[], int], int], ...],
        settled: Callable[[], int],
        expire: Callable[[], object],
    ) -> None: ...
    def computed(self, ctx: int, serial: int) -> None: ...
    def stale(self, ctx: int) -> bool: ...

def configure(
    *,
    caller_context: int,
    caller_export_get: int,
    memory_data: int,
    memory_data_size: int,
    trap_new: int,
    extern_size: int,
    extern_of: int,
    extern_kind_memory: int,
    raw_size: int,
    host_trap_error: type[BaseException],
    func_module: ModuleType,
) -> None: ...
def new_env(
    fn: Callable[..., int], arity: int, kind: int, memory: Memory, cache: NNCache | None
) -> int: ...
def free_env(env: int) -> None: ...
