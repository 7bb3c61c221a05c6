"""Front processes' CPU per turn at S=1 think 0: one chunk per token vs the configured 50 ms
interval (fewer chunks), apps alternated to bracket drift."""
import json, sys
sys.path.insert(0, 'jobs')
import capacity as cap
from bench_serving import local_app
from rxt_dist.eval.serving import ServingConfig, run_serving
import ray
from rxt_dist.eval.profile import serving_processes, process_cpu

args = cap.parse_args(['check', '--model-dir', 'runs/tiny-s0-echo300w25/models/smat'])
out = []
for name, over in (("per-token", {"stream_interval_s": 0.0, "stream_chunks_per_s": 0.0}), ("interval", {}),
                   ("per-token", {"stream_interval_s": 0.0, "stream_chunks_per_s": 0.0}), ("interval", {})):
    with local_app(args.config, args.model_dir, over, replicas=1) as (url, _):
        run_serving(ServingConfig(url=url, sessions=(1,), turns=8, rounds=2, warmup_turns=0))
        pids = serving_processes(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
        rate = {k: 0.0 for k in process_cpu(pids)}; rate['client'] = 0.0
        cfg = ServingConfig(url=url, sessions=(1,), turns=8, rounds=16, query_words=24, max_tokens=32,
                            warmup_turns=0, seed=3)
        level, per_turn, _ = cap._cpu_per_turn(pids, url, cfg, rate)
        row = {"app": name, "chunks": level["tokens"]["chunks_per_turn_mean"],
               "tokens": level["tokens"]["completion_per_turn_mean"],
               "ttft_p50": round(level["ttft"]["p50_s"]*1e3, 1), "answer_p50": round(level["answer"]["p50_s"]*1e3, 1),
               "tok_s": round(level["throughput"]["aggregate_tokens_per_s"], 1),
               "cpu": {k: round(v*1e3, 1) for k, v in per_turn.items()}}
        print(json.dumps(row), flush=True)
        out.append(row)
json.dump(out, open('docs/bench/study/speed/chunks.json', 'w'), indent=1)
