"""StateX end to end: expand a trained model's STM, post-train it and the control arm with SMAT
on Ray Train, and compare memory capacity (recall by facts held and by distance).

    python jobs/statex.py --config configs/cpu-tiny.yaml --model runs/statex-base/models/smat \\
        --data runs/statex/data --factor 2 --reinit-layers 1 --steps 150

Four models are compared on the same probe conversations:
  original  the trained model as given (no post-training)
  control   the original, post-trained with SMAT (same data, steps and settings as the others)
  reinit    expanded (memory attention of --reinit-layers re-initialised), then post-trained
  inherit   expanded (every parameter kept, slot-indexed ones grown), then post-trained

Writes the expanded models under --work, the post-trained ones under <run.storage>/<--name>-<arm>,
and the report to --out (JSON) and --plot (PNG). Finished steps are skipped when run again (an
expanded model whose record matches, a post-training whose export exists). See docs/statex.md.
Runs with no cluster (starts a local Ray) or under ``ray job submit`` like jobs/train.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time

from rxt_dist.memory.capacity import (
    CapacityConfig,
    capacity_tables,
    check_compatible,
    evaluate_capacity_models,
    plot_capacity,
)
from rxt_dist.memory.statex import ExpansionConfig, config_summary, expand_stm, read_expansion

log = logging.getLogger("statex")

ARMS = ("control", "reinit", "inherit")
POST_TRAINING = ["stages.smat.unfreeze_memory_attention_at=0", "stages.smat.unfreeze_encoder_at=0",
                 "stages.smat.recall_pair_steps=0", "stages.smat.curriculum_turns=0",
                 "stages.smat.curriculum_steps=0", "stages.smat.start=previous"]
"""The post-training recipe every arm shares (``--set`` may override it): all components train
from the first step on whole conversations (no warm-up, no length curriculum), from the arm's
model (``init_model_url``), as in StateX's brief post-training."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training YAML: scaling, optimizer, data settings")
    p.add_argument("--model", required=True, help="trained RxT model directory (the original)")
    p.add_argument("--data", required=True, help="dataset for post-training (jobs/prepare_data.py --preset capacity)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--slots", type=int, help="new slot count S′")
    size.add_argument("--factor", type=float, help="S′ = round(S × factor)")
    p.add_argument("--reinit-layers", type=int, nargs="+", default=None,
                   help="layers the reinit arm re-initialises (default: all)")
    p.add_argument("--noise", type=float, default=0.02, help="noise on copied slot-indexed rows (relative)")
    p.add_argument("--seed", type=int, default=0, help="expansion seed")
    p.add_argument("--steps", type=int, required=True, help="SMAT post-training steps of every arm")
    p.add_argument("--lr", type=float, default=None, help="post-training peak LR (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="training config override for every arm (repeatable)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="post-trained arms to run")
    p.add_argument("--name", default="statex", help="run-name prefix of the post-training runs")
    p.add_argument("--work", default="runs/statex", help="folder for the expanded model directories")
    p.add_argument("--facts", type=int, nargs="+", default=list(CapacityConfig.facts))
    p.add_argument("--distances", type=int, nargs="+", default=list(CapacityConfig.distances))
    p.add_argument("--distance-facts", type=int, default=CapacityConfig.distance_facts)
    p.add_argument("--recalls", type=int, default=CapacityConfig.recalls)
    p.add_argument("--conversations", type=int, default=CapacityConfig.conversations, help="per sweep point")
    p.add_argument("--eval-seed", type=int, default=CapacityConfig.seed)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the evaluation")
    p.add_argument("--out", default="docs/bench/statex.json")
    p.add_argument("--plot", default="docs/bench/statex.png", help="PNG path ('' for none)")
    return p.parse_args(argv)


def expansion_configs(args: argparse.Namespace) -> dict[str, ExpansionConfig]:
    common = {"slots": args.slots, "factor": args.factor, "noise": args.noise, "seed": args.seed}
    return {"reinit": ExpansionConfig(mode="reinit", layers=args.reinit_layers, **common),
            "inherit": ExpansionConfig(mode="inherit", **common)}


def arm_overrides(args: argparse.Namespace, arm: str, init_url: str) -> list[str]:
    extra = [f"stages.smat.lr={args.lr}"] if args.lr is not None else []
    return [*POST_TRAINING, *extra, *args.set, f"run.name={args.name}-{arm}", f"data.url={args.data}",
            f"stages.smat.init_model_url={init_url}", f"stages.smat.steps={args.steps}"]


def expand(args: argparse.Namespace, mode: str, cfg: ExpansionConfig) -> dict:
    """The expanded model directory of ``mode``, written unless an identical one is there."""
    out = os.path.join(args.work, f"expanded-{mode}")
    if os.path.exists(os.path.join(out, "model.safetensors")):
        record = read_expansion(out) or {}
        wanted = expand_stm(args.model, cfg).record  # in memory only: what this run would write
        keys = ("mode", "slots_after", "layers_reinitialised", "noise", "seed", "source")
        if all(record.get(k) == wanted.get(k) for k in keys):
            log.info("%s: already expanded (%s)", out, mode)
            return {"url": out, "record": record, "reused": True}
        raise ValueError(f"{out} holds another expansion ({ {k: record.get(k) for k in keys} }); "
                         "delete it or choose another --work folder")
    result = expand_stm(args.model, cfg, out_url=out)
    return {"url": out, "record": result.record, "reused": False}


def post_train(args: argparse.Namespace, inits: dict[str, str]) -> dict[str, dict]:
    """SMAT post-training of each arm on Ray Train; returns per arm its export and timing."""
    from _ray import init_ray

    from rxt_dist.train import TrainConfig, prepare_job, run_stage

    cfgs = {arm: TrainConfig.from_file(args.config, arm_overrides(args, arm, inits[arm])) for arm in args.arms}
    for cfg in cfgs.values():
        prepare_job(cfg, "smat")  # data and init model checked before Ray starts
    init_ray()
    out = {}
    for arm, cfg in cfgs.items():
        start = time.perf_counter()
        result = run_stage(cfg, "smat", skip_complete=True)
        st = cfg.stage("smat")
        out[arm] = {"url": result.export_url, "init": inits[arm], "skipped": result.skipped,
                    "wall_s": None if result.skipped else time.perf_counter() - start,
                    "steps": st.steps, "batch_size": st.batch_size, "lr": st.lr or cfg.optimizer.lr,
                    "max_turns": cfg.data.max_turns, "workers": cfg.scaling.num_workers,
                    "zero_stage": cfg.deepspeed.zero_stage,
                    "final_metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}
        log.info("%s: post-trained → %s (%s)", arm, result.export_url,
                 "already complete" if result.skipped else f"{out[arm]['wall_s']:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from rxt_dist.data import TextCodec, load_tokenizer
    from rxt_dist.eval.report import machine_info, write_json_atomic
    from rxt_dist.model import load_model_dir

    try:
        expansions = expansion_configs(args)
        capacity = CapacityConfig(facts=tuple(args.facts), distances=tuple(args.distances),
                                  distance_facts=args.distance_facts, recalls=args.recalls,
                                  conversations=args.conversations, seed=args.eval_seed)
        codec = TextCodec(load_tokenizer(args.data))
        check_compatible(load_model_dir(args.model), args.model, codec)  # post-training reads these ids
        started = time.perf_counter()
        expanded = {mode: expand(args, mode, cfg) for mode, cfg in expansions.items()}
        inits = {"control": args.model, **{m: e["url"] for m, e in expanded.items()}}
        trained = post_train(args, inits)
        train_s = time.perf_counter() - started
    except (ValueError, FileNotFoundError) as exc:
        print(f"statex: error: {exc}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    eval_start = time.perf_counter()
    models = {"original": args.model, **{arm: t["url"] for arm, t in trained.items()}}
    report = evaluate_capacity_models(models, codec, capacity, progress=True)
    report.update({
        "evaluation": "statex",
        "command": shlex.join(["python", "jobs/statex.py", *argv]),
        "machine": machine_info(),
        "expansion": {mode: {"config": config_summary(expansions[mode]), **e} for mode, e in expanded.items()},
        "post_training": trained,
        "timings_s": {"expand_and_post_train": train_s, "evaluate": time.perf_counter() - eval_start},
    })
    write_json_atomic(args.out, report)
    if args.plot:
        plot_capacity(report, args.plot)
    print(capacity_tables(report))
    print(json.dumps(report["timings_s"]))
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
