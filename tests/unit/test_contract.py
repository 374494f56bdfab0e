"""api/ as the contract layer: the result summary's reason, errors, times, and the one
Kubernetes client's error mapping; the operator's settings parsed once from flags."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ValidationError

from wasinn_operator import kubeclient
from wasinn_operator.api import RunSummary
from wasinn_operator.api.errors import describe_errors
from wasinn_operator.api.summary import FailureReason
from wasinn_operator.api.task import sha256_digest
from wasinn_operator.api.times import format_time, parse_time
from wasinn_operator.controller.settings import OperatorSettings, add_arguments

pytestmark = pytest.mark.unit


class Inner(BaseModel):
    size: int


class Outer(BaseModel):
    inner: Inner
    name: str


def test_describe_errors_names_each_field() -> None:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate({"inner": {"size": "big"}})
    assert describe_errors(info.value) == (
        "inner.size: Input should be a valid integer, unable to parse string as an integer; "
        "name: Field required"
    )


def test_describe_errors_names_the_whole_and_drops_request_parts() -> None:
    class Whole:
        def errors(self) -> list[dict[str, object]]:
            return [
                {"loc": (), "msg": "Value error, exactly one source"},
                {"loc": ("body", "cli_args", 0), "msg": "bad flag"},
            ]

    assert describe_errors(Whole(), "task") == "task: exactly one source; cli_args.0: bad flag"
    assert describe_errors(Whole()) == "exactly one source; cli_args.0: bad flag"


def test_times_are_utc_microseconds_with_a_z() -> None:
    """One form for status, annotations and Propeller JSON (tests/unit/test_lifecycle.py)."""
    moment = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == "2026-01-02T01:04:05.000678Z"
    assert parse_time("2026-01-02T01:04:05Z") == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert parse_time(format_time(moment)) == moment


def test_the_summary_carries_its_reason() -> None:
    summary = RunSummary(state="Failed", exitCode=124, reason=FailureReason.DEADLINE_EXCEEDED)
    assert json.loads(summary.to_message())["reason"] == "DeadlineExceeded"
    # A summary without a reason (an older proplet, or a Completed run) reads as None.
    older = RunSummary.model_validate({"state": "Failed", "exitCode": 1, "error": "x"})
    assert older.reason is None
    with pytest.raises(ValidationError):
        RunSummary.model_validate({"state": "Failed", "exitCode": 1, "reason": "Oops"})


def test_sha256_digest() -> None:
    assert sha256_digest(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize(
    ("status", "kind", "message"),
    [
        (404, kubeclient.NotFoundError, 'wasinntasks.wasinn.dev "t" not found'),
        (409, kubeclient.ConflictError, 'wasinntasks.wasinn.dev "t" not found'),
        (422, kubeclient.InvalidError, 'wasinntasks.wasinn.dev "t" not found'),
        (
            500,
            kubeclient.UnavailableError,
            'the Kubernetes API answered 500: wasinntasks.wasinn.dev "t" not found',
        ),
    ],
)
def test_kubeclient_maps_api_errors_keeping_the_servers_message(
    status: int, kind: type[kubeclient.KubeError], message: str
) -> None:
    def refuse(*_: object, **__: object) -> object:
        error = ApiException(status=status, reason="Reason")
        error.body = json.dumps(
            {"kind": "Status", "message": 'wasinntasks.wasinn.dev "t" not found'}
        )
        raise error

    with pytest.raises(kind) as info:
        kubeclient.KubeClient.call(refuse)
    assert str(info.value) == message
    assert info.value.status == status


def test_kubeclient_reports_an_unreachable_server() -> None:
    def unreachable(*_: object, **__: object) -> object:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(kubeclient.UnavailableError, match=r"unreachable: .*Connection refused"):
        kubeclient.KubeClient.call(unreachable)


def operator_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_operator_flags_win_over_their_variables() -> None:
    environ = {
        "WASINN_PROPLET_IMAGE": "from-env:1",
        "WASINN_RESULTS_CAP": "100",
        "WASINN_NAMESPACES": "a,b",
        "WASINN_METRICS_PORT": "9999",
    }
    settings = OperatorSettings.from_args(
        operator_args("--proplet-image", "from-flag:2", "-n", "c", "--max-timeout", "20m"),
        environ,
    )
    assert settings.proplet_image == "from-flag:2"
    assert settings.results_cap == 100
    assert settings.namespaces == ("c",)
    assert settings.metrics_port == 9999
    assert settings.health_port == 8080
    assert settings.policy.max_timeout == 1200
    everywhere = OperatorSettings.from_args(operator_args("--all-namespaces"), environ)
    assert everywhere.namespaces == ()
    assert OperatorSettings.from_args(operator_args(), environ).namespaces == ("a", "b")


def test_a_bad_operator_setting_is_named() -> None:
    with pytest.raises(ValueError, match="WASINN_PROPLET_ENGINE 'wamr'"):
        OperatorSettings.from_args(operator_args(), {"WASINN_PROPLET_ENGINE": "wamr"})
    with pytest.raises(ValueError, match="--max-timeout"):
        OperatorSettings.from_args(operator_args("--max-timeout", "soon"), {})
    with pytest.raises(ValueError, match="WASINN_MODEL_CACHE_BYTES: 'lots' is not a size"):
        OperatorSettings.from_args(operator_args("--model-cache-bytes", "lots"), {})
    sized = OperatorSettings.from_args(operator_args("--model-cache-bytes", "50GiB"), {})
    assert sized.model_cache_bytes == 50 << 30
