import json
import tarfile

import pytest

from conftest import read_tar, verified
from mvboost.io.sample import tar_members as sample_members
from mvboost.io.shards import OutputError, OutputStore


def test_commit_is_atomic_ordered_and_verified(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    store.check_writable()
    store.stage_sample(0, "kb", {"txt": b"b", "json": b"{}"})
    store.stage_sample(0, "ka", {"txt": b"a", "json": b"{}"})
    store.stage_reject(0, "kc", "matting", "empty mask")
    assert store.finished([0]) == (set(), {"ka", "kb", "kc"})
    m = store.commit_shard(0, ["kb", "ka", "kc"], {"matting": 1.5})
    assert m.samples == 2 and m.keys == ["ka", "kb"] and m.rejected == ["kc"]
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tf:
        assert tf.getnames() == ["ka.txt", "ka.json", "kb.txt", "kb.json"]  # members of a sample adjacent
    assert verified(store, 0).sha256 == m.sha256
    assert store.finished([0]) == ({0}, set())
    assert not (tmp_path / "out" / "_staging" / "shard-000000").exists()
    rejects = (tmp_path / "out" / "rejects" / "shard-000000.jsonl").read_text().splitlines()
    assert json.loads(rejects[0]) == {"key": "kc", "reason": "empty mask", "stage": "matting"}
    # committing again is a no-op that returns the manifest (finished shards are never rewritten)
    before = (tmp_path / "out" / "shard-000000.tar").stat().st_mtime_ns
    assert store.commit_shard(0, ["ka", "kb", "kc"]).sha256 == m.sha256
    assert (tmp_path / "out" / "shard-000000.tar").stat().st_mtime_ns == before
    assert not list((tmp_path / "out").rglob("*.tmp-*"))


def test_commit_refuses_missing_items_and_detects_corruption(tmp_path):
    store = OutputStore(str(tmp_path))
    store.stage_sample(1, "ka", {"txt": b"a"})
    with pytest.raises(OutputError, match="neither staged nor rejected"):
        store.commit_shard(1, ["ka", "kb"])
    assert store.read_manifest(1) is None
    store.stage_reject(1, "kb", "x", "y")
    store.commit_shard(1, ["ka", "kb"])
    (tmp_path / "shard-000001.tar").write_bytes(b"garbage")
    with pytest.raises(AssertionError, match="not a readable tar"):
        verified(store, 1)


def test_keys_must_be_dot_free():
    with pytest.raises(ValueError, match="without dots or slashes"):
        sample_members("a.b", {"txt": b""})
    with pytest.raises(ValueError, match="without dots or slashes"):
        sample_members("a/b", {"txt": b""})
    assert sample_members("p0a1", {"views.png": b"x"}) == {"p0a1.views.png": b"x"}


def test_job_plan_is_checked(tmp_path):
    store = OutputStore(str(tmp_path))
    store.claim_job({"n": 8, "shard_size": 4})
    store.claim_job({"n": 8, "shard_size": 4})
    with pytest.raises(OutputError, match="different plan.*n: 8 there, 9 now"):
        store.claim_job({"n": 9, "shard_size": 4})


def test_unwritable_output_fails_clearly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is not writable"):
        OutputStore(str(blocker / "sub")).check_writable()


def test_s3_through_fsspec_with_moto(moto_s3):
    store = OutputStore("s3://bkt/run", moto_s3)
    store.check_writable()
    store.claim_job({"n": 2})
    store.stage_sample(0, "ka", {"txt": b"hello"})
    store.stage_reject(0, "kb", "t2i", "NaN output")
    assert store.finished([0]) == (set(), {"ka", "kb"})
    m = store.commit_shard(0, ["ka", "kb"])
    assert verified(store, 0).sha256 == m.sha256
    assert read_tar(store.read(store.path("shard-000000.tar"))) == {"ka.txt": b"hello"}
    assert store.finished([0]) == ({0}, set())


def test_no_tar_under_its_final_name_before_the_manifest_and_a_kill_in_between_recovers(tmp_path, monkeypatch):
    """Before: a complete tar sat under its final name while its manifest was not written (2 of 12 kills):
    a brace-pattern reader would read an uncommitted shard. Now the tar is published by a rename after the
    manifest, and a rerun after a kill between the two finishes the rename."""
    store = OutputStore(str(tmp_path))
    store.stage_sample(0, "ka", {"txt": b"a"})
    seen = []
    real_write = OutputStore.write_atomic

    def spy(self, path, data):  # every write before the manifest: is a final tar visible?
        seen.append((path.rsplit("/", 1)[-1], (tmp_path / "shard-000000.tar").exists()))
        return real_write(self, path, data)

    monkeypatch.setattr(OutputStore, "write_atomic", spy)

    def killed(self, shard, manifest):  # the process dies right after the manifest
        raise KeyboardInterrupt

    monkeypatch.setattr(OutputStore, "_publish", killed)
    with pytest.raises(KeyboardInterrupt):
        store.commit_shard(0, ["ka"])
    assert ("shard-000000.json", False) in seen and not any(visible for _, visible in seen)
    assert not (tmp_path / "shard-000000.tar").exists() and (tmp_path / "shard-000000.json").exists()
    monkeypatch.undo()
    fresh = OutputStore(str(tmp_path))
    assert fresh.finished([0]) == ({0}, set())  # the rerun's resume check finishes the publication
    assert verified(fresh, 0).keys == ["ka"]
    assert not (tmp_path / "_staging" / "shard-000000").exists()
