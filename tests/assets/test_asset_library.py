"""The two-domain asset library (groundwork of the boost experiment): GSO layout from pybullet_data's
random_urdfs, domains that differ visibly, disjoint pinned splits."""
import hashlib
import json

import numpy as np

from mvboost.eval.asset_library import DOMAINS, build_asset_library, domain_texture
from mvboost.eval.gso import list_objects, load_object


def _high_frequency(img: np.ndarray) -> float:
    g = img.astype(np.float32) / 255
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


def test_asset_library_domains_splits_and_layout(tmp_path):
    rec = build_asset_library(tmp_path, per_domain=3, held_out=1, thumbnails=False)
    names = list_objects(str(tmp_path))
    assert len(names) == 6 and {n[0] for n in names} == {"a", "b"}
    indices = {d: {n[1:] for n in names if n[0] == d.lower()} for d in DOMAINS}
    assert not indices["A"] & indices["B"]  # each domain has its own meshes
    for d in DOMAINS:
        parts = rec["domains"][d]
        assert len(parts["train"]["objects"]) == 2 and len(parts["held_out"]["objects"]) == 1
        assert not set(parts["train"]["objects"]) & set(parts["held_out"]["objects"])
        for part in ("train", "held_out"):
            text = (tmp_path / f"{d}_{part}.txt").read_text()
            assert hashlib.sha256(text.encode()).hexdigest() == parts[part]["sha256"]
    assert json.loads((tmp_path / "splits.json").read_text()) == rec
    obj = load_object(str(tmp_path), names[0])
    assert obj.texture is not None and obj.uv is not None and np.abs(obj.vertices).max() <= 0.5 + 1e-9
    # the texture families differ visibly: B is a fine checker with dots, A smooth bands
    a = np.mean([_high_frequency(domain_texture("A", s)) for s in range(5)])
    b = np.mean([_high_frequency(domain_texture("B", s)) for s in range(5)])
    assert b > 3 * a, (a, b)
    assert np.array_equal(domain_texture("B", 3), domain_texture("B", 3))  # deterministic
    # a rerun keeps what is there and pins the same split
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("model.obj")}
    assert build_asset_library(tmp_path, per_domain=3, held_out=1, thumbnails=False) == rec
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("model.obj")} == before
