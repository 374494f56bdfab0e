"""Runs of a WasiNNTask on external proplets: the hand-off between the shim and the operator.

With the kubernetes backend the shim, as a Propeller manager, may hand a run to external
proplets over MQTT (`shim/dispatch.py`). The WasiNNTask stays the one record of it and the
operator the only writer of its status; the shim writes two annotations:

- `wasinn.dev/external` (`ExternalDispatch`), in the same write as the run request
  (`wasinn.dev/run`): this run goes to these proplets. The operator makes no Pod for it: it
  records the run Running on them at once (as Propeller does at dispatch), and fails it when no
  report arrives by its deadline (the task's timeout, resolved with the operator's default,
  else `DEFAULT_TIMEOUT_SECONDS`, plus `DEADLINE_GRACE_SECONDS`).
- `wasinn.dev/external-report` (`ExternalReport`), when a proplet's result arrives on
  `control/proplet/results`: the operator turns it into Completed or Failed with the results,
  through the same lifecycle as a Pod's end. A failed external run is not retried (a run with
  side effects must not run twice unasked; the client can start the task again).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .crd import GROUP

DISPATCH_ANNOTATION = f"{GROUP}/external"
REPORT_ANNOTATION = f"{GROUP}/external-report"
DEFAULT_TIMEOUT_SECONDS = 3600  # an external run of a task without a timeout
DEADLINE_GRACE_SECONDS = 30


M = TypeVar("M", bound=BaseModel)


class ExternalDispatch(BaseModel):
    """Run `run` of the task went to `proplets` (every alive one, for a broadcast)."""

    model_config = ConfigDict(populate_by_name=True)
    run: int = Field(ge=1)
    proplets: list[str] = Field(default_factory=list)
    broadcast: bool = False

    def to_annotation(self) -> str:
        """The annotation's value."""
        return self.model_dump_json()


class ExternalReport(BaseModel):
    """How run `run` ended on `proplet`, as its result message said."""

    model_config = ConfigDict(populate_by_name=True)
    run: int = Field(ge=1)
    proplet: str = ""
    failed: bool = False
    results: str | None = None
    results_truncated: bool = Field(default=False, alias="resultsTruncated")
    error: str = ""

    def to_annotation(self) -> str:
        """The annotation's value."""
        return self.model_dump_json(by_alias=True)


def read_dispatch(task: dict[str, Any]) -> ExternalDispatch | None:
    """The task's dispatch annotation, if it carries a well-formed one."""
    return _read(task, DISPATCH_ANNOTATION, ExternalDispatch)


def read_report(task: dict[str, Any]) -> ExternalReport | None:
    """The task's external report, if it carries a well-formed one."""
    return _read(task, REPORT_ANNOTATION, ExternalReport)


def _read(task: dict[str, Any], name: str, model: type[M]) -> M | None:
    text = ((task.get("metadata") or {}).get("annotations") or {}).get(name)
    if not text:
        return None
    try:
        return model.model_validate_json(text)
    except ValidationError:
        return None
