"""Streaming multipart/form-data for uploads: file bytes go straight from the socket into the
encrypting writer, never whole into memory and never unencrypted onto disk (Starlette's form parser
spools parts over 1 MB to a temporary file)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from llmaas.core.errors import InvalidRequestError

MAX_FIELD_BYTES = 64 * 1024


class StreamedForm:
    """Small text fields are collected; the part named `file_field` is handed chunk by chunk to the
    sink that `on_file(filename, fields_so_far)` returns."""

    def __init__(self, file_field: str, on_file: Callable[[str, dict[str, str]], Callable[[bytes], None]]) -> None:
        self.file_field, self.on_file = file_field, on_file
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self._name: str | None = None
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._value = bytearray()
        self._sink: Callable[[bytes], None] | None = None
        self.error: BaseException | None = None

    async def parse(self, request: Request) -> None:
        ctype, opts = parse_options_header(request.headers.get("content-type", ""))
        if ctype != b"multipart/form-data" or b"boundary" not in opts:
            raise InvalidRequestError("Upload the file as multipart/form-data with fields 'file' and 'purpose'.",
                                      param="file")
        parser = MultipartParser(opts[b"boundary"], callbacks={
            "on_part_begin": self._part_begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
            "on_header_end": self._hend, "on_headers_finished": self._headers_done, "on_part_data": self._data,
            "on_part_end": self._part_end})
        async for chunk in request.stream():
            parser.write(chunk)
            if self.error is not None:
                raise self.error
        parser.finalize()
        if self.error is not None:
            raise self.error

    def _part_begin(self) -> None:
        self._headers, self._name, self._value, self._sink = {}, None, bytearray(), None

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _hend(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_done(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = opts.get(b"name", b"").decode()
        if self._name == self.file_field:
            self.filename = opts.get(b"filename", b"upload").decode(errors="replace")
            try:
                self._sink = self.on_file(self.filename, self.fields)
            except BaseException as e:
                self.error = e

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        if self._sink is not None:
            try:
                self._sink(data[start:end])
            except BaseException as e:
                self.error = e
        else:
            self._value += data[start:end]
            if len(self._value) > MAX_FIELD_BYTES:
                self.error = InvalidRequestError(f"Form field '{self._name}' is too long.", param=self._name)

    def _part_end(self) -> None:
        if self._name and self._sink is None:
            self.fields[self._name] = self._value.decode(errors="replace")
