#!/bin/bash
# refit + compare each stored (profile, benchmark) pair in a temp copy; print per-level errors
cd ${REPO:-.}
tag=$1; shift
out=/tmp/lr/off-$tag; mkdir -p $out
for name in "$@"; do
  cp ${STUDY:-docs/bench/study}/capacity-profile-$name.json $out/p-$name.json
  ${PY:-.venv/bin/python} jobs/capacity.py compare --refit --profile $out/p-$name.json --benchmark ${STUDY:-docs/bench/study}/capacity-serving-$name.json --check-out $out/c-$name.json > $out/log-$name.txt 2>&1 || { echo "fail $name"; tail -3 $out/log-$name.txt; }
  ${PY:-.venv/bin/python} - $out/c-$name.json $name <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
n = sum(1 for lv in c["levels"] for e in lv["relative_error"].values() if e is not None and abs(e) <= 0.25)
print(f"{sys.argv[2]:>10} {n:>2}/12  " + "  ".join(f"S{lv['sessions']}:" + ",".join(f"{e:+.0%}" for e in lv['relative_error'].values()) for lv in c["levels"]))
PY
done
