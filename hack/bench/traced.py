"""Run `wasinn_operator.cli` with tracemalloc: the first SIGUSR1 starts tracing (imports under
tracemalloc take minutes on a busy machine, and the growth after a warm-up is what counts);
each SIGUSR1 writes a snapshot to $WASINN_TRACE_DIR/<n>.snap (hack/bench/controller.py
--tracemalloc diffs them)."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

OUT = Path(os.environ["WASINN_TRACE_DIR"])
COUNTER = itertools.count()


def _dump(_signum: int, _frame: FrameType | None) -> None:
    if not tracemalloc.is_tracing():
        tracemalloc.start(int(os.environ.get("WASINN_TRACE_FRAMES", "12")))
    tracemalloc.take_snapshot().dump(str(OUT / f"{next(COUNTER)}.snap"))


signal.signal(signal.SIGUSR1, _dump)
from wasinn_operator.cli import main  # noqa: E402

sys.argv[0] = "wasinn"
sys.exit(main())
