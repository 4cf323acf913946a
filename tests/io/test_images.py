"""Single-view image datasets as a source: listing (folders, URLs, img2dataset shards), decoding with alpha, and the
generation job from images with bad ones recorded as rejects that name their files."""
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, call_main, shard_keys
from mvboost.io.images import list_images, read_image
from mvboost.pipeline.job import load_job_config, plan_items, run_in_process

IMAGES_SMOKE = REPO / "ray_jobs" / "configs" / "images_smoke.yaml"


def photo(h=96, w=128, seed=0) -> np.ndarray:
    """An object on white: a coloured ellipse in the middle of the frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w, 3), 255, np.uint8)
    inside = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 < 1
    img[inside] = rng.integers(20, 200, 3)
    return img


def shard(path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for key, members in samples.items():
            for ext, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))


def encoded(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture()
def dataset(tmp_path):
    """good: a.png, b.jpg, sub/c.webp, d_rgba.png (alpha kept), two shard samples (a .txt and a .json caption);
    bad: broken.png (not an image), tiny.png (16x16), blank.png (white: no object), notes.md and .hidden.png
    (not images / hidden: not listed)."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(photo(seed=1)).save(root / "a.png")
    Image.fromarray(photo(seed=2)).save(root / "b.jpg", quality=95)
    Image.fromarray(photo(seed=3)).save(root / "sub" / "c.webp", quality=95)
    rgba = np.dstack([photo(seed=4), np.zeros((96, 128), np.uint8)])
    rgba[30:66, 40:88, 3] = 255
    Image.fromarray(rgba, "RGBA").save(root / "d_rgba.png")
    shard(root / "00000.tar", {"000000000": {"jpg": encoded(photo(seed=5), "JPEG"), "txt": b"a red ball"},
                               "000000001": {"png": encoded(photo(seed=6), "PNG"),
                                             "json": json.dumps({"caption": "a blue mug", "url": "x"}).encode()},
                               "000000002": {"txt": b"a caption without an image"}})
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is no image")
    Image.fromarray(photo(16, 16)).save(root / "tiny.png")
    Image.fromarray(np.full((96, 128, 3), 255, np.uint8)).save(root / "blank.png")
    (root / "notes.md").write_text("not an image")
    Image.fromarray(photo()).save(root / ".hidden.png")
    return root


def test_a_folder_of_images_and_shards_is_listed_in_a_stable_order_without_decoding(dataset):
    refs = list_images(str(dataset))
    assert [r.name for r in refs] == ["00000.tar/000000000", "00000.tar/000000001", "a.png", "b.jpg", "blank.png",
                                      "broken.png", "d_rgba.png", "sub/c.webp", "tiny.png"]
    by_name = {r.name: r for r in refs}
    assert by_name["00000.tar/000000000"].member == "000000000.jpg"
    assert by_name["00000.tar/000000000"].caption == "a red ball"
    assert by_name["00000.tar/000000001"].caption == "a blue mug"
    assert list_images(f"file://{dataset}") == [  # an fsspec URL lists the same, with URLs to open
        type(r)(r.name, f"file://{r.url}", r.member, r.caption) for r in refs]
    assert [r.name for r in list_images(str(dataset / "00000.tar"))] == ["00000.tar/000000000", "00000.tar/000000001"]


def test_images_are_decoded_with_their_alpha(dataset):
    assert read_image(str(dataset / "a.png")).shape == (96, 128, 3)
    rgba = read_image(str(dataset / "d_rgba.png"))
    assert rgba.shape == (96, 128, 4) and rgba[..., 3].max() == 255 and rgba[0, 0, 3] == 0
    pal = Image.fromarray(photo()).convert("P")
    pal.info["transparency"] = 0
    pal.save(dataset / "pal.png", transparency=0)
    assert read_image(str(dataset / "pal.png")).shape[-1] == 4
    assert read_image(str(dataset / "00000.tar"), "000000001.png").shape == (96, 128, 3)
    with pytest.raises(ValueError, match="UnidentifiedImageError"):
        read_image(str(dataset / "broken.png"))
    with pytest.raises(FileNotFoundError):
        read_image(str(dataset / "gone.png"))


def test_the_job_from_images_records_bad_images_by_name_and_resumes(dataset, tmp_path, tiny_cache):
    out = tmp_path / "out"
    over = [f"job.output={out}", f"prompts.images={dataset}", "job.progress=false", "matting.reject_border_touch=true",
            "job.stages=[image_read, matting, write]"]
    cfg = load_job_config(IMAGES_SMOKE, over)
    s = run_in_process(cfg)
    assert (s.requested, s.accepted, s.rejected) == (9, 6, 3)
    ledger = {json.loads(x)["reason"] for x in (out / "rejects.jsonl").read_text().splitlines()}
    assert any(r.startswith("unreadable image: UnidentifiedImageError") and r.endswith("[broken.png]") for r in ledger)
    assert "image too small: 16x16 px, min 64 on the short side [tiny.png]" in ledger
    assert "empty mask: no foreground object found [blank.png]" in ledger
    assert s.rejected_by_reason == {"image_read: unreadable image": 1, "image_read: image too small": 1,
                                    "matting: empty mask": 1}
    items = plan_items(cfg)
    keys = sorted(shard_keys(out))
    assert keys == sorted(it["item_id"] for it in items if it["image_name"] not in ("broken.png", "tiny.png",
                                                                                     "blank.png"))
    import webdataset as wds

    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("shard-*.tar")), shardshuffle=False))
    captions = {s["prompt.txt"].decode() for s in samples}
    assert {"a red ball", "a blue mug", "a.png", "sub/c.webp"} <= captions
    assert run_in_process(load_job_config(IMAGES_SMOKE, over)).skipped_already_done == 9  # keys are stable
    # a different dataset on the same output is refused (the plan pins the source)
    (dataset / "e.png").write_bytes((dataset / "a.png").read_bytes())
    from mvboost.io.shards import OutputError

    with pytest.raises(OutputError, match="different plan"):
        run_in_process(load_job_config(IMAGES_SMOKE, over))


def test_images_from_an_s3_compatible_bucket(dataset, tmp_path, tiny_cache, moto_s3):
    import fsspec

    fs = fsspec.filesystem("s3", **moto_s3)
    for name in ("a.png", "d_rgba.png", "00000.tar"):
        fs.put(str(dataset / name), f"bkt/photos/{name}")
    out = tmp_path / "out"
    cfg = load_job_config(IMAGES_SMOKE, [f"job.output={out}", "prompts.images=s3://bkt/photos", "job.progress=false",
                                         f"prompts.storage_options={json.dumps(moto_s3)}",
                                         "job.stages=[image_read, matting, write]"])
    assert [it["image_url"] for it in plan_items(cfg)][:1] == ["s3://bkt/photos/00000.tar"]
    s = run_in_process(cfg)
    assert (s.requested, s.accepted, s.rejected) == (4, 4, 0)


def test_dry_run_plans_an_image_dataset_and_bad_sources_are_one_line(dataset, tmp_path, tiny_cache):
    def gen(*args):
        return call_main("ray_jobs.generate", "--config", IMAGES_SMOKE, "--output", tmp_path / "o", *args)

    r = gen("--images", str(dataset), "--dry-run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"plan: 9 items in 3 shards of up to 4 (prompts: images {dataset})" in r.stdout
    assert "image_read" in r.stdout and not (tmp_path / "o").exists()
    r = gen("--images", str(tmp_path / "nowhere"), "--dry-run")
    assert r.returncode == 2 and r.stderr.strip() == f"error: prompts.images not found: {tmp_path / 'nowhere'}"
    (tmp_path / "empty").mkdir()
    r = gen("--images", str(tmp_path / "empty"), "--dry-run")
    assert r.returncode == 2 and "no images under" in r.stderr and "Traceback" not in r.stderr
