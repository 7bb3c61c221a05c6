"""Per level of a stored (profile, benchmark) pair, simulated: the median time from a turn's end
to its session's next claim at the store, the lag and the share of turns that waited, beside
the measured lag and waits. Usage: python simgap.py PROFILE.json SERVING.json"""
import sys
import numpy as np
from rxt_dist.eval import simulate as S
from studylevels import simulated_levels
last_end = {}; gaps = []; sent_gap = []
o_claim, o_ended, o_init = S._Turn._claim, S._Turn._ended, S._Turn.__init__
def init(self, graph, session, index, answer_tokens):
    o_init(self, graph, session, index, answer_tokens)
    if session.index in last_end: sent_gap.append(graph.sim.now - last_end[session.index])
def claim(self):
    if self.session.index in last_end: gaps.append(self.g.sim.now - last_end[self.session.index])
    o_claim(self)
def ended(self):
    last_end[self.session.index] = self.g.sim.now; o_ended(self)
S._Turn._claim, S._Turn._ended, S._Turn.__init__ = claim, ended, init
for lv, out in simulated_levels(sys.argv[1:], lambda: (gaps.clear(), last_end.clear(), sent_gap.clear())):
    print(f"S={lv['sessions']:>2} end→sent {np.median(sent_gap)*1e3:6.1f} end→claim p50 {np.median(gaps)*1e3:6.1f} | sim lag {out['update_lag_p50_s']*1e3:6.1f} waited {out['waited_share']:.2f} | meas lag {lv['update_lag']['p50_s']*1e3:6.1f} waited p50 {lv['waited']['p50_ms']} share {lv['waited']['share']:.2f}")
