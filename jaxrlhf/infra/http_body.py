"""Reading a request body under a size limit, shared by the two web servers (`rm.serving`, `feedback.app`)."""

from __future__ import annotations

import json


class HttpError(Exception):
    """An answer to a request that failed: its HTTP status and one line for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


async def read_body(request, max_bytes: int) -> bytes:
    """The body, or 413 when it is over `max_bytes`: checked against Content-Length before reading (a
    client that declares a huge body is refused unread) and again while reading (one that lies)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HttpError(413, f"request body of {declared} bytes is over the limit of {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise HttpError(413, f"request body is over the limit of {max_bytes} bytes")
    return bytes(body)


async def read_json_object(request, max_bytes: int) -> dict:
    body = await read_body(request, max_bytes)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise HttpError(400, f"body is not valid JSON: {first_line(e)}") from None
    if not isinstance(data, dict):
        raise HttpError(400, f"body must be a JSON object, got {type(data).__name__}")
    return data
