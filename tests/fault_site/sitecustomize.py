"""Test-only fault injection for the generation job's Ray workers (on PYTHONPATH only in the tests that use it).

With ``MVBOOST_FAULT_CUDA_FILE`` set, the LGM stage of a Ray worker process raises a CUDA error on the first
batch that process sees, until the file (one line per injected fault: the pid) holds
``MVBOOST_FAULT_CUDA_TIMES`` lines. A worker whose CUDA context broke behaves like this: every later item fails
too, so the worker must be retired.
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
