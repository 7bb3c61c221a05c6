"""Learning curves of the memory: train in one process for a wall-clock budget, measure recall.

    python jobs/memory_study.py --data runs/data --config configs/cpu-tiny.yaml --name smat-only \\
        --plan smat --minutes 8 --out docs/bench/study/smat-only.json
    python jobs/memory_study.py --plot docs/bench/study/*.json --out docs/bench/study/curves.png
    python jobs/memory_study.py --data runs/data --probe a=DIR b=DIR --out docs/bench/study/probe.json

Each arm of a study is one run of this command: a fresh model (``--model-set`` overrides its
preset) or ``--init`` a model directory, trained stage after stage as ``--plan`` says
(``joint_lm:80,sft:80,memory_attention:40,smat`` = 80/80/40 steps then stage 4 for the rest of
the budget) with the plain single-process loop (:mod:`rxt_dist.train.plain`: the same objectives,
batches and optimizer as the Ray Train workers). Every ``--eval-every`` seconds of training the
model answers ``--eval-conversations`` held-out conversations of the ``valid`` split (evaluation
time is not counted in the budget). The JSON holds the curve: recall (exact match, own answers
and gold-consolidated), memory health, loss, tokens and tokens/s against training minutes.

``--probe NAME=DIR …`` only measures saved models (``--save``) on the facts-held probe in the
corpus's own phrasing: f = 1…6 facts stated one per turn, then three of them asked back, and 5
facts asked back 1, 3 and 5 turns later; values never seen in training; ``--probe-conversations``
per point (up to three recall turns each).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

log = logging.getLogger("memory_study")


def parse_plan(text: str) -> list[tuple[str, int | None]]:
    """``"joint_lm:80,sft:80,smat"`` → [("joint_lm", 80), ("sft", 80), ("smat", None)]; the
    last stage without a step count runs for the rest of the budget."""
    out = []
    for part in text.split(","):
        name, _, steps = part.partition(":")
        out.append((name.strip(), int(steps) if steps else None))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data")
    p.add_argument("--config", default="configs/cpu-tiny.yaml")
    p.add_argument("--name", help="arm name (recorded in the JSON)")
    p.add_argument("--plan", default="smat", help="stage:steps,…; the last stage may omit steps")
    p.add_argument("--minutes", type=float, default=8.0, help="training budget (all stages)")
    p.add_argument("--init", default=None, help="start from this model directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training config override")
    p.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override of a fresh model, e.g. memory_attention.slot_ids=true")
    p.add_argument("--eval-every", type=float, default=60.0, help="seconds of training between evaluations")
    p.add_argument("--eval-conversations", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=None,
                   help="read the training rows in the order this many Ray Train workers read them "
                        "(replays a distributed run's data order; default: a whole shuffle per epoch)")
    p.add_argument("--save", default=None, help="write the final model directory here")
    p.add_argument("--out", required=True)
    p.add_argument("--plot", nargs="+", metavar="JSON", help="only plot these study files' curves into --out (a .png)")
    p.add_argument("--probe", nargs="+", action="extend", metavar="NAME=DIR", help="only run the facts-held probe on these models")
    p.add_argument("--probe-conversations", type=int, default=100, help="probe conversations per point")
    args = p.parse_args(argv)
    if args.plot:
        from rxt_dist.eval.plots import plot_learning_curves

        studies = []
        for path in args.plot:
            with open(path) as f:
                studies.append(json.load(f))
        print(f"wrote {plot_learning_curves(studies, args.out)}")
        return 0
    if args.probe:
        if not args.data:
            p.error("--probe needs --data (the corpus whose tokenizer the models read)")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        return probe(args, p, argv if argv is not None else sys.argv[1:])
    if not (args.data and args.name):
        p.error("--data and --name are required (unless --plot or --probe)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from rxt_dist.data import TextCodec, load_tokenizer, read_manifest
    from rxt_dist.eval.quality import QualityConfig, evaluate_conversations, load_conversations
    from rxt_dist.eval.report import machine_info, write_json_atomic
    from rxt_dist.model import build_model, config_from_dict, load_model_dir, save_model_dir
    from rxt_dist.train.config import TrainConfig, apply_override
    from rxt_dist.train.launcher import _model_config
    from rxt_dist.train.plain import PlainLoop, read_rows

    torch.set_num_threads(args.threads)
    overrides = list(args.set) + [f"data.url={args.data}"]
    cfg = TrainConfig.from_file(args.config, overrides)
    manifest = read_manifest(args.data)
    if args.init:
        model = load_model_dir(args.init)
    else:
        data = _model_config(cfg, "joint_lm", manifest.vocab_size)
        for item in args.model_set:
            apply_override(data, item)
        torch.manual_seed(cfg.run.seed)
        model = build_model(config_from_dict(data))
    codec = TextCodec(load_tokenizer(args.data))
    held_out = load_conversations(args.data, "valid", args.eval_conversations)
    rows = read_rows(args.data, "train")
    plan = parse_plan(args.plan)
    budget = args.minutes * 60
    curve: list[dict] = []
    spent = 0.0
    next_eval = [args.eval_every]

    def evaluate(stage: str, step: int, metrics: dict) -> None:
        started = time.perf_counter()
        model.eval()
        point = {"minutes": spent_now(metrics) / 60, "stage": stage, "step": step,
                 "tokens": metrics.get("tokens"), "loss": metrics.get("loss"),
                 "tokens_per_s": metrics.get("tokens_per_s")}
        qcfg = QualityConfig(batch_size=50, systems=("rxt", "rxt_gold"))
        systems = evaluate_conversations(held_out, codec, rxt=model, cfg=qcfg)
        for name, s in systems.items():
            summary = s.recall_summary(0)
            full = s.to_dict(0)
            point[name] = {"exact_match": summary["exact_match"], "value_accuracy": summary["value_accuracy"],
                           "seen": full["recall_seen"]["exact_match"], "echo": full.get("echo"),
                           "by_distance": {k: v["exact_match"] for k, v in summary["by_distance"].items()},
                           "ppl": s.overall.to_dict()["perplexity"], "memory": s.memory.to_dict()}
        point["eval_s"] = time.perf_counter() - started
        curve.append(point)
        log.info("%s %.1f min %s step %d: recall %.1f%% (gold-consolidated %.1f%%), echo %s, slot cos %s",
                 args.name, point["minutes"], stage, step, 100 * (point["rxt"]["exact_match"] or 0),
                 100 * (point["rxt_gold"]["exact_match"] or 0), point["rxt"]["echo"],
                 [round(c, 2) for c in point["rxt"]["memory"]["slot_cosine"]])
        model.train()

    def spent_now(metrics: dict) -> float:
        return spent + metrics.get("train_s", 0.0)

    for i, (stage, steps) in enumerate(plan):
        loop = PlainLoop(cfg, stage, model, rows, workers=args.workers)
        last = i == len(plan) - 1

        def on_window(step: int, metrics: dict, stage=stage) -> bool:
            log.info("%s [%s] step %d loss %.3f %.0f tok/s (%.1f min)", args.name, stage, step,
                     metrics["loss"], metrics["tokens_per_s"], spent_now(metrics) / 60)
            if stage == "smat" and spent_now(metrics) >= next_eval[0]:
                evaluate(stage, step, metrics)
                next_eval[0] += args.eval_every
            return spent_now(metrics) >= budget

        loop.run(steps=steps if steps is not None else 10**9, seconds=budget - spent, every=10,
                 on_window=on_window)
        spent += loop.train_seconds
        if last or spent >= budget:
            if not curve or (curve[-1]["stage"], curve[-1]["step"]) != (stage, loop.step):
                evaluate(stage, loop.step, {"train_s": 0.0, "tokens": loop.tokens})  # unless just done
            break
    report = {"study": "memory", "arm": args.name, "plan": args.plan, "minutes": args.minutes,
              "command": "python jobs/memory_study.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": model.cfg.to_dict(), "train_config": cfg.to_dict(), "machine": machine_info(),
              "threads": args.threads, "curve": curve}
    write_json_atomic(args.out, report)
    if args.save:
        save_model_dir(model, args.save, json.dumps(json.loads(load_tokenizer(args.data).to_str())))
    final = curve[-1]
    print(f"{args.name}: recall {100 * (final['rxt']['exact_match'] or 0):.1f}% own answers, "
          f"{100 * (final['rxt_gold']['exact_match'] or 0):.1f}% gold-consolidated after {final['minutes']:.1f} min")
    return 0


def probe(args: argparse.Namespace, p: argparse.ArgumentParser, argv: list[str]) -> int:
    """The facts-held probe (see the module's doc) on each NAME=DIR model; JSON to ``--out``."""
    models = {}
    for item in args.probe:
        name, sep, path = item.partition("=")
        if not (sep and name and path):
            p.error(f"--probe {item!r}: expected NAME=DIR")
        models[name] = path
    import torch

    from rxt_dist.data import TextCodec, load_tokenizer
    from rxt_dist.eval.report import machine_info, write_json_atomic
    from rxt_dist.memory.capacity import CapacityConfig, capacity_tables, evaluate_capacity_models

    torch.set_num_threads(args.threads)
    cfg = CapacityConfig(facts=(1, 2, 3, 4, 5, 6), recalls=3, distances=(1, 3, 5), distance_facts=5,
                         conversations=args.probe_conversations, corpus_preset="default", seed=1)
    report = evaluate_capacity_models(models, TextCodec(load_tokenizer(args.data)), cfg)
    report.update(command="python jobs/memory_study.py " + " ".join(argv), machine=machine_info())
    write_json_atomic(args.out, report)
    print(capacity_tables(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
