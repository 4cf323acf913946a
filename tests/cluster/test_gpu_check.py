"""The GPU check's tooling, checked on the CPU: reproducible wheel sets small enough to copy, and the four
steps' budgets inside each step's wall-clock limit."""
import re
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]
sys.path.insert(0, str(REPO / "bench"))


def test_wheel_sets_are_pinned_and_hold_one_version_of_each_package():
    import gpu_wheels

    for name, wheels in (("profile", gpu_wheels.PROFILE), ("train", gpu_wheels.TRAIN + gpu_wheels.BUILT["train"])):
        unpinned = [w for w in wheels if not re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", w)]
        assert unpinned == [], (name, unpinned)
        names = [w.split("==")[0].lower().replace("_", "-") for w in wheels]
        assert len(names) == len(set(names)), name
    train = {w.split("==")[0] for w in gpu_wheels.TRAIN + gpu_wheels.BUILT["train"]}
    assert {"deepspeed", "lpips", "braceexpand", "ray", "gsplat", "pydantic", "hjson"} <= train


def test_fill_empties_the_folder_first(tmp_path, monkeypatch):
    """A rerun must not hold two versions of a package: the folder is emptied before the downloads."""
    import gpu_wheels

    dest = tmp_path / "whl"
    dest.mkdir()
    (dest / "gsplat-1.4.0-py3-none-any.whl").write_bytes(b"old")
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd)
        (dest / "gsplat-1.5.3-py3-none-any.whl").write_bytes(b"new")

    monkeypatch.setattr(gpu_wheels.subprocess, "run", fake_run)
    assert gpu_wheels.fill(dest, ["gsplat==1.5.3"], []) == 3
    assert sorted(p.name for p in dest.iterdir()) == ["gsplat-1.5.3-py3-none-any.whl"]
    assert "--no-deps" in calls[0] and "gsplat==1.5.3" in calls[0]


def test_each_call_fits_the_per_call_limit():
    """The timeouts inside each step (what each part may take) add up to less than the step's stated limit,
    which is under 10 minutes."""
    text = (REPO / "bench" / "gpu_check.sh").read_text()
    header = {}
    for m in re.finditer(r"limit (\d+) s: bash bench/gpu_check.sh (\w+)", text):
        header[m.group(2)] = int(m.group(1))
    assert set(header) == {"profile", "e2e", "train", "openlrm"} and max(header.values()) < 600
    bodies = dict(re.findall(r"\n(\w+)\)\n(.*?)\n  ;;", text, re.S))
    install = 60  # install(): one timeout 60
    for call, limit in header.items():
        steps = sum(int(t) for t in re.findall(r"timeout (\d+) ", bodies[call]))
        background = 0  # the gsplat build runs beside bench_gpu, not after it
        if call == "profile":
            background = 240
        assert install + steps - background < limit, (call, install + steps - background, limit)
