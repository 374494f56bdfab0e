"""Receiving modules without holding them in memory: multipart uploads and base64 `file`s.

`receive_multipart` parses `PUT /tasks/{id}/upload` as it arrives and writes the `file` part
straight into a `ModuleUpload` (temporary file, sha256 and size limit on the way); other parts
are read past and dropped. `module_from_base64` decodes a JSON `file` a slice at a time into a
`ModuleUpload`. Both raise `ShimError`s that name the problem; nothing is stored on error.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import python_multipart
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from .artifacts import ArtifactStore, ModuleUpload
from .errors import BadRequestError, TooLargeError, UnsupportedMediaError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

B64_SLICE = 1 << 20  # characters decoded at a time (a multiple of 4)
FLUSH_BYTES = 1 << 20  # file bytes gathered before a write
MAX_PARTS = 16
UPLOAD_MEDIA = "Content-Type must be multipart/form-data with a `file` part"

Offload = Callable[[Callable[[], None]], Awaitable[None]]


def module_from_base64(text: str, artifacts: ArtifactStore) -> ModuleUpload:
    """A JSON `file` (standard base64, padded) received into the store."""
    size = len(text) // 4 * 3 - text[-2:].count("=")
    if size > artifacts.max_bytes:
        raise TooLargeError(
            f"the module is {size} bytes, over the {artifacts.max_bytes}-byte limit"
        )
    upload = artifacts.upload()
    try:
        for start in range(0, len(text), B64_SLICE):
            part = text[start : start + B64_SLICE]
            try:
                if start + B64_SLICE < len(text) and "=" in part:
                    raise ValueError("padding before the end")
                data = base64.b64decode(part, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise BadRequestError(
                    f"file: not valid base64 (standard alphabet, padded): {exc}"
                ) from None
            upload.write(data)
    except BaseException:
        upload.discard()
        raise
    return upload


class _Form:
    """The multipart callbacks: which part we are in, and the `file` part's pending bytes."""

    def __init__(self, check_name: Callable[[str], None]) -> None:
        self.check_name = check_name
        self.parts = 0
        self.ended = False
        self.filename: str | None = None
        self.in_file = False
        self.file_done = False
        self.pending: list[bytes] = []
        self.pending_size = 0
        self._field = b""
        self._value = b""
        self._disposition = b""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_end": self.end,
        }

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise BadRequestError(f"the multipart form has more than {MAX_PARTS} parts")
        self._disposition = b""

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._disposition = self._value
        self._field = self._value = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != b"file" or b"filename" not in options:
            self.in_file = False  # another field: read past it
            return
        if self.filename is not None:
            raise BadRequestError("file: the multipart form has more than one `file` part")
        self.filename = options[b"filename"].decode("utf-8", errors="replace")
        self.check_name(self.filename)  # before any of its bytes arrive
        self.in_file = True

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.pending.append(data[start:end])
            self.pending_size += end - start

    def part_end(self) -> None:
        if self.in_file:
            self.file_done = True
        self.in_file = False

    def end(self) -> None:
        self.ended = True

    def take(self) -> bytes:
        data = b"".join(self.pending)
        self.pending.clear()
        self.pending_size = 0
        return data


async def receive_multipart(
    content_type: str,
    stream: AsyncIterator[bytes],
    artifacts: ArtifactStore,
    check_name: Callable[[str], None],
    offload: Offload,
) -> tuple[str, ModuleUpload]:
    """The `file` part's name and contents, received into the store as they arrive; disk work
    goes through `offload` (a thread pool), so the event loop never waits on the disk."""
    media, options = parse_options_header(content_type)
    if media != b"multipart/form-data":
        raise UnsupportedMediaError(UPLOAD_MEDIA)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequestError("the multipart Content-Type has no boundary")
    form = _Form(check_name)
    upload = artifacts.upload()

    async def flush() -> None:
        await offload(functools.partial(upload.write, form.take()))

    try:
        try:
            parser = python_multipart.MultipartParser(boundary, form.callbacks())
        except FormParserError as exc:
            raise BadRequestError(f"invalid multipart body: {exc}") from None
        async for chunk in stream:
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise BadRequestError(f"invalid multipart body: {exc}") from None
            if form.pending_size >= FLUSH_BYTES or (form.file_done and form.pending):
                await flush()
        if not form.ended:
            raise BadRequestError("invalid multipart body: it ends before its closing boundary")
        if form.filename is None:
            raise BadRequestError("file: the multipart form has no file part named `file`")
        if form.pending:
            await flush()
    except BaseException:
        upload.discard()
        raise
    return form.filename, upload
