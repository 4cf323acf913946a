"""Cluster operation: the launcher config against Ray's own schema and AWS bootstrap (moto), the KubeRay
manifests against the v1 fields they use, and token authentication everywhere."""
import copy
import os
import shlex
import sys

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

    from ray_jobs.generate import load as load_job
    from ray_jobs.generate import parse_args

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


def _fake_autoscaling_cluster(worker_types: dict, head: dict, provider: dict | None = None):
    """Ray's AutoscalingCluster with its fake multi-node provider config given inline (the PyPI wheel does
    not ship the example.yaml it reads), or ``provider`` in its place. Its own start() and shutdown() would run
    `ray stop --force` (every Ray on the machine, a developer's own cluster too) and put the head on the fixed default
    ports; here the head takes free ports (``.address``, also the provider's GCS address for the nodes it
    launches) and shutdown() stops exactly the processes carrying this cluster's reaper tag."""
    import json
    import subprocess
    import tempfile

    from ray._private.services import get_node_ip_address
    from ray.cluster_utils import AutoscalingCluster

    from conftest import free_port, ray_start_head, tagged_env
    from ray_jobs.reaper import reap

    gcs = free_port()
    address = f"{get_node_ip_address()}:{gcs}"

    class InlineAutoscalingCluster(AutoscalingCluster):
        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **kw):
            cfg = {"cluster_name": "fake_multinode", "max_workers": 8, "idle_timeout_minutes": 0.05,
                   "upscaling_speed": 1.0, "head_node_type": "ray.head.default",
                   "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                                "disable_launch_config_check": True, "gcs_address": address, **(provider or {})},
                   "auth": {"ssh_user": "ubuntu"}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
                   "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
                   "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
                   "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": []}
            cfg["available_node_types"] = {**worker_node_types, "ray.head.default": {
                "resources": head_resources, "node_config": {}, "max_workers": 0}}
            return cfg

        def start(self, override_env: dict | None = None):
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(self._config, f)
            res = dict(self._head_resources)
            cmd = [os.path.join(os.path.dirname(sys.executable), "ray"), "start",
                   f"--autoscaling-config={f.name}", *ray_start_head(gcs, free_port()),
                   f"--num-cpus={res.pop('CPU', 0)}", f"--num-gpus={res.pop('GPU', 0)}", "--disable-usage-stats"]
            if res:
                cmd.append(f"--resources={json.dumps(res)}")
            env, self.tag = tagged_env(dict(os.environ, AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_FAKE_CLUSTER="1",
                                            **(override_env or {})))
            try:
                subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=180)
            except BaseException:
                reap(self.tag)
                raise

        def shutdown(self):
            reap(self.tag)

    cluster = InlineAutoscalingCluster(head_resources=dict(head), worker_node_types=worker_types)
    cluster.address = address
    return cluster


@pytest.mark.ray
def test_gpu_nodes_scale_up_from_zero_survive_spot_preemption_and_scale_back(tmp_path, tiny_cache, moto_s3):
    """A head without GPUs and a spot GPU node group (min 0, max 1) on Ray's fake multi-node provider, shards on
    S3. The production layout's GPU pools make the autoscaler start a GPU node (the job warns, it does not refuse:
    an autoscaler may add nodes). Once the first shard is committed, the provider reclaims that node
    (``tests/spot_provider.py``: the instance is terminated and no longer listed, as after a cloud's preemption).
    All GPU capacity is gone; Ray Data restarts the actors that ran there, which wait for resources; the
    autoscaler sees that demand and launches a new node; the job finishes there: every planned item accepted
    exactly once, every manifest valid, nothing staged left. Then the idle GPU node goes away."""
    import json as js
    import subprocess
    import time

    import fsspec
    import ray

    from conftest import assert_every_item_once, wait_for_first_commit

    spot = tmp_path / "spot"
    spot.mkdir()
    cluster = _fake_autoscaling_cluster({"gpu_spot": {"resources": {"CPU": 1, "GPU": 1, "mvboost_gpu": 1},
                                                      "node_config": {}, "min_workers": 0, "max_workers": 1}},
                                        head={"CPU": 2}, provider={"type": "external", "spot_dir": str(spot),
                                                                   "module": "spot_provider.SpotProvider"})
    env = dict(os.environ, MVBOOST_CACHE=str(tiny_cache), RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    cluster.start(override_env={"RAY_AUTH_MODE": "disabled", "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{REPO}"})
    out, n = "s3://bkt/spot", 8
    config = REPO / "ray_jobs" / "configs" / "generate_1gpu_smoke.yaml"
    opts = [f"ray.address={cluster.address}", "job.progress=false", f"job.storage_options={js.dumps(moto_s3)}",
            "job.shard_size=2",
            "text_to_image.resources.custom={mvboost_gpu: 0.25}", "era3d.resources.custom={mvboost_gpu: 0.75}",
            *(f"{st}.resources.batch_size=2" for st in ("text_to_image", "matting", "era3d", "write"))]
    cmd = [sys.executable, "-m", "ray_jobs.generate", "--config", str(config), "--output", out, "--n", str(n),
           *(a for o in opts for a in ("--set", o))]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    fs, root = fsspec.core.url_to_fs(out, **moto_s3)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        wait_for_first_commit(proc, fs, root)
        gpu_nodes = [x["NodeID"] for x in ray.nodes() if x["Alive"] and x["Resources"].get("GPU")]
        assert len(gpu_nodes) == 1
        (spot / "reclaim").write_text(gpu_nodes[0])
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, log[-4000:]
        reclaimed = [js.loads(line) for line in (spot / "reclaimed").read_text().splitlines()]
        assert reclaimed == [{"node_id": gpu_nodes[0], "terminated": True, "time": reclaimed[0]["time"]}]
        workers = {x["NodeID"]: x for x in ray.nodes() if "node:__internal_head__" not in x["Resources"]}
        assert not workers[gpu_nodes[0]]["Alive"]
        (replacement,) = set(workers) - {gpu_nodes[0]}  # the one node launched after the reclaim
        deadline, alive = time.time() + 120, None  # ... and let go of once idle
        while time.time() < deadline:
            alive = [x for x in ray.nodes() if x["Alive"]]
            if len(alive) == 1:
                break
            time.sleep(2)
        assert len(alive) == 1 and not alive[0]["Resources"].get("GPU")  # only the head is left
    finally:
        ray.shutdown()
        if proc.poll() is None:
            proc.kill()
        cluster.shutdown()
    assert_every_item_once(proc, log, out, moto_s3, config, n, 2)
    assert "cannot be scheduled" in log  # warned (no GPU node yet), not refused
    print(f"reclaimed {gpu_nodes[0][-5:]}, replaced by {replacement[-5:]}")
    summary = js.loads(fs.cat(f"{root}/summary.json"))
    assert summary["gpu_seconds_held"] > 0  # GPUs were held on the nodes started
