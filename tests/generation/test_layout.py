"""Stage layouts: fused groups in job.stages and the start-up check that a layout can be scheduled."""
import pytest

from conftest import REPO
from mvboost.config import ConfigError
from mvboost.pipeline.job import build_units, gpu_shares, layout_units, load_job_config
from mvboost.pipeline.layout import Demand, LayoutError, check_layout

PROD = REPO / "ray_jobs" / "configs" / "generate.yaml"
ONE_GPU_SMOKE = REPO / "ray_jobs" / "configs" / "generate_1gpu_smoke.yaml"
GPU_RANDOM = REPO / "ray_jobs" / "configs" / "generate_gpu_random.yaml"


def node(cpus, gpus, memory=None):
    """A node as ray.nodes() reports it; memory: what Ray offers by default, ~70 % of 8 GB per CPU."""
    return {"CPU": cpus, "GPU": gpus, "memory": 0.7 * 8e9 * cpus if memory is None else memory}


def units(*spec):
    return [Demand(name, g, c, n, True) for name, g, c, n in spec]


def test_the_old_production_fractions_are_refused_on_one_gpu_naming_the_stages():
    """The layout that sat at 0 items for minutes on a 1-GPU Ray now fails at start."""
    old = units(("text_to_image", 1.0, 1, 1), ("era3d", 1.0, 1, 1), ("lgm", 0.5, 1, 1), ("render", 0.5, 1, 1),
                ("refine", 1.0, 1, 1))
    with pytest.raises(LayoutError) as e:
        check_layout(old, [node(16, 1)])
    msg = str(e.value)
    assert "1 node: 16 CPUs, 1 GPUs" in msg and "4 GPUs needed, 1 GPUs in the cluster" in msg
    for name in ("era3d", "refine", "lgm", "render"):
        assert name in msg.split("no room for:")[1]
    assert "text_to_image 1 x 1 GPU + 1 CPU" in msg and "fused group" in msg


@pytest.mark.parametrize("nodes", [[node(16, 1)], [node(96, 8)], [node(16, 1)] * 4])
def test_the_production_layout_fits_one_gpu_and_eight(nodes):
    cfg = load_job_config(PROD)
    built = build_units(cfg)
    assert [u.names for u in built] == [("text_to_image",), ("matting",), ("era3d", "lgm", "render", "refine"),
                                        ("write",)]
    assert [u.gpu_share for u in built] == [0.25, 0.0, 0.75, 0.0]
    assert [(r.stage, r.id) for u in built for r in u.model_refs] == [
        ("text_to_image", "stabilityai/sdxl-turbo"), ("era3d", "pengHTYX/MacLab-Era3D-512-6view"),
        ("lgm", "ashawkey/LGM"), ("refine", "pengHTYX/MacLab-Era3D-512-6view")]
    check_layout(layout_units(built), nodes)


def test_no_gpu_at_all_names_the_fused_group():
    with pytest.raises(LayoutError, match=r"no node can hold one worker of .*era3d\+lgm\+render\+refine \(0.75 GPU"):
        check_layout(layout_units(build_units(load_job_config(PROD))), [node(8, 0)])


def test_fractions_are_packed_per_gpu_not_summed():
    check_layout(units(("a", 0.75, 1, 1), ("b", 0.25, 1, 1)), [node(4, 1)])
    with pytest.raises(LayoutError, match="no room for: b"):
        check_layout(units(("a", 0.75, 1, 1), ("b", 0.5, 1, 1)), [node(4, 1)])
    check_layout(units(("a", 0.5, 1, 3)), [node(4, 2)])  # 0.5 + 0.5 on one GPU, 0.5 on the other
    with pytest.raises(LayoutError, match="the totals fit, but not packed"):  # 1.8 <= 2 GPUs, but 0.6 + 0.6 > 1
        check_layout(units(("a", 0.6, 1, 3)), [node(4, 2)])


def test_whole_gpus_and_cpus_must_be_on_one_node():
    with pytest.raises(LayoutError, match=r"no node can hold one worker of a \(2 GPU"):
        check_layout(units(("a", 2, 1, 1)), [node(4, 1), node(4, 1)])
    check_layout(units(("a", 2, 1, 1)), [node(4, 2)])
    with pytest.raises(LayoutError, match="above 1 must be a whole number"):
        check_layout(units(("a", 1.5, 1, 1)), [node(4, 2)])
    with pytest.raises(LayoutError, match="no room for: b"):  # GPUs free, but b's CPUs are on no node with one
        check_layout(units(("a", 0.5, 3, 1), ("b", 0.5, 2, 1)), [node(4, 1)])


def test_task_stages_need_cpus_left_after_the_actor_pools():
    layout = units(("model", 0, 2, 1)) + [Demand("write", 0, 1, 1, False)]
    with pytest.raises(LayoutError, match=r"at most 0 CPU is free.*write \(1 CPU\)"):
        check_layout(layout, [node(2, 0)])
    check_layout(layout, [node(3, 0)])


def test_fused_groups_in_the_config():
    cfg = load_job_config(ONE_GPU_SMOKE)
    share = gpu_shares(build_units(cfg))
    assert share == {"text_to_image": 0.25, "matting": 0.0, "era3d": 0.75, "lgm": 0.75, "render": 0.75,
                     "refine": 0.75, "write": 0.0}
    with pytest.raises(ConfigError, match="listed more than once"):
        load_job_config(None, ["job.stages=[text_to_image, matting, [era3d, era3d], write]"])
    with pytest.raises(ConfigError, match="must end with 'write', on its own"):
        load_job_config(None, ["job.stages=[text_to_image, [matting, write]]"])
    with pytest.raises(ConfigError, match=r"job.stages\[1\]: expected a stage name or a non-empty list"):
        load_job_config(None, ["job.stages=[text_to_image, [], write]"])
    with pytest.raises(ConfigError, match="needs \\['views'\\], produced by no earlier stage"):
        load_job_config(None, ["job.stages=[text_to_image, matting, [lgm, era3d], write]"])
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        load_job_config(None, ["text_to_image.resources.batch_size=0"])
    with pytest.raises(ConfigError, match="min_actors <= max_actors"):
        load_job_config(None, ["text_to_image.resources.min_actors=3", "text_to_image.resources.max_actors=2"])


def test_gpu_configs_share_one_layout():
    """The GPU configs (production, random full-size) and their smoke run the same operators and GPU
    fractions, so the CPU test of the smoke config exercises the production scheduling."""
    def shape(path):
        cfg = load_job_config(path)
        built = build_units(cfg)
        return [u.names for u in built], [(u.num_gpus, u.min_actors, u.uses_actor) for u in layout_units(built)]

    assert shape(PROD) == shape(ONE_GPU_SMOKE) == shape(GPU_RANDOM)
    random_cfg = load_job_config(GPU_RANDOM)
    assert {getattr(random_cfg, s).model for s in ("text_to_image", "era3d", "refine", "lgm")} == {
        "random:sd-turbo", "random:era3d", "random:lgm"}


def test_fused_production_layout_runs_in_process(tmp_path, tiny_cache, monkeypatch):
    """The fused group runs its members in order in one worker (here: this process) and era3d/refine
    share one pipeline; every item is accounted for."""
    from mvboost.pipeline.job import run_in_process
    from mvboost.stages import common

    monkeypatch.setattr(common, "_SHARED", {})  # a fresh process: no model loaded yet
    _SHARED = common._SHARED

    cfg = load_job_config(ONE_GPU_SMOKE, [f"job.output={tmp_path / 'out'}", "job.n=4", "job.progress=false"])
    summary = run_in_process(cfg)
    assert (summary.accepted, summary.rejected) == (4, 0)
    assert len([k for k in _SHARED if k[0] == "era3d"]) == 1
    assert set(summary.stage_seconds) >= {"era3d", "lgm", "render", "refine"}
    # GPU-seconds: every member of the fused group holds the group's 0.75 GPU
    fused = sum(summary.stage_seconds[s] for s in ("era3d", "lgm", "render", "refine"))
    expected = 0.75 * fused + 0.25 * summary.stage_seconds["text_to_image"]
    assert summary.gpu_seconds_busy == pytest.approx(expected, rel=0.01, abs=0.01)
