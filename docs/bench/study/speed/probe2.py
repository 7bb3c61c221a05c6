import json, sys, time, statistics, subprocess
sys.path.insert(0, 'jobs')
import capacity as cap
from bench_serving import local_app
from rxt_dist.eval.serving import ServingConfig, run_serving
import ray
from rxt_dist.eval.profile import serving_processes, process_cpu

PROBE = r'''
import json, sys, time
def work():
    for i in range(150):
        s = json.dumps({"id": i, "text": "word " * 8, "v": [i, i + 1, i + 2]})
        json.loads(s); "".join(sorted(s))
for _ in range(20): work()
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    c0 = time.process_time(); work(); print(f"{time.process_time() - c0:.7f}", flush=True)
    time.sleep(0.04)
'''
args = cap.parse_args(['check', '--model-dir', 'runs/tiny-s0-echo300w25/models/smat'])
rows = []
with local_app(args.config, args.model_dir, None, replicas=1) as (url, _):
    run_serving(ServingConfig(url=url, sessions=(1,), turns=8, rounds=2, warmup_turns=0))
    pids = serving_processes(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    rate = {k: 0.0 for k in process_cpu(pids)}; rate['client'] = 0.0
    for i in range(12):
        sessions = (1, 8)[i % 2]
        proc = subprocess.Popen([sys.executable, "-c", PROBE, "600"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        cfg = ServingConfig(url=url, sessions=(sessions,), turns=8, rounds=8 if sessions == 1 else 2, warmup_turns=0, seed=i % 2)
        level, per_turn, _ = cap._cpu_per_turn(pids, url, cfg, rate)
        proc.kill(); pieces = [float(x) for x in proc.stdout.read().split()]
        row = {"S": sessions, "probe_ms": round(statistics.median(pieces) * 1e3, 3), "n": len(pieces),
               "cpu_total": round(sum(v for k, v in per_turn.items() if k != 'client') * 1e3, 1),
               "ttft_p50": round(level["ttft"]["p50_s"]*1e3, 1), "tok_s": round(level["throughput"]["aggregate_tokens_per_s"], 1)}
        print(json.dumps(row), flush=True); rows.append(row)
json.dump(rows, open('docs/bench/study/speed/probe2.json', 'w'), indent=1)
