"""Per level of a stored (profile, benchmark) pair, simulated: the time-averaged number of jobs
on the simulated CPU (its runnable tasks), beside the level's measured load averages.
Usage: python simbusy.py PROFILE.json SERVING.json"""
import json, sys, dataclasses
from rxt_dist.eval import des
from rxt_dist.eval.capacity import CostProfile
from rxt_dist.eval.simcheck import simulate_level
prof = CostProfile.from_file(sys.argv[1]); bench = json.load(open(sys.argv[2]))
srv = bench.get("server", {})
prof = dataclasses.replace(prof, path=dataclasses.replace(prof.path, stream_interval_s=srv.get("stream_interval_s", 0.0), stream_chunks_per_s=srv.get("stream_chunks_per_s", 0.0)))
acc = {"area": 0.0, "t": 0.0, "last": 0.0, "busy": 0.0}
o_adv = des.CPU._advance
def adv(self):
    dt = self.sim.now - acc["last"]
    if dt > 0:
        acc["area"] += dt * len(self.jobs); acc["t"] += dt
        acc["busy"] += dt * (len(self.jobs) > 0)
    acc["last"] = self.sim.now
    o_adv(self)
des.CPU._advance = adv
for lv in bench["levels"]:
    acc.update(area=0.0, t=0.0, last=0.0, busy=0.0)
    env = lv.get("environment")
    here = prof.in_environment(env["slowdown"], env["stalls"], env.get("speed_probe_s")) if env else prof
    out = simulate_level(here, lv, settle_poll_s=bench.get("config", {}).get("poll_interval_s", 0.0))
    print(f"S={lv['sessions']:>2} mean jobs on the CPU {acc['area']/acc['t']:.2f} (while any: {acc['area']/max(acc['busy'],1e-9):.2f}); measured load avg {lv.get('load_average_before')} -> {lv.get('load_average_after')}")
