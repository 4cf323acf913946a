"""MVBoost library: models (LGM, Era3D), cameras, Gaussians, renderer, pipeline stages and shard I/O.

This package never imports Ray; the Ray launchers live in ``ray_jobs/`` and ``train/``.
"""
__version__ = "0.1.0"
