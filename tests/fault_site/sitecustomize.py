"""Test-only fault injection for the generation job's Ray workers (on PYTHONPATH only in the tests that use it).

With ``MVBOOST_FAULT_CUDA_FILE`` set, the LGM stage of a Ray worker process raises a CUDA error on the first
batch that process sees, until the file (one line per injected fault: the pid) holds
``MVBOOST_FAULT_CUDA_TIMES`` lines. A worker whose CUDA context broke behaves like this: every later item fails
too, so the worker must be retired.

With ``MVBOOST_FAULT_HOLD_COMMITS`` set (a path that does not exist yet), the first shard commit of a Ray worker
goes through and creates that file; every later commit waits forever before writing anything, so a test that
kills the job after the first commit finds exactly one shard committed, whatever the order the shards filled in.
"""
import os
import sys

_FILE = os.environ.get("MVBOOST_FAULT_CUDA_FILE")
if _FILE and sys.argv and sys.argv[0].endswith("default_worker.py"):
    import mvboost.stages.lgm as _lgm

    _real = _lgm.LGMStage.process
    _broken = []

    def _process(self, rows):
        times = int(os.environ.get("MVBOOST_FAULT_CUDA_TIMES", "1"))
        done = open(_FILE).read().split() if os.path.exists(_FILE) else []
        if _broken or (len(done) < times and not getattr(_lgm, "_fault_seen", False)):
            _lgm._fault_seen = True
            if not _broken:
                with open(_FILE, "a") as f:
                    f.write(f"{os.getpid()}\n")
                _broken.append(True)
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        _lgm._fault_seen = True
        return _real(self, rows)

    _lgm.LGMStage.process = _process

_HOLD = os.environ.get("MVBOOST_FAULT_HOLD_COMMITS")
if _HOLD and sys.argv and sys.argv[0].endswith("default_worker.py"):
    import time as _time

    import mvboost.io.shards as _shards

    _real_commit = _shards.OutputStore.commit_shard

    def _commit_shard(self, *args, **kwargs):
        try:
            os.close(os.open(_HOLD, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # the first commit of the job
        except FileExistsError:
            while True:  # until the job is killed
                _time.sleep(1)
        return _real_commit(self, *args, **kwargs)

    _shards.OutputStore.commit_shard = _commit_shard
