"""A watchdog for the embedded local Ray: when the driver dies (even by kill -9), stop what it started.

Ray's local head is started by the driver; killed without a chance to shut down, some of its processes
(dashboard and runtime-env agents, idle workers) outlive it. ``start_reaper()`` spawns this module as a
separate session; it records the driver's descendants (pid + start time, so a reused pid is never
touched) every second while the driver lives, and once the driver is gone terminates those still running.
Only for local runs: a job submitted to a cluster never starts one.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time


def start_reaper(pid: int | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ray_jobs.reaper", str(pid or os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def watch(pid: int, interval: float = 1.0, grace: float = 3.0) -> int:
    import psutil

    known: dict[int, float] = {}
    me = os.getpid()  # a child of the driver too: never on the list
    try:
        driver = psutil.Process(pid)
    except psutil.Error:
        driver = None
    while driver is not None:
        try:
            if not driver.is_running() or driver.status() == psutil.STATUS_ZOMBIE:
                break
            kids = driver.children(recursive=True)
        except psutil.NoSuchProcess:
            break  # the driver is gone
        except psutil.Error:  # a transient error (a child vanishing while listed): look again, never give up early
            time.sleep(interval)
            continue
        for c in kids:
            if c.pid == me:
                continue
            try:
                known[c.pid] = c.create_time()
            except psutil.Error:
                pass
        time.sleep(interval)
    time.sleep(grace)  # after a normal exit Ray has already stopped its processes
    left = []
    for p, created in known.items():
        try:
            proc = psutil.Process(p)
            if abs(proc.create_time() - created) < 1e-3:
                proc.terminate()
                left.append(proc)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(left, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return len(left)


if __name__ == "__main__":
    sys.exit(0 if watch(int(sys.argv[1])) >= 0 else 1)
