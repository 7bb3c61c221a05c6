"""Sample /proc/loadavg's count of runnable threads every 20 ms (it counts itself) and write
"unix-time count" lines. Usage: python runqueue.py OUT.txt SECONDS"""
import time, sys
out = open(sys.argv[1], "w")
end = time.time() + float(sys.argv[2])
while time.time() < end:
    with open("/proc/loadavg") as f:
        run = int(f.read().split()[3].split("/")[0])
    out.write(f"{time.time():.3f} {run}\n")
    time.sleep(0.02)
