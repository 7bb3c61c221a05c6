"""The fuzzer's client against a plain HTTP server that closes some connections without an
answer: a request whose connection closed so is sent once more (a proxy reloading under the
fuzz closes idle keep-alive connections), and one dropped twice is a finding with its request."""

import asyncio
import json

import httpx

from rxt_dist.chaos.fuzz import BadRequest, FuzzResult, _send

ERROR = json.dumps({"error": {"message": "bad", "type": "invalid_request_error", "param": None,
                              "code": None}}).encode()


async def _serve(drop: int):
    """A server answering 400 in OpenAI's error shape, after closing the connections of its
    first ``drop`` requests without a byte of answer."""
    seen = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:  # the client closed its connection
                writer.close()
                return
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            seen += 1
            if seen <= drop:
                writer.close()
                return
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(ERROR), ERROR))
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _fuzz(drop: int, requests: int) -> FuzzResult:
    server, url = await _serve(drop)
    result = FuzzResult()
    async with server, httpx.AsyncClient(base_url=url, trust_env=False) as http:
        for _ in range(requests):
            await _send(http, BadRequest("malformed_json", "POST", "/v1/chat/completions", {}, b"{"), result)
    return result


def test_a_request_whose_connection_closed_without_an_answer_is_sent_again_once():
    result = asyncio.run(_fuzz(drop=1, requests=3))
    assert (result.resent, dict(result.by_status), dict(result.transport_errors)) == (1, {400: 3}, {})
    assert not result.cases() and result.by_kind["malformed_json"] == 3


def test_a_request_dropped_twice_is_a_transport_error_naming_the_request():
    result = asyncio.run(_fuzz(drop=2, requests=2))
    assert (result.resent, dict(result.by_status), dict(result.transport_errors)) == (
        1, {400: 1}, {"RemoteProtocolError": 1})
    assert result.cases() == result.dropped and len(result.dropped) == 1
    assert "(twice) ← malformed_json: POST /v1/chat/completions" in result.dropped[0]
    assert not result.ok
