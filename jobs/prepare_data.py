"""Write the dialogue dataset: synthetic conversations (+ imports, + extra text), a BPE tokenizer,
Parquet shards and manifest.json under --out (any fsspec URL).

    python jobs/prepare_data.py --out data/dialogue --conversations 20000 --seed 0

See docs/data.md for the corpus, the shard schema and every option.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from rxt_dist.data import DialogueImportError, PrepareConfig, SyntheticConfig, prepare_dataset

_SYNTH_FLAGS = {"min_turns": int, "max_turns": int, "p_fact": float, "p_update": float, "p_filler": float,
                "p_recall": float, "min_recalls": int, "values_per_attribute": int, "owners": int,
                "value_space": str, "heldout_value_share": float, "seen_value_share": float}  # fmt: skip


def parse_args(argv: list[str]) -> PrepareConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset folder URL (local path, s3://…, gs://…)")
    p.add_argument("--conversations", type=int, default=20_000, help="synthetic conversations, all splits")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--preset", default="default", help="generator preset: default | capacity | debug")
    d = SyntheticConfig()
    for name, kind in _SYNTH_FLAGS.items():
        flag = f"--{name.replace('_', '-')}"
        p.add_argument(flag, type=kind, default=None, help=f"generator {name} (preset's; default {getattr(d, name)})")
    p.add_argument("--attributes", nargs="+", default=None, help=f"fact attributes (default {' '.join(d.attributes)})")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size to train")
    p.add_argument("--tokenizer", default=None, help="reuse this tokenizer.json (or a folder holding one)")
    p.add_argument("--valid-fraction", type=float, default=0.05)
    p.add_argument("--test-fraction", type=float, default=0.05)
    p.add_argument("--shard-rows", type=int, default=2048, help="conversations per Parquet shard")
    p.add_argument("--extra-text", nargs="+", default=(), metavar="PATH", help="plain-text files for stage-1 text")
    p.add_argument("--import-jsonl", nargs="+", default=(), metavar="PATH", help="JSONL dialogue files")
    p.add_argument("--import-yaml", nargs="+", default=(), metavar="PATH", help="chatbot-corpus YAML files")
    p.add_argument("--strict", action="store_true", help="stop at an imported file's first bad record, not skip it")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already at --out")
    a = p.parse_args(argv)
    overrides = {k: getattr(a, k) for k in _SYNTH_FLAGS if getattr(a, k) is not None}
    if a.attributes:
        overrides["attributes"] = tuple(a.attributes)
    synthetic = SyntheticConfig.from_name(a.preset, seed=a.seed, **overrides)
    return PrepareConfig(
        out=a.out,
        conversations=a.conversations,
        synthetic=synthetic,
        vocab_size=a.vocab_size,
        valid_fraction=a.valid_fraction,
        test_fraction=a.test_fraction,
        shard_rows=a.shard_rows,
        extra_text=tuple(a.extra_text),
        import_jsonl=tuple(a.import_jsonl),
        import_yaml=tuple(a.import_yaml),
        strict=a.strict,
        tokenizer=a.tokenizer,
        overwrite=a.overwrite,
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        raise SystemExit(f"prepare_data: {e}") from None
    start = time.perf_counter()
    current = [""]
    # A bar redraws itself with carriage returns: in a file or a pipe (Ray job logs, `| tee`) every
    # redraw and the log lines written around it end up on one line. Draw it on a terminal only;
    # elsewhere the stage log lines are the progress report.
    with logging_redirect_tqdm(), tqdm(unit="row", disable=not sys.stderr.isatty()) as bar:

        def progress(stage: str, n: int, total: int) -> None:
            if stage != current[0]:  # a new stage: restart the bar at its own total
                current[0] = stage
                bar.set_description(stage, refresh=False)
                bar.reset(total=total)
            bar.update(n)

        try:
            manifest = prepare_dataset(cfg, progress)
        except DialogueImportError as e:  # it names the file and line: a traceback adds nothing
            raise SystemExit(f"prepare_data: {e}") from None
    print(
        f"wrote {cfg.out} in {time.perf_counter() - start:.1f}s: {manifest.counts} conversations, "
        f"vocab {manifest.vocab_size}"
    )


if __name__ == "__main__":
    main()
