#!/bin/bash
# One run of the serving benchmark with every Python process's garbage collections logged
# (gc_probe_sitecustomize.py, loaded through PYTHONPATH as sitecustomize), then the collections
# inside each level summed per process (gc_levels.py).
# usage: gc_ab.sh TAG ["THRESHOLD0 THRESHOLD1 THRESHOLD2"]   (no thresholds: Python's 700 10 10)
# The probe directory must hold the probe as sitecustomize.py and gc_levels.py.
set -e
probe=${PROBE_DIR:-/tmp/gcprobe}
cd "$(git rev-parse --show-toplevel)"
.venv/bin/ray stop --force >/dev/null 2>&1 || true; pkill -9 -f haproxy || true
mkdir -p "$probe/log-$1"; rm -f "$probe/log-$1"/*
GCPROBE_DIR="$probe/log-$1" GCPROBE_THRESHOLD="$2" PYTHONPATH="$probe" .venv/bin/python jobs/bench_serving.py \
  --start --fixed-replicas 1 --sessions 8 32 --turns 48 --out "$probe/$1.json" --plot ''
.venv/bin/python "$probe/gc_levels.py" "$1"
