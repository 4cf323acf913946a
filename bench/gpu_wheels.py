"""Fill .whl/ with the wheels the GPU machine lacks (run here, where PyPI is reachable).

    python bench/gpu_wheels.py [--dest .whl]

The lent GPU machines have torch, transformers, safetensors, numpy, pyarrow, pandas, fsspec, pytest
and the CUDA toolkit, but not diffusers, gsplat, plyfile or ray (shared/spec/gpu_notes.md, the device
tool's KINDS.md). Everything that travels must fit 64 MiB: Ray's wheel alone is 79 MB, so it is
repacked without the parts a Python job with no dashboard UI never loads (the Java jar, RLlib, Serve,
Ray LLM, the dashboard's built web client); its RECORD is rewritten to match. Then run
``bash bench/gpu_check.sh`` on the GPU machine with ``.whl`` carried.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

WHEELS = ["diffusers==0.42.1", "gsplat==1.5.3", "plyfile==1.1.5", "importlib_metadata", "ray==2.60.0",
          "jsonschema==4.26.0", "jsonschema-specifications", "referencing", "rpds-py"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
RAY_DROP = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/build/")
LIMIT = 60 * 2 ** 20  # leave room for the working tree under the 64 MiB a call carries


def slim_ray(path: Path) -> Path:
    out = path.with_suffix(".slim")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(RAY_DROP):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(ln for ln in data.splitlines(keepends=True)
                                if not ln.decode().startswith(RAY_DROP))
            dst.writestr(info, data)
    out.replace(path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", default=".whl")
    a = ap.parse_args(argv)
    dest = Path(a.dest)
    dest.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + WHEELS, check=True)
    for ray in dest.glob("ray-*.whl"):
        before = ray.stat().st_size
        slim_ray(ray)
        print(f"{ray.name}: {before / 2 ** 20:.1f} -> {ray.stat().st_size / 2 ** 20:.1f} MiB")
    total = sum(p.stat().st_size for p in dest.glob("*.whl"))
    print(f"{len(list(dest.glob('*.whl')))} wheels, {total / 2 ** 20:.1f} MiB in {dest}")
    if total > LIMIT:
        print(f"error: more than {LIMIT / 2 ** 20:.0f} MiB: the device call cannot carry it", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
