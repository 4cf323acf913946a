"""Cluster operation: the launcher config against Ray's own schema and AWS bootstrap (moto), the KubeRay
manifests against the v1 fields they use, and token authentication everywhere."""
import copy
import shlex

import pytest
import yaml

from conftest import REPO

CLUSTER = REPO / "cluster"


def load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def test_aws_config_passes_rays_schema_after_its_autofill():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load("aws.yaml")
    prepared = prepare_config(copy.deepcopy(cfg))  # merges Ray's AWS defaults, as `ray up` does
    validate_config(prepared)  # ray/autoscaler/ray-schema.json
    for name, node in prepared["available_node_types"].items():
        assert "resources" in node and node["min_workers"] == 0 or name == "head"
    assert prepared["available_node_types"]["gpu_gen"]["resources"] == {"mvboost_gpu": 1}


def test_aws_config_bootstraps_with_rays_aws_provider(monkeypatch):
    """Ray's own AWS bootstrap (IAM role, subnets, security group, key pair) against moto's in-process AWS."""
    moto = pytest.importorskip("moto")
    from ray.autoscaler._private.aws import config as aws_config
    from ray.autoscaler._private.util import prepare_config

    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    for k, v in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(aws_config.time, "sleep", lambda s: None)  # Ray waits 15 s for IAM consistency
    with moto.mock_aws():
        boot = aws_config.bootstrap_aws(prepare_config(load("aws.yaml")))
    for node in boot["available_node_types"].values():
        assert node["node_config"]["SubnetIds"] and node["node_config"]["SecurityGroupIds"]


def test_aws_config_uses_token_auth_and_hf_download():
    cfg = load("aws.yaml")
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "disabled" not in (CLUSTER / "aws.yaml").read_text().split("# Keep 8265")[1]
    assert cfg["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert not any("huggingface-cli" in c for c in cfg["setup_commands"])
    assert sum(c.startswith("hf download ") for c in cfg["setup_commands"]) == 3


# The RayCluster/RayJob v1 fields these manifests use, transcribed from the KubeRay v1 API reference
# (the upstream CRD cannot be vendored here): unknown keys are errors, rayStartParams values are strings.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_CONTAINER = {"type": "object", "required": ["name", "image"], "properties": {
    "name": {"type": "string"}, "image": {"type": "string"}, "env": {"type": "array", "items": {
        "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "value": {"type": "string"},
                                                               "valueFrom": {"type": "object"}}}},
    "resources": {"type": "object"}, "ports": {"type": "array"}, "volumeMounts": {"type": "array"}}}
_POD = {"type": "object", "required": ["spec"], "properties": {"spec": {
    "type": "object", "required": ["containers"],
    "properties": {"containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
                   "volumes": {"type": "array"}, "restartPolicy": {"enum": ["Never", "OnFailure", "Always"]}}}}}
_INT0 = {"type": "integer", "minimum": 0}
RAYCLUSTER_SPEC = {"type": "object", "required": ["headGroupSpec"], "additionalProperties": False, "properties": {
    "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
    "autoscalerOptions": {"type": "object", "additionalProperties": False, "properties": {
        "idleTimeoutSeconds": _INT0, "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
        "resources": {"type": "object"}, "image": {"type": "string"}, "env": {"type": "array"}}},
    "headGroupSpec": {"type": "object", "required": ["template"], "additionalProperties": False, "properties": {
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "rayStartParams": _STR_MAP,
        "template": _POD, "enableIngress": {"type": "boolean"}, "headService": {"type": "object"}}},
    "workerGroupSpecs": {"type": "array", "items": {
        "type": "object", "required": ["groupName", "template"], "additionalProperties": False, "properties": {
            "groupName": {"type": "string"}, "replicas": _INT0, "minReplicas": _INT0, "maxReplicas": _INT0,
            "rayStartParams": _STR_MAP, "template": _POD, "numOfHosts": _INT0, "suspend": {"type": "boolean"},
            "idleTimeoutSeconds": _INT0, "scaleStrategy": {"type": "object"}}}},
    "headServiceAnnotations": _STR_MAP, "suspend": {"type": "boolean"}, "authOptions": {"type": "object"}}}
RAYJOB_SPEC = {"type": "object", "required": ["entrypoint"], "additionalProperties": False, "properties": {
    "entrypoint": {"type": "string"}, "clusterSelector": _STR_MAP, "rayClusterSpec": RAYCLUSTER_SPEC,
    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
    "shutdownAfterJobFinishes": {"type": "boolean"}, "ttlSecondsAfterFinished": _INT0,
    "activeDeadlineSeconds": {"type": "integer", "minimum": 1}, "runtimeEnvYAML": {"type": "string"},
    "submitterPodTemplate": _POD, "entrypointNumCpus": {"type": "number"}, "entrypointNumGpus": {"type": "number"},
    "jobId": {"type": "string"}, "metadata": _STR_MAP, "suspend": {"type": "boolean"}}}


def containers(spec):
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_cluster_manifest():
    import jsonschema

    cr = load("kuberay.yaml")
    assert (cr["apiVersion"], cr["kind"]) == ("ray.io/v1", "RayCluster")
    jsonschema.validate(cr["spec"], RAYCLUSTER_SPEC)
    spec = cr["spec"]
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] == 0 and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    for c in containers(spec):  # every pod, the head included: token auth and the model cache
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "mvboost-ray-token"
        assert env["HF_HOME"]["value"] == "/models/hf" and env["HF_HUB_OFFLINE"]["value"] == "1"
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_rayjob_manifest_runs_the_job_on_that_cluster():
    import jsonschema

    from ray_jobs.generate import load as load_job, parse_args

    job, cluster = load("rayjob.yaml"), load("kuberay.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    jsonschema.validate(job["spec"], RAYJOB_SPEC)
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "ray_jobs.generate"]
    cfg = load_job(parse_args(argv[3:]))  # the entrypoint's arguments load as a valid job config
    assert cfg.job.output.startswith("s3://") and cfg.job.n == 100_000
    env = {e["name"]: e for e in job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]


def test_a_typo_in_a_manifest_is_caught():
    import jsonschema

    cr = load("kuberay.yaml")
    cr["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(cr["spec"], RAYCLUSTER_SPEC)
    cr = load("kuberay.yaml")
    cr["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cr["spec"], RAYCLUSTER_SPEC)
