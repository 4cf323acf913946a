from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mvboost.config import ConfigError, apply_overrides, from_dict, load_config
from mvboost.pipeline.job import load_job_config

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Inner:
    steps: int = 4
    scale: float = 1.0
    flag: bool = False


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    items: list[str] = field(default_factory=list)


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match="unknown config key.*inner.stpes.*valid keys of inner: flag, scale, steps"):
        from_dict(Outer, {"inner": {"stpes": 3}})
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(Outer, {"nmae": "y"})


def test_types_are_checked_and_coerced():
    o = from_dict(Outer, {"inner": {"steps": "7", "scale": 2, "flag": "true"}, "items": ["a"]})
    assert o.inner.steps == 7 and o.inner.scale == 2.0 and o.inner.flag is True and o.items == ["a"]
    with pytest.raises(ConfigError, match="inner.steps: expected an integer"):
        from_dict(Outer, {"inner": {"steps": "many"}})
    with pytest.raises(ConfigError, match="expected a mapping"):
        from_dict(Outer, {"inner": 3})


def test_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\ninner: {steps: 2}\n")
    o = load_config(Outer, p, ["inner.scale=0.5", "name=b", "items=[x, y]"])
    assert (o.name, o.inner.steps, o.inner.scale, o.items) == ("b", 2, 0.5, ["x", "y"])
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides({}, ["oops"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_every_repo_config_loads_and_has_a_smoke_variant():
    from mvboost.eval.config import EvalConfig
    from mvboost.prompts.llm import PromptGenConfig
    from mvboost.train.config import TrainConfig

    def job_or_eval(p):  # ray_jobs/configs holds the generation job's configs and the evaluation job's
        return load_config(EvalConfig, p) if p.stem.startswith("evaluate") else load_job_config(p)

    loaders = {"ray_jobs": job_or_eval, "prompts": lambda p: load_config(PromptGenConfig, p),
               "train": lambda p: load_config(TrainConfig, p)}
    # the smoke variants run in tests/generation/test_ray_job.py, test_eval.py, test_prompts.py and test_train.py
    for folder, load in loaders.items():
        configs = sorted((REPO / folder / "configs").glob("*.yaml"))
        assert configs, f"no configs in {folder}/configs"
        for c in configs:
            load(c)
        names = {c.stem for c in configs}
        for c in names - {n for n in names if "smoke" in n}:
            # X_smoke.yaml, or a "# smoke: other.yaml" header naming a smoke config of the same layout
            header = [ln.split(":", 1)[1].split()[0] for ln in (REPO / folder / "configs" / f"{c}.yaml").read_text()
                      .splitlines() if ln.startswith("# smoke:")]
            smoke = header[0].removesuffix(".yaml") if header else f"{c}_smoke"
            assert smoke in names and "smoke" in smoke, f"{folder}/configs/{c}.yaml has no smoke variant"


def test_job_config_validation():
    with pytest.raises(ConfigError, match="unknown stage"):
        load_job_config(None, ["job.stages=[text_to_image, warp, write]"])
    with pytest.raises(ConfigError, match="must end with 'write'"):
        load_job_config(None, ["job.stages=[text_to_image]"])
    with pytest.raises(ConfigError, match="needs \\['image'\\], produced by no earlier stage"):
        load_job_config(None, ["job.stages=[matting, write]"])
    with pytest.raises(ConfigError, match="unknown config key.*text_to_image.stepz"):
        load_job_config(None, ["text_to_image.stepz=3"])
