"""The simulated update timeline per benchmark level (means): the end after the dispatch,
receipt, wait for the batch, batch start → commit done."""
import sys
import numpy as np
from rxt_dist.eval import simulate as S
from studylevels import simulated_levels
marks = {}
o_submit, o_enqueue, o_start = S.Updater.submit, S.Updater._enqueue, S.Updater._start
def submit(self, turn):
    marks[id(turn)] = {"submit": self.sim.now, "t": turn}; o_submit(self, turn)
def enqueue(self, turn):
    marks[id(turn)]["enq"] = self.sim.now; o_enqueue(self, turn)
def start(self):
    for t in list(self.queue)[: self.p.path.update_batch_size]:
        marks[id(t)]["start"] = self.sim.now
    o_start(self)
S.Updater.submit, S.Updater._enqueue, S.Updater._start = submit, enqueue, start
for lv, out in simulated_levels(sys.argv[1:], marks.clear):
    rows = [m for m in marks.values() if "start" in m and not np.isnan(m["t"].commit_at) and not np.isnan(m["t"].ended)]
    f = lambda k: np.mean([k(m) for m in rows]) * 1e3
    print(f"S={lv['sessions']:>2} lag p50 sim {out['update_lag_p50_s']*1e3:6.1f} meas {lv['update_lag']['p50_s']*1e3:6.1f} | means: end after dispatch {f(lambda m: m['t'].ended - m['submit']):5.1f}"
          f" receipt {f(lambda m: m['enq']-m['submit']):5.1f} wait {f(lambda m: m['start']-m['enq']):5.1f} start→commit {f(lambda m: m['t'].commit_at-m['start']):6.1f} ms")
