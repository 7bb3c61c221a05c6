"""The HTTP response of a streamed answer: server-sent events, the last of them sent together
with the end of the body."""

from starlette.responses import StreamingResponse
from starlette.types import Send


class LastEvents(str):
    """The last events of a stream (an answer's finish chunk, usage and ``[DONE]``): an
    :class:`EventStream` sends them with the end of the body, in one write."""


class EventStream(StreamingResponse):
    """``text/event-stream`` from an async iterator of events (``str``).

    Starlette's streaming response sends every piece, then an empty end of the body: with
    chunked encoding its terminator is a write of its own, which the server, the proxy and the
    client each handle. Here a piece that is :class:`LastEvents` carries the end of the body
    (one write), and the iterator is then closed: its cleanup runs before the response
    returns."""

    media_type = "text/event-stream"

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        iterator = aiter(self.body_iterator)
        ended = False
        try:
            async for piece in iterator:
                ended = isinstance(piece, LastEvents)
                await send({"type": "http.response.body", "body": piece.encode(self.charset), "more_body": not ended})
                if ended:
                    break
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
