"""Import a checkpoint of the reference implementation rxlm (RxTAlpha/RxTBeta, saved with
``save_pretrained``) as an rxt_dist model directory, servable and trainable here.

    python jobs/import_rxlm.py --src path/to/rxlm_model --out runs/imported/rxt-alpha
    python jobs/import_rxlm.py --src s3://bucket/rxlm/model --out s3://bucket/models/rxt-alpha

SRC holds config.json and model.safetensors (and tokenizer.json, converted when present); any
fsspec URL. Options rxt_dist cannot represent are refused by name. See docs/rxlm.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rxt_dist.model import describe, load_model_dir
from rxt_dist.model.rxlm_import import RXLM_VERSION, import_rxlm


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="rxlm save_pretrained directory (local or fsspec URL)")
    p.add_argument("--out", required=True, help="rxt_dist model directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a model directory already at --out")
    return p.parse_args(argv)


def _exists(url: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if _exists(args.out) and not args.overwrite:
            raise ValueError(f"{args.out} already exists: pass --overwrite to replace it")
        logging.getLogger("import_rxlm").info("importing %s (rxlm %s layout) → %s", args.src, RXLM_VERSION, args.out)
        result = import_rxlm(args.src, args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"import_rxlm: error: {exc}", file=sys.stderr)
        return 2
    moved = {i: rxlm for i, rxlm in enumerate(result.perm) if i != rxlm}
    print(describe(f"imported from {args.src}", result.config, load_model_dir(args.out)))
    print(json.dumps({"out": args.out, "tokenizer": result.tokenizer_json is not None,
                      "token_ids_moved": {str(k): v for k, v in moved.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
