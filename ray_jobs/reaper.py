"""A watchdog for the embedded local Ray: when the driver dies (even by kill -9), stop what it started.

Ray's local head is started by the driver; killed without a chance to shut down, some of its processes
(dashboard and runtime-env agents, idle workers) outlive it, re-parented to init.

Deterministic by construction, not by sampling:

- **Which processes**: :func:`start_reaper` puts a fresh random tag into the driver's environment
  (:data:`TAG_ENV`) before the local Ray starts. Every process Ray starts (GCS, raylet, agents, workers, and
  whatever those start) inherits the environment, so each of them carries the tag for its whole life, however
  often it is re-parented. Nothing else on the machine has that tag.
- **When**: the reaper (a separate session, so a signal to the driver's process group does not reach it)
  waits on a pidfd of the driver (``os.pidfd_open``): the kernel wakes it the moment the driver exits, with no
  polling interval to miss.
- **What then**: it SIGKILLs every process whose ``/proc/<pid>/environ`` carries the tag, and scans again
  until a scan finds none (a process forked between two scans is caught by the next one).

On a normal exit Ray has already stopped its processes and the scan finds nothing. Only for local runs: a
job submitted to a cluster never starts one.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid

TAG_ENV = "MVBOOST_LOCAL_RAY_TAG"


def start_reaper(pid: int | None = None) -> subprocess.Popen:
    """Tag this process's environment (inherited by everything started from now on) and watch ``pid``."""
    tag = tag_environment(os.environ)
    env = {k: v for k, v in os.environ.items() if k != TAG_ENV}  # the reaper itself carries no tag
    return subprocess.Popen([sys.executable, "-m", "ray_jobs.reaper", str(pid or os.getpid()), tag],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tag_environment(env) -> str:
    """Put a fresh tag into ``env`` (a dict, or ``os.environ``): every process started with it carries the tag."""
    tag = uuid.uuid4().hex
    env[TAG_ENV] = tag
    # Ray names its processes with setproctitle ("ray::DashboardAgent"), which by default overwrites the memory
    # behind /proc/<pid>/environ; SPT_NOENV (setproctitle's documented switch) keeps it readable, so the tag
    # stays visible. Titles are then bounded by the original command line's length (Ray's are long).
    env["SPT_NOENV"] = "1"
    return tag


def wait_for_exit(pid: int) -> None:
    """Return when process ``pid`` has exited (at once if it already has)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd (kernel < 5.3): poll
        while _exists(pid):
            time.sleep(0.2)
        return
    try:
        select.select([fd], [], [])  # readable once the process has exited
    finally:
        os.close(fd)


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def tagged(tag: str) -> list[int]:
    """Pids of the live processes whose environment carries ``TAG_ENV=tag``."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:  # gone, or a kernel thread
            pass
    return found


def reap(tag: str, rounds: int = 50) -> int:
    """SIGKILL every tagged process until a scan finds none; the number killed."""
    killed: set[int] = set()
    for _ in range(rounds):
        pids = [p for p in tagged(tag) if _exists(p)]
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
                killed.add(p)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return len(killed)


def watch(pid: int, tag: str) -> int:
    wait_for_exit(pid)
    return reap(tag)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the driver does not stop the watchdog
    sys.exit(0 if watch(int(sys.argv[1]), sys.argv[2]) >= 0 else 1)
