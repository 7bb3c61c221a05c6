"""``python -m rxt_dist.model --summary PRESET``: parameter counts and STM shape of a preset."""

from __future__ import annotations

import argparse
import sys

from rxt_dist.model import build_model, describe, from_name, preset_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rxt_dist.model", description=__doc__)
    parser.add_argument("--summary", metavar="PRESET", required=True,
                        help=f"preset to describe: {', '.join(preset_names())}, or 'all'")
    args = parser.parse_args(argv)
    names = preset_names() if args.summary == "all" else [args.summary]
    try:
        for i, name in enumerate(names):
            cfg = from_name(name)
            print(("\n" if i else "") + describe(name, cfg, build_model(cfg)))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
