"""The HTTP protocol our server speaks: uvicorn's httptools one, with a bound on a request's head.

uvicorn's fast parser (httptools) keeps whatever a client sends before the end of a request's
headers: one connection sending megabytes of header costs the process megabytes of memory,
and each relayed request of a viewer goes through this server. Here a request whose head (its
request line and headers) is larger than MAX_HEAD_BYTES is answered 431 and its connection
closed, before the application sees it. (uvicorn's other parser, h11, refuses heads over
16 KiB itself, with a 400.)

The production command names it: `uvicorn ... --http launcher.httpserver:HttpToolsProtocol`.
This module imports no Django: uvicorn loads it before the application.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpToolsProtocol

# A viewer's requests carry a few cookies (one per launch path) and short DICOMweb URLs:
# 64 KiB is eight times what reverse proxies allow by default (nginx: 8 KiB a line).
MAX_HEAD_BYTES = 64 * 1024

_REFUSAL = b"Request header fields too large."


class HeadTooLarge(Exception):
    pass


class HttpToolsProtocol(_HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head over MAX_HEAD_BYTES with 431."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0
        self._head_too_large = False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # Still within a head after the whole of `data`: all of it was head (the parser keeps
        # an unfinished header's bytes itself, where the callbacks below cannot count them).
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._head_too_large = True
            self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        # A head that arrived whole in one read: counted from what the parser found.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise HeadTooLarge  # the parser stops; uvicorn answers through send_400_response
        self._in_head = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        self.logger.warning("A request's head over %d bytes was refused (431).", MAX_HEAD_BYTES)
        content = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(_REFUSAL)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                _REFUSAL,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()


__all__ = ["MAX_HEAD_BYTES", "HttpToolsProtocol"]
