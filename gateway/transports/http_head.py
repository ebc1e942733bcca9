"""A bound on HTTP request heads. httptools (uvicorn's fast parser) buffers a head of any size;
this protocol counts the bytes received while a head is incomplete and answers 431 past the limit.
"""

from __future__ import annotations

import asyncio
from typing import Any

HEAD_TOO_LARGE = b"request head too large\n"


def bounded_http_protocol(max_head_bytes: int) -> type[asyncio.Protocol] | str:
    """uvicorn's ``http=`` value: httptools with a head bound, or h11 (bounded by its own limit)."""
    try:
        from gateway.transports.server import AbortableHttpProtocol
    except ImportError:  # httptools missing: h11 takes h11_max_incomplete_event_size
        return "h11"

    class BoundedHttpToolsProtocol(AbortableHttpProtocol):
        """HttpToolsProtocol refusing request heads larger than ``max_head_bytes`` (plus one read)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0
            self._refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_head:
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    self._refused = True
                    self.transport.write(
                        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
                        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(HEAD_TOO_LARGE), HEAD_TOO_LARGE)
                    )
                    self.transport.close()
                    return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True

    return BoundedHttpToolsProtocol
