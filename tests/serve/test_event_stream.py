import asyncio

import pytest

from rxt_dist.serving.event_stream import EventStream, LastEvents


async def _respond(pieces, spec_version: str):
    """Run an ``EventStream`` of ``pieces`` as a server would (uvicorn answers ``receive`` with a
    disconnect once the response is complete); the messages sent, and whether the iterator's
    cleanup had run when the response returned."""
    sent, complete, cleaned = [], asyncio.Event(), []

    async def events():
        try:
            for piece in pieces:
                yield piece
        finally:
            cleaned.append(True)

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            complete.set()

    async def receive():
        await complete.wait()
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"spec_version": spec_version}}
    await EventStream(events())(scope, receive, send)
    return sent, bool(cleaned)


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_the_last_events_carry_the_end_of_the_body(spec_version):
    sent, cleaned = asyncio.run(_respond(["data: a\n\n", "data: b\n\n", LastEvents("data: [DONE]\n\n")], spec_version))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [
        (b"data: a\n\n", True), (b"data: b\n\n", True), (b"data: [DONE]\n\n", False)]
    assert cleaned  # the stream's own cleanup ran before the response returned


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_a_stream_without_last_events_ends_with_an_empty_body(spec_version):
    sent, cleaned = asyncio.run(_respond(["data: a\n\n"], spec_version))
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [(b"data: a\n\n", True), (b"", False)]
    assert cleaned
