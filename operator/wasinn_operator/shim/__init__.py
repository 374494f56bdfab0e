"""`wasinn shim`: Propeller's manager REST API and MQTT roles over a pluggable task backend."""

from .artifacts import ArtifactStore
from .errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    ShimError,
    TooLargeError,
    UnsupportedMediaError,
)
from .service import TaskService
from .store import PropletRecord, TaskRecord, TaskStore

__all__ = [
    "ArtifactStore",
    "BadRequestError",
    "ConflictError",
    "NotFoundError",
    "PropletRecord",
    "ShimError",
    "TaskRecord",
    "TaskService",
    "TaskStore",
    "TooLargeError",
    "UnsupportedMediaError",
]
