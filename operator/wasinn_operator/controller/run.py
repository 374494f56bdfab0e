"""`wasinn operator`: run the controller (namespaced or cluster-wide) with its endpoints."""

from __future__ import annotations

import argparse

import kopf

from .settings import OperatorSettings, add_arguments

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> int:
    """Parse the settings once and run kopf until stopped; the handlers get them in the memo."""
    try:
        settings = OperatorSettings.from_args(args)
    except ValueError as exc:  # a bad setting stops the start, named
        raise SystemExit(f"wasinn operator: {exc}") from None
    from . import handlers  # noqa: PLC0415  (registers the handlers with kopf)

    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        memo=handlers.memo(settings),
    )
    return 0
