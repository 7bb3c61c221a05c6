import gc, os, sys, time
_start = {}
_tot = [0, 0.0]
_path = os.environ.get("GCPROBE_DIR", "/tmp/gcprobe/log")
_t = os.environ.get("GCPROBE_THRESHOLD", "").split()
if _t:
    gc.set_threshold(*map(int, _t))
def _name():
    try:
        return open("/proc/self/cmdline","rb").read().replace(b"\0",b" ").decode()[:100]
    except Exception:
        return "?"
def _cb(phase, info):
    if phase == "start":
        _start[0] = time.perf_counter()
        return
    dt = time.perf_counter() - _start.get(0, time.perf_counter())
    _tot[0] += 1; _tot[1] += dt
    gen = info.get("generation")
    if gen == 2 or dt > 0.001 or _tot[0] % 100 == 0:
        try:
            with open(f"{_path}/{os.getpid()}.txt", "a") as f:
                f.write(f"{time.time():.4f} {gen} {dt*1000:.3f} {info.get('collected')} {_tot[0]} {_tot[1]*1000:.3f} {_name()!r}\n")
        except Exception:
            pass
gc.callbacks.append(_cb)
