"""The task policy's settings: flags of `wasinn shim` and `wasinn operator`, and their
WASINN_* variables (a flag wins over its variable, which wins over the built-in default).

The proplet takes the resulting policy whole, as `WASINN_POLICY` (`TaskPolicy.to_json`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from .policy import (
    DEFAULT_MAX_MEMORY,
    DEFAULT_TIMEOUT,
    MAX_FIELD_BYTES,
    MAX_MEMORY,
    MAX_MODEL_BYTES,
    MAX_TIMEOUT,
    TaskPolicy,
)
from .wasmflags import FlagError, format_size, parse_duration, parse_size

SETTINGS = (
    ("--allow-host-dir", "WASINN_ALLOW_HOST_DIRS", "allow_host_dirs"),
    ("--default-timeout", "WASINN_DEFAULT_TIMEOUT", "default_timeout"),
    ("--max-timeout", "WASINN_MAX_TIMEOUT", "max_timeout"),
    ("--default-max-memory", "WASINN_DEFAULT_MAX_MEMORY", "default_max_memory"),
    ("--max-memory", "WASINN_MAX_MEMORY", "max_memory"),
    ("--max-field-bytes", "WASINN_MAX_FIELD_BYTES", "max_field_bytes"),
    ("--allow-model-origin", "WASINN_ALLOW_MODEL_ORIGINS", "allow_model_origins"),
    ("--max-model-bytes", "WASINN_MAX_MODEL_BYTES", "max_model_bytes"),
)
# Origins are URLs, which hold colons: their variable is comma-separated.
LISTS = {"allow_host_dirs": os.pathsep, "allow_model_origins": ","}


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The task-policy flags (each defaults to its WASINN_* variable, then the built-in)."""
    group = parser.add_argument_group("task policy (what tenants' tasks may choose)")
    group.add_argument(
        "--allow-host-dir",
        action="append",
        dest="allow_host_dirs",
        metavar="DIR",
        help="let tasks preopen host directories under DIR (repeatable; default "
        "$WASINN_ALLOW_HOST_DIRS, colon-separated, else none)",
    )
    group.add_argument(
        "--default-timeout",
        metavar="DURATION",
        help="deadline of tasks that set none ($WASINN_DEFAULT_TIMEOUT, else "
        f"{DEFAULT_TIMEOUT:g}s)",
    )
    group.add_argument(
        "--max-timeout",
        metavar="DURATION",
        help=f"longest deadline a task may ask for ($WASINN_MAX_TIMEOUT, else {MAX_TIMEOUT:g}s)",
    )
    group.add_argument(
        "--default-max-memory",
        metavar="SIZE",
        help="linear-memory limit of tasks that set none ($WASINN_DEFAULT_MAX_MEMORY, else "
        f"{format_size(DEFAULT_MAX_MEMORY)})",
    )
    group.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="largest linear-memory limit a task may ask for ($WASINN_MAX_MEMORY, else "
        f"{format_size(MAX_MEMORY)})",
    )
    group.add_argument(
        "--max-field-bytes",
        metavar="SIZE",
        help="largest cli_args, args (inputs) and env of a task, each ($WASINN_MAX_FIELD_BYTES, "
        f"else {format_size(MAX_FIELD_BYTES)})",
    )
    group.add_argument(
        "--allow-model-origin",
        action="append",
        dest="allow_model_origins",
        metavar="URI",
        help="let tasks name model sources under this URI prefix, e.g. https://models.example/ "
        "or oci://registry.example/models (repeatable; default $WASINN_ALLOW_MODEL_ORIGINS, "
        "comma-separated, else none)",
    )
    group.add_argument(
        "--max-model-bytes",
        metavar="SIZE",
        help="largest model source a task may fetch ($WASINN_MAX_MODEL_BYTES, else "
        f"{format_size(MAX_MODEL_BYTES)})",
    )


def policy_env(args: argparse.Namespace) -> dict[str, str]:
    """The policy flags given on a command line, as their WASINN_* variables."""
    found: dict[str, str] = {}
    for _flag, variable, attr in SETTINGS:
        value = getattr(args, attr, None)
        if value:
            found[variable] = LISTS[attr].join(value) if isinstance(value, list) else str(value)
    return found


def policy_from_settings(
    environ: Mapping[str, str], args: argparse.Namespace | None = None
) -> TaskPolicy:
    """The policy from flags (when given) and WASINN_* variables; ValueError names the setting."""
    given = {**environ, **(policy_env(args) if args is not None else {})}
    values: dict[str, Any] = {}
    for flag, variable, attr in SETTINGS:
        text = given.get(variable)
        if not text:
            continue
        where = f"{flag} ({variable})"
        try:
            if attr in LISTS:
                values[attr] = tuple(p.strip() for p in text.split(LISTS[attr]) if p.strip())
            elif attr.endswith("timeout"):
                values[attr] = parse_duration(text, where)
            else:
                values[attr] = parse_size(text, where)
        except FlagError as exc:
            raise ValueError(str(exc)) from None
    return TaskPolicy(**values)
