"""Streaming multipart/form-data for uploads: file bytes go straight from the socket into the
encrypting writer, never whole into memory and never unencrypted onto disk (Starlette's form parser
spools parts over 1 MB to a temporary file)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from llmaas.core.errors import InvalidRequestError

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16  # a file and a few small fields; more is not a form anyone sends
MAX_PART_HEADER_BYTES = 8 * 1024
MAX_BOUNDARY = 256  # RFC 2046 allows 70; leave room for clients that are generous
MAX_FILENAME = 255  # what file systems (and the files table) hold


def _bad(message: str, param: str | None = "file") -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _text(raw: bytes, what: str, param: str | None = "file") -> str:
    """A header or field value as text: UTF-8, without control characters (tab aside)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(f"The multipart {what} is not valid UTF-8.", param) from None
    if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in text):
        raise _bad(f"The multipart {what} contains control characters.", param)
    return text


class StreamedForm:
    """Small text fields are collected; the part named `file_field` is handed chunk by chunk to the
    sink that `on_file(filename, fields_so_far)` returns. Exactly one such part is accepted.

    Every malformation (a body that is not multipart, a missing closing boundary, oversized or undecodable
    part headers, too many parts) is a 400 naming `file`; the caller aborts whatever sink was opened."""

    def __init__(self, file_field: str, on_file: Callable[[str, dict[str, str]], Callable[[bytes], None]]) -> None:
        self.file_field, self.on_file = file_field, on_file
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self._name: str | None = None
        self._header_name = b""
        self._header_value = b""
        self._header_bytes = 0
        self._headers: dict[bytes, bytes] = {}
        self._value = bytearray()
        self._sink: Callable[[bytes], None] | None = None
        self._parts = 0
        self._ended = False
        self.error: BaseException | None = None

    async def parse(self, request: Request) -> None:
        ctype, opts = parse_options_header(request.headers.get("content-type", ""))
        if ctype != b"multipart/form-data" or not opts.get(b"boundary"):
            raise InvalidRequestError("Upload the file as multipart/form-data with fields 'file' and 'purpose'.",
                                      param="file")
        if len(opts[b"boundary"]) > MAX_BOUNDARY:
            raise _bad(f"The multipart boundary is longer than {MAX_BOUNDARY} characters.")
        parser = MultipartParser(opts[b"boundary"], callbacks={
            "on_part_begin": self._part_begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
            "on_header_end": self._hend, "on_headers_finished": self._headers_done, "on_part_data": self._data,
            "on_part_end": self._part_end, "on_end": self._end})
        async for chunk in request.stream():
            self._feed(parser, chunk)
        self._feed(parser, None)
        if not self._ended:
            raise _bad("The multipart body is incomplete: it has no closing boundary.")

    def _feed(self, parser: MultipartParser, chunk: bytes | None) -> None:
        try:
            parser.write(chunk) if chunk is not None else parser.finalize()
        except InvalidRequestError:
            raise
        except Exception as e:  # python-multipart's parse errors (and anything its callbacks hit)
            if self.error is None:
                self.error = _bad(f"The multipart body is malformed: {e}")
        if self.error is not None:
            raise self.error

    def _fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = e

    def _part_begin(self) -> None:
        self._headers, self._name, self._value, self._sink = {}, None, bytearray(), None
        self._header_bytes = 0
        self._parts += 1
        if self._parts > MAX_PARTS:
            self._fail(_bad(f"The form has more than {MAX_PARTS} parts."))

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            self._fail(_bad(f"A multipart part's headers are larger than {MAX_PART_HEADER_BYTES} bytes."))

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        if self.error is None:
            self._header_name += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        if self.error is None:
            self._header_value += data[start:end]

    def _hend(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_done(self) -> None:
        if self.error is not None:
            return
        try:
            for k, v in self._headers.items():
                _text(k, "part header name")
                _text(v, "part header")
            _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
            self._name = _text(opts.get(b"name", b""), "field name")
            if self._name != self.file_field:
                return
            if self._sink is not None or self.filename is not None:
                raise _bad("The form has more than one 'file' part; upload one file per request.")
            filename = _text(opts.get(b"filename", b"upload"), "file name")
            if len(filename) > MAX_FILENAME:
                raise _bad(f"The file name is longer than {MAX_FILENAME} characters.")
            self.filename = filename
            self._sink = self.on_file(self.filename, self.fields)
        except BaseException as e:
            self._fail(e)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        if self._sink is not None:
            try:
                self._sink(data[start:end])
            except BaseException as e:
                self._fail(e)
        else:
            self._value += data[start:end]
            if len(self._value) > MAX_FIELD_BYTES:
                self._fail(InvalidRequestError(f"Form field '{self._name}' is too long.", param=self._name))

    def _part_end(self) -> None:
        if self.error is None and self._name and self._sink is None:
            try:
                self.fields[self._name] = _text(bytes(self._value), f"field '{self._name}'", self._name)
            except BaseException as e:
                self._fail(e)

    def _end(self) -> None:
        self._ended = True
