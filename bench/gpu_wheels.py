"""Fill the wheel folders the GPU check installs on an offline GPU machine (run where PyPI is reachable).

    python bench/gpu_wheels.py [--dest .whl] [--train-dest .whl-train]

The GPU machine is assumed to have torch, transformers, peft, safetensors, numpy, pyarrow, pandas, fsspec,
pytest and the CUDA toolkit, but not diffusers, gsplat, plyfile, ray, DeepSpeed, lpips or braceexpand. Each
folder is kept under 60 MiB (easy to copy, e.g. with a small working tree beside it), so there are two
sets: ``.whl`` for the profile and end-to-end calls (diffusers, gsplat, Ray, …) and ``.whl-train`` for the
training call (Ray, gsplat, DeepSpeed and its missing dependencies, lpips, braceexpand). Ray's wheel
alone is 79 MB: it is repacked without the parts a Python job with no dashboard UI never loads (the Java
jar, RLlib, Serve, Ray LLM, the dashboard's built web client), its RECORD rewritten to match. DeepSpeed
publishes no wheel (source only): it is built here with ``pip wheel --no-deps`` (pure Python; its CUDA ops
are JIT-built where they run). Every version is pinned and each folder is emptied first, so a rerun never
holds two versions of one package (pip on the GPU machine stops on that).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

#: Ray and what it needs that the GPU machine lacks (in both sets)
RAY = ["ray==2.60.0", "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "referencing==0.37.0",
       "rpds-py==2026.9.1", "importlib_metadata==10.2.0"]
PROFILE = ["diffusers==0.42.1", "gsplat==1.5.3", "plyfile==1.1.5", *RAY]
TRAIN = ["gsplat==1.5.3", "plyfile==1.1.5", *RAY, "hjson==3.1.0", "pydantic==2.11.7", "pydantic-core==2.33.2",
         "annotated-types==0.7.0", "typing-inspection==0.4.1", "lpips==0.1.4", "braceexpand==0.1.7"]
BUILT = {"train": ["deepspeed==0.19.8"]}  # source-only on PyPI: built here into a wheel
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
RAY_DROP = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/build/")
LIMIT = 60 * 2 ** 20  # each folder small enough to copy beside a working tree in one 64 MiB bundle


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


def fill(dest: Path, wheels: list[str], built: list[str]) -> int:
    """Empty ``dest``, download ``wheels`` (binary, no deps) and build ``built`` from source; returns bytes."""
    dest.mkdir(exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + wheels, check=True)
    if built:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), *built], check=True)
    for ray in dest.glob("ray-*.whl"):
        before = ray.stat().st_size
        slim_ray(ray)
        print(f"{ray.name}: {before / 2 ** 20:.1f} -> {ray.stat().st_size / 2 ** 20:.1f} MiB")
    names = sorted(p.name.split("-")[0].lower() for p in dest.glob("*.whl"))
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SystemExit(f"error: two versions of {dup} in {dest}")
    total = sum(p.stat().st_size for p in dest.glob("*.whl"))
    print(f"{len(names)} wheels, {total / 2 ** 20:.1f} MiB in {dest}")
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", default=".whl", help="the profile and end-to-end calls' wheels")
    ap.add_argument("--train-dest", default=".whl-train", help="the training call's wheels ('' to skip)")
    a = ap.parse_args(argv)
    sets = [(Path(a.dest), PROFILE, [])] + ([(Path(a.train_dest), TRAIN, BUILT["train"])] if a.train_dest else [])
    for dest, wheels, built in sets:
        if fill(dest, wheels, built) > LIMIT:
            print(f"error: {dest} holds more than {LIMIT / 2 ** 20:.0f} MiB: too large to copy as one bundle",
                  file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
