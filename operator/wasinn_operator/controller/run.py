"""`wasinn operator`: run the controller (namespaced or cluster-wide) with its endpoints."""

from __future__ import annotations

import argparse
import os

import kopf

from ..api.policyflags import add_policy_arguments, policy_env, policy_from_settings
from .settings import DEFAULT_LABEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The operator's flags; each has a `WASINN_*` environment variable as default."""
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=None,
        help="watch this namespace (repeatable; default: $WASINN_NAMESPACES, comma-separated, "
        "else all namespaces)",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true")
    parser.add_argument(
        "--openvino-label",
        default=os.environ.get("WASINN_OPENVINO_LABEL", DEFAULT_LABEL),
        help="node label KEY=VALUE of OpenVINO-capable nodes",
    )
    parser.add_argument("--proplet-image", default=os.environ.get("WASINN_PROPLET_IMAGE"))
    parser.add_argument(
        "--pull-policy",
        default=os.environ.get("WASINN_PULL_POLICY"),
        choices=["Always", "IfNotPresent", "Never"],
    )
    parser.add_argument(
        "--models-claim",
        default=os.environ.get("WASINN_MODELS_CLAIM"),
        help="default models PersistentVolumeClaim (default: models)",
    )
    parser.add_argument(
        "--results-cap",
        type=int,
        default=None,
        help="bytes of stdout kept in status.results (default 16384)",
    )
    parser.add_argument("--resync-seconds", type=float, default=None)
    parser.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("WASINN_METRICS_PORT", "9090"))
    )
    parser.add_argument("--health-port", type=int,
                        default=int(os.environ.get("WASINN_HEALTH_PORT", "8080")))  # fmt: skip
    add_policy_arguments(parser)  # WASINN_ALLOW_HOST_DIRS, WASINN_DEFAULT_TIMEOUT, ...


def main(args: argparse.Namespace) -> int:
    """Export the settings for the handlers and run kopf until stopped."""
    if args.namespace is None and not args.all_namespaces:
        args.namespace = [n for n in os.environ.get("WASINN_NAMESPACES", "").split(",") if n]
    args.namespace = args.namespace or []
    values = {
        "WASINN_OPENVINO_LABEL": args.openvino_label,
        "WASINN_PROPLET_IMAGE": args.proplet_image,
        "WASINN_PULL_POLICY": args.pull_policy,
        "WASINN_MODELS_CLAIM": args.models_claim,
        "WASINN_RESULTS_CAP": None if args.results_cap is None else str(args.results_cap),
        "WASINN_RESYNC_SECONDS": None if args.resync_seconds is None else str(args.resync_seconds),
        "WASINN_METRICS_PORT": str(args.metrics_port),
        "WASINN_NAMESPACES": ",".join(args.namespace),
    }
    os.environ.update({k: v for k, v in values.items() if v})
    os.environ.update(policy_env(args))
    try:
        policy_from_settings(os.environ)  # a bad policy setting stops the start, named
    except ValueError as exc:
        raise SystemExit(f"wasinn operator: {exc}") from None
    from . import handlers  # noqa: F401, PLC0415  (registers the handlers with the settings above)

    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
    )
    return 0
