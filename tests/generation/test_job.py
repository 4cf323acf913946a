import json

import pytest

from conftest import SMOKE, shard_keys, verified
from mvboost.io.shards import OutputError
from mvboost.pipeline.job import load_job_config, plan_items, run_in_process
from mvboost.stages.base import Reject, Resources, Stage, StageConfig
from mvboost.stages.text_to_image import TextToImageStage


def smoke_cfg(out, *extra):
    return load_job_config(SMOKE, [f"job.output={out}", "job.progress=false", *extra])


def test_smoke_in_process_then_resume_is_free(tmp_path, tiny_cache):
    out = tmp_path / "out"
    s = run_in_process(smoke_cfg(out))
    assert (s.requested, s.accepted, s.rejected, s.skipped_already_done) == (8, 8, 0, 0)
    assert s.steady_items_per_s is None  # 2 batches of 4: too few to measure a steady rate
    assert s.items_per_s == pytest.approx(8 / s.wall_seconds, rel=0.05)
    assert "steady throughput n/a" in s.format()
    items = plan_items(smoke_cfg(out))
    assert shard_keys(out) == [it["item_id"] for it in sorted(items, key=lambda r: (r["shard"], r["item_id"]))]
    manifests = sorted(out.glob("shard-*.json"))
    assert [json.loads(m.read_text())["samples"] for m in manifests] == [4, 4]
    mtimes = [p.stat().st_mtime_ns for p in out.glob("shard-*.tar")]
    s2 = run_in_process(smoke_cfg(out))
    assert s2.skipped_already_done == 8 and s2.stage_seconds == {}
    assert [p.stat().st_mtime_ns for p in out.glob("shard-*.tar")] == mtimes
    # the output is a plain WebDataset: the webdataset package reads and decodes every sample (Ray Data's reader
    # reads the same tar layout, written by the same code, in tests/assets/test_assets.py)
    import webdataset as wds

    decoded = list(wds.WebDataset(str(out / "shard-{000000..000001}.tar"), shardshuffle=False).decode("rgb"))
    assert sorted(x["__key__"] for x in decoded) == sorted(it["item_id"] for it in items)
    assert all(x["input.png"].shape == (64, 64, 3) and x["refined.png"].shape[-1] == 3 for x in decoded)
    # one sample's members and meta
    sample = next(iter(wds.WebDataset(str(out / "shard-000000.tar"), shardshuffle=False)))
    assert {"prompt.txt", "input.png", "views.png", "normals.png", "renders.png", "render_alpha.png",
            "render_normals.png", "refined.png", "cameras.json", "gaussians.ply", "meta.json"} <= set(sample)
    meta = json.loads(sample["meta.json"])
    assert meta["models"]["text_to_image"]["id"] == "tiny:sd" and meta["models"]["era3d"]["id"] == "tiny:era3d"
    assert meta["strength"] == 0.95 and set(meta["era3d_pose_pred"]) == {"elevation_rad", "focal_code"}
    assert meta["key"] == sample["__key__"] and "text_to_image" in meta["stage_seconds"]
    assert meta["prompt_source"].startswith("offline-taxonomy")
    # a different plan on the same output is refused
    with pytest.raises(OutputError, match="different plan"):
        run_in_process(smoke_cfg(out, "job.n=9"))


def test_content_failures_are_recorded_and_infrastructure_failures_go_through_again(tmp_path, tiny_cache,
                                                                                    monkeypatch):
    """Item 1 hits a CUDA error on its first four attempts (the batch and three retries in the worker): it is not
    recorded but goes through again in the next round and is accepted. A transient error succeeds on retry; a
    Reject and an unexpected error that survives the retries are recorded rejections."""
    real = TextToImageStage.process
    calls = {1: 0, 2: 0}

    def faulty(self, rows):
        for r in rows:
            if r["index"] == 1:
                calls[1] += 1
                if calls[1] <= 4:
                    raise RuntimeError("CUDA error: an illegal memory access was encountered")
            if r["index"] == 2 and calls[2] == 0:
                calls[2] += 1
                raise ConnectionError("transient")  # succeeds on retry
            if r["index"] == 6:
                raise ValueError("a bug this item triggers")
        out = real(self, rows)
        return [Reject("NaN output from the text-to-image model") if r["index"] == 5 else o
                for r, o in zip(rows, out)]

    monkeypatch.setattr(TextToImageStage, "process", faulty)
    out = tmp_path / "out"
    s = run_in_process(smoke_cfg(out))
    assert (s.accepted, s.rejected, s.infrastructure_retries) == (6, 2, 1)
    assert calls[1] == 5
    assert s.rejected_by_reason == {"text_to_image: ValueError": 1, "text_to_image: NaN output from the "
                                    "text-to-image model": 1}
    ledger = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    items = plan_items(smoke_cfg(out))
    assert sorted(r["key"] for r in ledger) == sorted(items[i]["item_id"] for i in (5, 6))
    assert set(shard_keys(out)) | {r["key"] for r in ledger} == {it["item_id"] for it in items}
    # rejected items are not retried (nor re-paid) by a rerun
    monkeypatch.setattr(TextToImageStage, "process", real)
    assert run_in_process(smoke_cfg(out)).skipped_already_done == 8


def test_an_infrastructure_failure_that_persists_is_never_recorded_and_the_rerun_finishes(tmp_path, tiny_cache,
                                                                                         monkeypatch):
    """Out of memory on every attempt of item 2: after job.infra_retries rounds the run ends with one clear
    error; nothing of the item is recorded, its shard stays uncommitted, the other shard is committed; the same
    command, once the machine is healthy, finishes the job with nothing lost."""
    from mvboost.pipeline.state import JobIncomplete

    real = TextToImageStage.process

    class OutOfMemoryError(RuntimeError):  # the name torch gives its OOM errors
        pass

    def oom(self, rows):
        if any(r["index"] == 2 for r in rows):
            raise OutOfMemoryError("Tried to allocate 2.00 GiB")
        return real(self, rows)

    monkeypatch.setattr(TextToImageStage, "process", oom)
    out = tmp_path / "out"
    with pytest.raises(JobIncomplete, match=r"1 item\(s\) still failed for infrastructure reasons after 3 attempts"
                                            r" \(e.g. .* at text_to_image: OutOfMemoryError"):
        run_in_process(smoke_cfg(out))
    items = plan_items(smoke_cfg(out))
    assert not (out / "rejects.jsonl").exists() or items[2]["item_id"] not in (out / "rejects.jsonl").read_text()
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000001.tar"]  # item 2 is in shard 0
    monkeypatch.setattr(TextToImageStage, "process", real)
    s = run_in_process(smoke_cfg(out))
    assert (s.accepted, s.rejected, s.skipped_already_done) == (8, 0, 7)
    assert sorted(shard_keys(out)) == sorted(it["item_id"] for it in items)


class Doubler(Stage):
    name = "doubler"
    Config = StageConfig
    inputs = ("x",)
    outputs = ("y",)

    def process(self, rows):
        if any(r["x"] == 3 for r in rows):
            raise ValueError("three is bad")
        return [{"y": 2 * r["x"]} for r in rows]


def test_stage_contract_keeps_rows_and_retries_items():
    st = Doubler(StageConfig(resources=Resources(retries=1)))
    out = st({"item_id": list("abcd"), "x": [1, 2, 3, 4], "status": ["ok", "ok", "ok", "rejected"],
              "reject_stage": ["", "", "", "earlier"], "reject_reason": ["", "", "", "why"]})
    assert out["item_id"] == list("abcd")
    assert out["y"] == [2, 4, None, None]
    assert out["status"] == ["ok", "ok", "rejected", "rejected"]
    assert out["reject_stage"] == ["", "", "doubler", "earlier"]
    assert out["reject_reason"][2] == "ValueError: three is bad" and out["reject_reason"][3] == "why"
    assert all(t >= 0 for t in out["t_doubler"])
    with pytest.raises(KeyError, match="needs columns"):
        st({"item_id": ["a"], "z": [1]})


class Sleeper(Stage):
    name = "sleeper"
    Config = StageConfig
    inputs = ("x",)
    outputs = ("y",)

    def process(self, rows):
        import time

        if any(r["x"] < 0 for r in rows):
            time.sleep(2.0)
        return [{"y": r["x"]} for r in rows]


def test_stage_timeout_is_an_infrastructure_failure_of_the_slow_item_only():
    st = Sleeper(StageConfig(resources=Resources(timeout_s=0.3, retries=0)))
    out = st({"item_id": ["a", "b"], "x": [1, -1]})
    # the batch timed out as a whole: both items are retried one by one, only the slow one times out again;
    # it is not recorded as bad content (failed, not rejected) and the stage says its worker may be unhealthy
    assert out["status"] == ["ok", "failed"]
    assert out["reject_reason"][1] == "timeout: stage sleeper took more than 0.3 s"
    assert st.unhealthy == "timeout: stage sleeper took more than 0.3 s"
    assert st({"item_id": ["c"], "x": [5]})["y"] == [5]  # the stage still works afterwards


@pytest.mark.parametrize("error, infra", [
    (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), True),
    (MemoryError(), True),
    (type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory"), True),
    (RuntimeError("CUDA driver version is insufficient for CUDA runtime version"), True),
    (Reject("object too small: 0.3% of the image"), False),
    (Reject("CUDA error in the prompt text"), False),  # a content verdict stays one, whatever it says
    (ValueError("could not broadcast input array"), False),
    (OSError("unreadable asset"), False),
])
def test_error_classes(error, infra):
    from mvboost.stages.base import is_infrastructure

    assert is_infrastructure(error) is infra
    assert is_infrastructure(OSError("No space left on device"), (OSError,))  # the write stage's storage errors


def test_smoke_job_to_s3_through_fsspec(tiny_cache, moto_s3):
    from mvboost.io.shards import OutputStore

    cfg = smoke_cfg("s3://bkt/smoke", "job.n=4", f"job.storage_options={json.dumps(moto_s3)}",
                    "job.stages=[text_to_image, matting, write]")
    s = run_in_process(cfg)
    assert (s.accepted, s.rejected) == (4, 0)
    assert verified(OutputStore("s3://bkt/smoke", moto_s3), 0).samples == 4
    assert run_in_process(cfg).skipped_already_done == 4


def test_gpu_seconds_and_cost_per_accepted_sample(tmp_path, tiny_cache):
    cfg = smoke_cfg(tmp_path / "out", "job.n=4", "job.stages=[text_to_image, matting, write]",
                    "text_to_image.resources.num_gpus=0.5", "job.gpu_hour_usd=3.6")
    s = run_in_process(cfg)
    assert s.accepted == 4
    assert s.gpu_seconds_busy == pytest.approx(0.5 * s.stage_seconds["text_to_image"], rel=1e-2, abs=2e-3)
    assert s.gpu_seconds_held == 0  # in-process: no GPUs handed out to measure; cost falls back to busy
    assert s.gpu_seconds_per_accepted == pytest.approx(s.gpu_seconds_busy / 4, rel=1e-2, abs=1e-3)
    assert s.usd_per_accepted == pytest.approx(s.gpu_seconds_per_accepted * 3.6 / 3600, rel=1e-2, abs=1e-6)
    assert "busy per accepted sample" in s.format()


def test_steady_throughput_on_known_schedules():
    from mvboost.pipeline.summary import steady_rate

    uniform = [(10.0 * k, 4) for k in range(1, 11)]  # 4 items every 10 s from t=10 to t=100
    assert steady_rate(uniform, 0.0, 100.0) == pytest.approx(36 / 90)
    # the reported failure: 8 items in 49.6 s arriving as two batches 50 ms apart gave 163.57 items/s
    assert steady_rate([(49.55, 4), (49.6, 4)], 0.0, 49.6) is None
    assert steady_rate([(49.5, 3), (49.55, 3), (49.6, 2)], 0.0, 49.6) is None  # a burst of three: no rate either
    assert steady_rate([(5.0, 4)], 0.0, 5.0) is None  # n=4: one batch (was 0.000)
    # start-up excluded: 20 s of loading, then 2 items/s
    ramp = [(20.0 + k, 2) for k in range(0, 31)]
    assert steady_rate(ramp, 0.0, 50.0) == pytest.approx(2.0)


def test_retry_rejected_reruns_a_reason_group_into_new_shards_and_the_latest_verdict_counts(tmp_path, tiny_cache,
                                                                                           monkeypatch):
    """Items 1, 2 and 6 rejected by a flaky check, 5 by another reason. --retry-rejected with the first group
    runs those three again into a shard of their own (committed shards untouched): accepted now, their rejects
    superseded; the other group stays rejected; the same command again finds nothing left of that group."""
    from mvboost.io.shards import OutputStore
    from mvboost.pipeline.retry import read_rounds

    real = TextToImageStage.process

    def verdicts(self, rows):
        out = real(self, rows)
        return [Reject("object too small: 0.4% (flaky check)") if r["index"] in (1, 2, 6) else
                Reject("NaN output from the text-to-image model") if r["index"] == 5 else o for r, o in zip(rows, out)]

    monkeypatch.setattr(TextToImageStage, "process", verdicts)
    out = tmp_path / "out"
    s = run_in_process(smoke_cfg(out))
    assert (s.accepted, s.rejected) == (4, 4)
    before = {p.name: p.read_bytes() for p in out.glob("shard-*")}
    monkeypatch.setattr(TextToImageStage, "process", real)
    group = "text_to_image: object too small"
    s = run_in_process(smoke_cfg(out, f"job.retry_rejected={json.dumps(group)}"))
    assert (s.accepted, s.rejected, s.requested) == (7, 1, 8)
    assert s.rejected_by_reason == {"text_to_image: NaN output from the text-to-image model": 1}
    assert s.shards == [0, 1, 2]
    assert {p.name: p.read_bytes() for p in out.glob("shard-*") if p.name in before} == before
    items = plan_items(smoke_cfg(out))
    keys = shard_keys(out)
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(it["item_id"] for it in items
                                                                  if it["index"] != 5)
    ledger = [json.loads(x)["key"] for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert ledger == [items[5]["item_id"]]
    assert [r["group"] for r in read_rounds(OutputStore(str(out)))] == [group]
    s = run_in_process(smoke_cfg(out, f"job.retry_rejected={json.dumps(group)}"))
    assert (s.accepted, s.rejected, s.shards) == (7, 1, [0, 1, 2])  # nothing of that group is left
