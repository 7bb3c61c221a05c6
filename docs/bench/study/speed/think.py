"""Does the simulation get think time 0 vs 0.3 at S=1 right? One app (calibration settings),
profile built on it, then S=1 levels: think 0, think 0.3, think 0; each simulated."""
import json, sys, time
sys.path.insert(0, 'jobs')
import capacity as cap
from bench_serving import local_app
from rxt_dist.eval.serving import ServingConfig
from rxt_dist.eval import simcheck
import ray
from rxt_dist.eval.profile import serving_processes, process_cpu

args = cap.parse_args(['check', '--model-dir', 'runs/tiny-s0-echo300w25/models/smat'])
out = {}
with local_app(args.config, args.model_dir, {"stream_interval_s": 0.0, "stream_chunks_per_s": 0.0}, replicas=1) as (url, _):
    profile, _ = cap.build_profile(args, url)
    pids = serving_processes(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    rate = {k: 0.0 for k in process_cpu(pids)}; rate['client'] = 0.0
    for name, think in (("t0a", 0.0), ("t03", 0.3), ("t0b", 0.0)):
        cfg = ServingConfig(url=url, sessions=(1,), turns=8, rounds=16, think_time_s=think,
                            query_words=args.query_words, max_tokens=args.max_tokens, warmup_turns=0, seed=3)
        level, per_turn, _ = cap._cpu_per_turn(pids, url, cfg, rate)
        sim = simcheck.simulate_level(profile, level, think_time_s=think, settle_poll_s=cfg.poll_interval_s)
        real = simcheck.measured_figures(level)
        row = {k: (round(sim[k]*1e3, 1) if k != 'tokens_per_s' else round(sim[k], 1),
                   round(real[k]*1e3, 1) if k != 'tokens_per_s' else round(real[k], 1))
               for k in ('ttft_p50_s', 'ttft_p99_s', 'answer_p50_s', 'tokens_per_s', 'update_lag_p50_s')}
        row['ttft_excl_wait_p50'] = round(level['ttft']['excluding_wait']['p50_s']*1e3, 1)
        row['waited_share'] = (round(sim['waited_share'], 2), round(real['waited_share'], 2))
        row['cpu_meas'] = {k: round(v*1e3, 1) for k, v in per_turn.items()}
        row['cpu_sim'] = {k: round(v*1e3, 1) for k, v in sim['cpu_s_per_turn'].items()}
        row['wall_per_turn_ms'] = round(level['wall_s'] / level['requests'] * 1e3, 1)
        out[name] = row
        print(name, json.dumps(row), flush=True)
json.dump(out, open('docs/bench/study/speed/think.json', 'w'), indent=1)
