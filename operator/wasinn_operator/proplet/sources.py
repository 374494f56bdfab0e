"""A task's model sources, made ready on the host before its run: https and OCI sources fetched
into the model cache (once per digest), `pvc://` sources found where the operator mounted them.

The result is one directory per name, which the engine preopens read-only at /models/NAME.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..api import TaskSpec
from ..api.modelsource import ModelSource
from ..models.cachegc import evict
from ..models.remote import ModelFetchError, fetch_source
from .fetch import FetchError, registry_credentials


def prepare_sources(
    task: TaskSpec,
    cache: Path,
    max_bytes: int,
    pvc_dir: Path,
    *,
    registry_auth: Path | None = None,
    insecure_registries: tuple[str, ...] = (),
    cache_budget: int | None = None,
) -> dict[str, Path]:
    """NAME -> host directory for every model source of `task`; ModelFetchError names the one
    that failed (nothing of it is cached). With `cache_budget` (bytes), the cache is then
    trimmed to it, least recently used first, keeping this task's models."""
    ready: dict[str, Path] = {}
    for index, source in enumerate(task.model_sources):
        where = f"modelSources[{index}] ({source.name})"
        try:
            ready[source.name] = _prepare(
                source, cache, max_bytes, pvc_dir, registry_auth, insecure_registries
            )
        except (ModelFetchError, FetchError) as exc:
            raise ModelFetchError(f"{where}: {exc}") from None
        except OSError as exc:
            raise ModelFetchError(f"{where}: the model cache {cache}: {exc}") from None
    fetched = [s for s in task.model_sources if s.location.scheme != "pvc"]
    if cache_budget is not None and fetched:
        # Trimming is housekeeping: the task has its models either way.
        with contextlib.suppress(OSError):
            evict(cache, cache_budget, keep={s.digest_hex for s in fetched})
    return ready


def _prepare(
    source: ModelSource,
    cache: Path,
    max_bytes: int,
    pvc_dir: Path,
    registry_auth: Path | None,
    insecure_registries: tuple[str, ...],
) -> Path:
    location = source.location
    if location.scheme == "pvc":
        mounted = pvc_dir / source.name
        if not mounted.is_dir():
            raise ModelFetchError(
                f"{source.uri}: not mounted at {mounted} (pvc:// sources work in a cluster, "
                "where the operator mounts the claim)"
            )
        return mounted
    return fetch_source(
        source,
        cache,
        max_bytes,
        credentials=registry_credentials(location.host, registry_auth),
        insecure_registries=insecure_registries,
    )
