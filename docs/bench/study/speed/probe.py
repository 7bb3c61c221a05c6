"""Does a CPU-speed probe (CPU seconds of a fixed Python workload) follow the serving
processes' CPU per turn, level to level? One app, S=1 think 0 levels alternating with probes."""
import json, sys, time, statistics
sys.path.insert(0, 'jobs')
import capacity as cap
from bench_serving import local_app
from rxt_dist.eval.serving import ServingConfig, run_serving
import ray
from rxt_dist.eval.profile import serving_processes, process_cpu, measure_environment

def work():
    d = {}
    for i in range(3000):
        s = json.dumps({"id": i, "text": "word " * 8, "v": [i, i + 1, i + 2]})
        d[i % 97] = json.loads(s)
        "".join(sorted(s))
    return d

def probe(pieces=15):
    out = []
    for _ in range(pieces):
        c0 = time.process_time(); work(); out.append(time.process_time() - c0)
    return statistics.median(out)

args = cap.parse_args(['check', '--model-dir', 'runs/tiny-s0-echo300w25/models/smat'])
rows = []
with local_app(args.config, args.model_dir, None, replicas=1) as (url, _):
    run_serving(ServingConfig(url=url, sessions=(1,), turns=8, rounds=2, warmup_turns=0))
    pids = serving_processes(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    rate = {k: 0.0 for k in process_cpu(pids)}; rate['client'] = 0.0
    for i in range(10):
        p0 = probe(); env = measure_environment(1.0)
        cfg = ServingConfig(url=url, sessions=(1,), turns=8, rounds=8, warmup_turns=0, seed=i)
        level, per_turn, _ = cap._cpu_per_turn(pids, url, cfg, rate)
        p1 = probe()
        row = {"probe_ms": round((p0 + p1) / 2 * 1e3, 2), "probe0": round(p0*1e3, 2), "probe1": round(p1*1e3, 2),
               "spin_slowdown": round(env["slowdown"], 3),
               "cpu_total": round(sum(v for k, v in per_turn.items() if k != 'client') * 1e3, 1),
               "ttft_p50": round(level["ttft"]["p50_s"]*1e3, 1), "tok_s": round(level["throughput"]["aggregate_tokens_per_s"], 1),
               "cpu": {k: round(v*1e3, 1) for k, v in per_turn.items()}}
        print(json.dumps(row), flush=True); rows.append(row)
json.dump(rows, open('docs/bench/study/speed/probe.json', 'w'), indent=1)
