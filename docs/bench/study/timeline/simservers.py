"""Per level of a stored (profile, benchmark) pair, simulated: for each process role the jobs
it ran, their mean stay (queue and work, ms) and mean work asked (ms).
Usage: python simservers.py PROFILE.json SERVING.json"""
import collections, sys
import numpy as np
from rxt_dist.eval import simulate as S, des
from studylevels import simulated_levels
stats = collections.defaultdict(list)
o_init = S.Graph.__init__
def ginit(self, *a, **k):
    o_init(self, *a, **k)
    for name in ("stores", "ingress", "proxies", "clients"):
        for s in getattr(self, name): s.role = name
    for g in self.generators: g.io.role = "gen_io"
    for u in self.updaters: u.loop.role = "upd_loop"
S.Graph.__init__ = ginit
o_do = des.Server.do
def do(self, seconds, then=lambda: None, owner=None):
    t0 = self.sim.now
    def wrapped():
        stats[getattr(self, "role", "?")].append((self.sim.now - t0, seconds))
        then()
    o_do(self, seconds, wrapped, owner)
des.Server.do = do
for lv, out in simulated_levels(sys.argv[1:], stats.clear):
    print(f"S={lv['sessions']}: " + "; ".join(f"{r} n={len(v)} soj {np.mean([a for a,_ in v])*1e3:.1f} work {np.mean([b for _,b in v])*1e3:.2f}" for r, v in sorted(stats.items())))
