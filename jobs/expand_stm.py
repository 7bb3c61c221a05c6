"""StateX: grow the Short-Term Memory of a trained RxT model into a new model directory.

    python jobs/expand_stm.py runs/tiny/models/smat runs/statex/expanded --factor 2
    python jobs/expand_stm.py SRC OUT --slots 48 --mode reinit --layers 1 --noise 0.02
    python jobs/expand_stm.py SRC OUT --factor 2 --mode inherit

Modes: reinit (default; re-initialise the memory attention and gate of --layers, all when
omitted) and inherit (keep every parameter, grow only the slot-indexed ones). The decoder,
encoder and embeddings are always inherited. See docs/statex.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rxt_dist.memory.statex import EXPANSION_MODES, ExpansionConfig, expand_stm


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, ExpansionConfig]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="trained RxT model directory (any fsspec URL)")
    p.add_argument("out", help="new model directory to write")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--slots", type=int, help="new slot count S′ per layer")
    size.add_argument("--factor", type=float, help="S′ = round(S × factor), > 1")
    p.add_argument("--mode", choices=EXPANSION_MODES, default="reinit")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="reinit only: layers whose memory attention is re-initialised (default: all)")
    p.add_argument("--noise", type=float, default=0.02,
                   help="noise on copied slot-indexed rows, relative to the parameter's RMS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a model directory already at OUT")
    args = p.parse_args(argv)
    cfg = ExpansionConfig(slots=args.slots, factor=args.factor, mode=args.mode, layers=args.layers,
                          noise=args.noise, seed=args.seed)
    return args, cfg


def _exists(url: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args, cfg = parse_args(sys.argv[1:] if argv is None else argv)
        if _exists(args.out) and not args.overwrite:
            raise ValueError(f"{args.out} already exists: pass --overwrite to replace it")
        result = expand_stm(args.source, cfg, out_url=args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"expand_stm: error: {exc}", file=sys.stderr)
        return 2
    record = {k: v for k, v in result.record.items() if k != "reinitialised_tensors"}
    record["reinitialised_tensors"] = len(result.record["reinitialised_tensors"])
    print(json.dumps({"out": args.out, **record}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
