"""The ``rxt`` command: ``rxt chat`` talks to a running server (see docs/serving.md)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"chat": "stream a conversation with a running server (rxt chat --help)"}
    if not argv or argv[0] not in commands:
        usage = "\n".join(f"  {name:<6} {text}" for name, text in commands.items())
        print(f"usage: rxt <command> [options]\n\ncommands:\n{usage}", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    from rxt_dist.serving.client import main as chat_main

    return chat_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
