"""The shim's typed errors; `app.py` maps each to its HTTP status in one place."""

from __future__ import annotations


class ShimError(Exception):
    """Base of every error a client can cause; the message is what the client reads."""


class BadRequestError(ShimError):
    """Malformed or invalid input (400)."""


class UnauthorizedError(ShimError):
    """Missing or wrong bearer token (401)."""


class NotFoundError(ShimError):
    """No such task, proplet, artifact or route (404)."""


class ConflictError(ShimError):
    """The task's state does not allow the operation (409)."""


class TooLargeError(ShimError):
    """The body or the module exceeds the configured limit (413)."""


class UnsupportedMediaError(BadRequestError):
    """Wrong Content-Type, or bytes that are not a WebAssembly module (400, as Propeller
    answers both)."""


class InvocationError(ShimError):
    """An invocation of a latent task ran and failed (502: the run, not the request, failed);
    the message is the run's error."""


class UnavailableError(ShimError):
    """A dependency failed (the database, the artifact store's disk): the request may succeed
    later (503); the message names what failed."""
