"""The main job (``make demo``): data → four-stage curriculum + stateless baseline → evaluation.

    python jobs/demo.py                       # configs/cpu-tiny.yaml on a local Ray
    python jobs/demo.py --config configs/cpu-debug.yaml --conversations 2000   # a quick smoke run

1. writes the synthetic dialogue dataset (skipped when it exists),
2. trains stages 1 → 4 of RxT and the stateless baseline on Ray Train with DeepSpeed ZeRO
   (stages already exported are skipped; an interrupted stage resumes from its checkpoint),
3. evaluates on held-out conversations: recall of facts stated in earlier turns for RxT,
   the baseline reading the full history, and the baseline reading only the current query,
4. holds a short conversation with the trained model, streaming its answers and updating
   its memory after each turn.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _ray import ray_session, report_failure, setup_logging


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/cpu-tiny.yaml", help="training YAML")
    p.add_argument("--conversations", type=int, default=24_000, help="synthetic conversations to generate")
    p.add_argument("--eval-conversations", type=int, default=1000, help="held-out conversations to evaluate")
    p.add_argument("--fresh", action="store_true", help="delete this run's models and checkpoints first")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--verbose", action="store_true",
                   help="Ray's own output (workers' logs, warnings) on the terminal instead of the run's ray.log")
    return p.parse_args(argv)


def prepare_data(url: str, conversations: int) -> None:
    from rxt_dist.data import PrepareConfig, SyntheticConfig, prepare_dataset, read_manifest

    try:
        manifest = read_manifest(url)
        print(f"data: reusing {url} ({manifest.counts})")
        return
    except FileNotFoundError:
        pass
    started = time.perf_counter()
    cfg = PrepareConfig(out=url, conversations=conversations, synthetic=SyntheticConfig(seed=0))
    manifest = prepare_dataset(cfg)
    print(f"data: wrote {url} in {time.perf_counter() - started:.0f}s: {manifest.counts} conversations, "
          f"vocabulary {manifest.vocab_size}")


def train(cfg, progress: bool) -> list[tuple]:
    """RxT's four stages, then the baseline with the same training time as the four together;
    ``progress``: each stage's progress on the terminal (see ``run_stage``)."""
    from rxt_dist.train import run_stage, rxt_stages

    rows = []
    stages = rxt_stages(cfg)
    if stages == ("smat",):
        print("RxT: stage 4 (supervised memory-aware training) end to end from a fresh model "
              "(stages.smat.start: fresh) — on this machine it learns recall far faster than after "
              "stages 1–3, which are not run (docs/memory.md; set stages.smat.start=previous for the "
              "four-stage curriculum)")
    for stage in stages:
        started = time.perf_counter()
        result = run_stage(cfg, stage, skip_complete=True, progress=progress)
        rows.append((result, time.perf_counter() - started))
    budget = sum(stage_train_seconds(cfg, stage) for stage in stages)
    cfg.stages.baseline.time_budget_s = budget
    print(f"baseline: the same training time as RxT's stages together, {budget:.0f}s")
    started = time.perf_counter()
    rows.append((run_stage(cfg, "baseline", skip_complete=True, progress=progress), time.perf_counter() - started))
    return rows


def stage_train_seconds(cfg, stage: str) -> float:
    """Training time of a finished stage, from its exported model's metadata."""
    from rxt_dist.memory import read_metadata
    from rxt_dist.train import export_url

    return float(read_metadata(export_url(cfg, stage)).get("train_s", 0.0))


def print_training(rows) -> None:
    print("\nTraining (2 workers × DeepSpeed ZeRO on Ray Train)")
    print(f"{'stage':18} {'steps':>6} {'loss':>8} {'ppl':>8} {'tok acc':>8} {'time':>7}")
    for result, seconds in rows:
        m = result.metrics
        if result.skipped:
            print(f"{result.stage:18} {'(already trained: ' + result.export_url + ')'}")
            continue
        ppl = f"{m['ppl']:8.2f}" if "ppl" in m else f"{'—':>8}"
        acc = f"{100 * m['acc']:7.1f}%" if "acc" in m else f"{'—':>8}"
        print(f"{result.stage:18} {m.get('step', 0):6d} {m.get('loss', float('nan')):8.3f} {ppl} {acc} "
              f"{seconds:6.0f}s")


def evaluate(cfg, conversations: int):
    from rxt_dist.eval.quality import QualityConfig, evaluate_models
    from rxt_dist.train import export_url

    # Two processes of one thread: this model is too small for two threads to share a matmul well.
    qcfg = QualityConfig(max_conversations=conversations, threads=2, workers=2, batch_size=32)
    # A bar only on a terminal: in a pipe or a file its redraws pile up on one line.
    return evaluate_models(cfg.data.url, export_url(cfg, "smat"), export_url(cfg, "baseline"), qcfg,
                           progress=sys.stderr.isatty(), command="jobs/demo.py")


def print_headline(report) -> None:
    s = report.systems
    unseen = {k: v.recall_summary(0)["exact_match"] for k, v in s.items()}
    seen = {k: v.recall_summary(0, seen=True)["exact_match"] for k, v in s.items()}
    pct = lambda x: "    —" if x is None else f"{100 * x:5.1f}%"  # noqa: E731
    print("\nRecall of facts stated earlier in the conversation (held-out conversations, exact match)")
    print(f"{'':62} {'new values':>10} {'seen values':>12}")
    for key, label in (("rxt", "RxT, memory of its own answers (what a user gets)"),
                       ("rxt_gold", "RxT, memory of the gold answers"),
                       ("stateless_full", "stateless baseline, full history (same training time)"),
                       ("stateless_none", "stateless baseline, no history (the floor)")):
        if key in s:
            print(f"  {label:60} {pct(unseen[key]):>10} {pct(seen[key]):>12}")
    print("  (new values: never in the training data, as a user's own facts; RxT reads only the "
          "current query and its fixed-size memory)")


def held_out_values(data_url: str) -> tuple[str, str]:
    """A pet name and a lucky number from the held-out pools: values the training data never
    holds, as a user's own facts are."""
    import itertools

    from rxt_dist.data import in_open_space, is_heldout, read_manifest
    from rxt_dist.data.value_space import SYLLABLES

    share = float((read_manifest(data_url).generator or {}).get("heldout_value_share", 0.2))
    words = ("".join(p) for p in itertools.product(SYLLABLES[20:], SYLLABLES[7:], ("", "s")))
    pet = next(w for w in words if in_open_space("pet", w) and is_heldout("pet", w, share))
    number = next(str(n) for n in itertools.count(417) if in_open_space("number", str(n))
                  and is_heldout("number", str(n), share))
    return pet, number


def converse(cfg) -> None:
    """A short live conversation: streamed answers, memory consolidated after each turn."""
    import torch

    from rxt_dist.data import TextCodec
    from rxt_dist.inference import SamplingParams, consolidate, respond
    from rxt_dist.model import load_model_dir
    from rxt_dist.serving.text import Detokenizer
    from rxt_dist.train import export_url

    model_dir = export_url(cfg, "smat")
    model = load_model_dir(model_dir).eval()
    codec = TextCodec.load(cfg.data.url)
    stm = model.initial_stm(1, torch.Generator().manual_seed(0))
    pet, number = held_out_values(cfg.data.url)
    turns = [f"my pet is called {pet} .", f"by the way , my lucky number is {number} .", "hello !",
             "what is my pet called ?", "do you remember my lucky number ?"]
    print(f"\nA conversation with {model_dir} (memory: {tuple(stm.shape)} = layers × conversations × "
          "slots × dim, the same size at every turn):")
    for version, text in enumerate(turns):
        q = codec.encode(text)
        print(f"  user> {text}\n  rxt > ", end="", flush=True)
        answer: list[int] = []
        detok = Detokenizer(codec.tokenizer)
        for step in respond(model, [q], stm, SamplingParams(max_new_tokens=24)):
            if step[0] is not None:
                answer.append(step[0])
                print(detok.push(step[0]), end="", flush=True)
        print(detok.flush(), end="")
        with torch.no_grad():
            stm = consolidate(model, stm, [q], [answer])
        print(f"    [memory updated → version {version + 1}]")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    started = time.perf_counter()
    from rxt_dist.train import StageFailed, TrainConfig
    from rxt_dist.train.launcher import log_dir, run_root

    try:
        cfg = TrainConfig.from_file(args.config, args.set)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.fresh and os.path.isdir(run_root(cfg)):
        import shutil

        shutil.rmtree(run_root(cfg))
    prepare_data(cfg.data.url, args.conversations)
    with ray_session(log_dir(cfg), args.verbose) as ray_log:  # Ray only while training: evaluation needs none
        try:
            rows = train(cfg, progress=not args.verbose)
        except StageFailed as exc:
            return report_failure(exc, ray_log)
        except ValueError as exc:  # e.g. a stage already trained with other settings
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print_training(rows)
    report = evaluate(cfg, args.eval_conversations)
    print("\n" + report.summary_table())
    print_headline(report)
    converse(cfg)
    from serve.ray_env import HIGH_THROUGHPUT

    serve_env = " ".join(f"{name}={value}" for name, value in HIGH_THROUGHPUT.items())
    print(f"\nDone in {(time.perf_counter() - started) / 60:.1f} min. Serve the trained model with:\n"
          f"  {serve_env} \\\n    .venv/bin/serve run serve.app:build_app model_dir={run_root(cfg)}/models/smat "
          f"model_name=rxt\n"
          f"and chat with it: .venv/bin/rxt chat   (see docs/serving.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
