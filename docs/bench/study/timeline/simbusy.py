"""Per level of a stored (profile, benchmark) pair, simulated: the time-averaged number of jobs
on the simulated CPU (its runnable tasks), beside the level's measured load averages.
Usage: python simbusy.py PROFILE.json SERVING.json"""
import sys
from rxt_dist.eval import des
from studylevels import simulated_levels
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
for lv, out in simulated_levels(sys.argv[1:], lambda: acc.update(area=0.0, t=0.0, last=0.0, busy=0.0)):
    print(f"S={lv['sessions']:>2} mean jobs on the CPU {acc['area']/acc['t']:.2f} (while any: {acc['area']/max(acc['busy'],1e-9):.2f}); measured load avg {lv.get('load_average_before')} -> {lv.get('load_average_after')}")
