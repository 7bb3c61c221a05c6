"""A terminal chat client for the serving app (``rxt chat`` / ``python -m serve.chat``).

Streams each answer as it is generated and keeps the conversation's ``x-session-id``, so
every line typed is one turn of the same stateful conversation. Standard library only.
Commands: ``/new`` starts a new conversation, ``/session`` shows the current one, ``/quit``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import TextIO

from rxt_dist.serving.protocol import SESSION_HEADER


class ChatError(Exception):
    """The server refused a request (its error message) or could not be reached."""


class ChatClient:
    """Talks to one server: lists its model, streams answers, remembers the session."""

    def __init__(self, url: str, api_key: str | None = None, session_id: str | None = None,
                 timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.session_id = session_id
        self.timeout_s = timeout_s
        self._model: str | None = None

    def _request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("content-type", "application/json")
        if self.api_key:
            req.add_header("authorization", f"Bearer {self.api_key}")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            raise ChatError(_error_message(exc)) from None
        except urllib.error.URLError as exc:
            raise ChatError(f"cannot reach {self.url}: {exc.reason}") from None

    def model(self) -> str:
        """The id of the model the server serves (asked once)."""
        if self._model is None:
            with self._request("GET", "/v1/models") as resp:
                self._model = json.load(resp)["data"][0]["id"]
        return self._model

    def session(self) -> dict | None:
        """The current session's record (turns, memory version), or None before the first turn."""
        if self.session_id is None:
            return None
        with self._request("GET", f"/v1/sessions/{self.session_id}") as resp:
            return json.load(resp)

    def stream(self, text: str, max_tokens: int | None = None, temperature: float | None = None) -> Iterator[str]:
        """Send one user message as the next turn and yield the answer's text as it streams."""
        body: dict = {"model": self.model(), "stream": True, "messages": [{"role": "user", "content": text}]}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        headers = {SESSION_HEADER: self.session_id} if self.session_id else {}
        with self._request("POST", "/v1/chat/completions", body, headers) as resp:
            self.session_id = resp.headers.get(SESSION_HEADER, self.session_id)
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise ChatError(event["error"]["message"])
                for choice in event.get("choices", []):
                    content = choice.get("delta", {}).get("content")
                    if content:
                        yield content


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        return f"{exc.code}: {json.load(exc)['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{exc.code}: {exc.reason}"


def repl(client: ChatClient, stdin: TextIO, stdout: TextIO, max_tokens: int | None = None,
         temperature: float | None = None) -> None:
    """Read lines from ``stdin``; each is one turn, answered on ``stdout`` as it streams."""
    interactive = stdin.isatty()
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/quit":
            return
        text = line.strip()
        if not text:
            continue
        try:
            if text == "/new":
                client.session_id = None
                stdout.write("(new conversation)\n")
            elif text == "/session":
                stdout.write(f"{json.dumps(client.session())}\n")
            else:
                stdout.write("rxt> ")
                for piece in client.stream(text, max_tokens, temperature):
                    stdout.write(piece)
                    stdout.flush()
                stdout.write(f"\n[session {client.session_id}]\n" if not interactive else "\n")
        except ChatError as exc:
            stdout.write(f"\nerror: {exc}\n")
        stdout.flush()


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rxt chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("RXT_URL", "http://127.0.0.1:8000"),
                        help="server address (env RXT_URL; default %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("RXT_API_KEY"),
                        help="bearer key if the server requires one (env RXT_API_KEY)")
    parser.add_argument("--session", default=None, help="continue this session id")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    args = parser.parse_args(argv)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    client = ChatClient(args.url, args.api_key, args.session)
    try:
        model = client.model()
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if stdin.isatty():
        stdout.write(f"chatting with {model} at {args.url} — /new, /session, /quit\n")
    repl(client, stdin, stdout, args.max_tokens, args.temperature)
    return 0
