"""`poll_oneoff` that never sleeps past the run's deadline.

WASI preview1's `poll_oneoff` is where a guest sleeps (`sleep`, `nanosleep`, `clock_nanosleep`
in wasi-libc, `std::thread::sleep` in Rust). wasmtime's implementation blocks the thread in
native code, where epoch interruption cannot reach it: a guest sleeping for an hour would hold
its worker for an hour whatever its timeout. So runs with a timeout get this implementation
instead (wasmtime's cannot be called from a host function: it needs a wasm caller). It sleeps
in Python until the earliest clock subscription fires, or ends the run as timed out at the
deadline.

Semantics follow wasmtime's: clocks `realtime` and `monotonic` (whose zero is when the run's
WASI context was made, as wasmtime's is), relative or absolute; file descriptors are always
ready (this engine has no sockets or pipes to wait on), reported with `nbytes` 0 and no error
even for a descriptor that is not open (the read or write that follows reports that).
"""

from __future__ import annotations

import struct
import time

import wasmtime

from .deadline import Deadline
from .nn import hostcall
from .nn.abi import GuestMemory, NNError

WASI = "wasi_snapshot_preview1"
SUBSCRIPTION = struct.Struct(
    "<QB7xIxxxxQQH6x"
)  # userdata, tag, clock id, timeout, precision, flags
EVENT = struct.Struct("<QHBxxxxxQH6x")  # userdata, error, type, nbytes, flags
EVENTTYPE_CLOCK = 0
EVENTTYPES_FD = (1, 2)
CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
SUBCLOCKFLAGS_ABSTIME = 1
ERRNO_FAULT = 21
ERRNO_INVAL = 28
ERRNO_NOTSUP = 58
MAX_SUBSCRIPTIONS = 0xFFFFFFFF // SUBSCRIPTION.size


def define(linker: wasmtime.Linker, deadline: Deadline) -> None:
    """Shadow the linker's WASI `poll_oneoff` with the deadline-aware one.

    Call right after the store's WASI context was set: the monotonic clock starts then.
    """
    origin = time.monotonic_ns()

    def poll_oneoff(
        memory: hostcall.RawMemory | None, subs: int, events: int, count: int, out: int
    ) -> int:
        if memory is None:
            return ERRNO_FAULT
        mem = GuestMemory(memory.base, memory.size, memory.grown)
        n = count & 0xFFFFFFFF
        if n == 0:
            return ERRNO_INVAL
        if n > MAX_SUBSCRIPTIONS:  # more than a wasm32 memory can hold
            return ERRNO_FAULT
        try:
            raw = mem.read(subs, n * SUBSCRIPTION.size, "subscriptions")
            mem.check(events, n * EVENT.size, "events")
            mem.check(out, 4, "nevents")
        except NNError:
            return ERRNO_FAULT
        ready: list[bytes] = []
        clocks: list[tuple[int, int]] = []  # (fires at, in monotonic ns; userdata)
        now = time.monotonic_ns()
        for userdata, tag, clock, timeout, _precision, flags in SUBSCRIPTION.iter_unpack(raw):
            if tag in EVENTTYPES_FD:
                ready.append(EVENT.pack(userdata, 0, tag, 0, 0))
            elif tag != EVENTTYPE_CLOCK:
                return ERRNO_INVAL
            elif clock not in (CLOCK_REALTIME, CLOCK_MONOTONIC):
                ready.append(EVENT.pack(userdata, ERRNO_NOTSUP, tag, 0, 0))
            elif flags & SUBCLOCKFLAGS_ABSTIME:
                clock_now = time.time_ns() if clock == CLOCK_REALTIME else now - origin
                clocks.append((now + timeout - clock_now, userdata))
            else:
                clocks.append((now + timeout, userdata))
        if not ready and clocks:
            ready = _wait(clocks, deadline)
        mem.write(events, b"".join(ready), "events")
        mem.write_u32(out, len(ready), "nevents")
        return 0

    linker.allow_shadowing = True
    try:
        hostcall.define(linker, WASI, "poll_oneoff", 4, poll_oneoff, hostcall.RawMemory())
    finally:
        linker.allow_shadowing = False


def _wait(clocks: list[tuple[int, int]], deadline: Deadline) -> list[bytes]:
    """Sleep until the first clock fires (the events of every clock that has), or raise
    `DeadlineError` at the deadline."""
    first = min(at for at, _ in clocks)
    while (left := first - time.monotonic_ns()) > 0:
        if left / 1e9 >= deadline.remaining():
            time.sleep(deadline.remaining())
            deadline.expire("a WASI sleep (poll_oneoff)")
        time.sleep(left / 1e9)
    now = time.monotonic_ns()
    return [EVENT.pack(userdata, 0, EVENTTYPE_CLOCK, 0, 0) for at, userdata in clocks if at <= now]
