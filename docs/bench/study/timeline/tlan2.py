"""Real timeline of memory updates from the instrumented app (any S): phases from the Ingress's
dispatch to the store's persist, and the mean lead of the dispatch over the client's end
(mean lag − mean(stamp − dispatch))."""
import glob, json, sys, collections
import numpy as np
d, js = sys.argv[1], sys.argv[2]
li = int(sys.argv[3]) if len(sys.argv) > 3 else 0
ev = collections.defaultdict(dict); batches = []
for f in glob.glob(f"{d}/*.log"):
    for line in open(f):
        p = line.split(); t = float(p[0]); e = p[1]
        if e in ("batch", "consolidated"): batches.append((t, e, int(p[2]))); continue
        ev[(p[2], int(p[3]))].setdefault(e, t)
batches.sort()
bt = np.array([t for t, e, _ in batches if e == "batch"]); ct = np.array([t for t, e, _ in batches if e == "consolidated"])
sizes = [n for t, e, n in batches if e == "batch"]
lv = json.load(open(js))["levels"][li]
t0, t1 = lv["started_at_unix"], lv["ended_at_unix"]
lags = np.array([x for sess in lv["samples"]["update_lag_s"] for x in sess if x is not None])
rows = collections.defaultdict(list)
for k, e in ev.items():
    if not all(x in e for x in ("dispatch", "recv", "stamp", "persisted", "return", "result")) or not t0 <= e["dispatch"] <= t1:
        continue
    b = bt[np.searchsorted(bt, e["recv"])]; c = ct[np.searchsorted(ct, b)]
    for name, v in (("recv-dispatch", e["recv"] - e["dispatch"]), ("batch-recv", b - e["recv"]),
                    ("consol-batch", c - b), ("stamp-consol", e["stamp"] - c),
                    ("persisted-stamp", e["persisted"] - e["stamp"]), ("return-persisted", e["return"] - e["persisted"]),
                    ("result-return", e["result"] - e["return"]), ("stamp-dispatch", e["stamp"] - e["dispatch"])):
        rows[name].append(v * 1e3)
print(f"S={lv['sessions']} updates {len(rows['stamp-dispatch'])}, batches {len(sizes)} mean size {np.mean(sizes):.2f}")
for k, v in rows.items():
    v = np.array(v)
    print(f"{k:>18}: p50 {np.median(v):7.2f}  mean {v.mean():7.2f}  p90 {np.percentile(v, 90):7.2f} ms")
print(f"{'client lag':>18}: p50 {np.median(lags)*1e3:7.2f}  mean {lags.mean()*1e3:7.2f} ms; the end after the dispatch (means) "
      f"{np.mean(rows['stamp-dispatch']) - lags.mean()*1e3:.2f} ms")
