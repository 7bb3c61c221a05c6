"""The cluster files: valid YAML, and what they launch exists and fits the cluster they describe."""

import glob
import os
import re
import shlex
import tomllib

import yaml

from rxt_dist.train import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(name):
    with open(os.path.join(ROOT, "infra", name)) as f:
        return yaml.safe_load(f)


def gpus_per_group(spec):
    groups = spec["workerGroupSpecs"]
    return sum(g["maxReplicas"] * int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
               for g in groups for c in g["template"]["spec"]["containers"])


def test_rayjob_runs_the_curriculum_with_a_shipped_config_that_fits_its_cluster():
    job = load("rayjob.yaml")
    assert job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/curriculum.py"] and os.path.exists(os.path.join(ROOT, argv[1]))
    cfg = TrainConfig.from_file(os.path.join(ROOT, argv[argv.index("--config") + 1]))
    assert cfg.scaling.use_gpu
    assert cfg.scaling.num_workers <= gpus_per_group(job["spec"]["rayClusterSpec"])


def test_raycluster_and_ray_up_files_describe_gpu_workers():
    cluster = load("raycluster.yaml")
    assert cluster["kind"] == "RayCluster" and gpus_per_group(cluster["spec"]) >= 8
    up = load("ray-cluster-gpu.yaml")
    assert up["head_node_type"] in up["available_node_types"]
    workers = [t for n, t in up["available_node_types"].items() if n != up["head_node_type"]]
    assert sum(t["max_workers"] for t in workers) >= TrainConfig.from_file(
        os.path.join(ROOT, "configs", "gpu-micro.yaml")).scaling.num_workers


def test_images_agree():
    images = {load("raycluster.yaml")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"],
              load("ray-cluster-gpu.yaml")["docker"]["image"],
              load("rayjob.yaml")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]}
    assert len(images) == 1


BACKENDS = {"s3": "s3fs", "gs": "gcsfs"}
"""URL scheme → the fsspec package that reads it."""


def dockerfile_installs():
    """(the torch install line, the extras of the project's install) from infra/Dockerfile."""
    with open(os.path.join(ROOT, "infra", "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    torch_line = next(line for line in text.splitlines() if "pip install" in line and "torch==" in line)
    extras = re.search(r'-e "?\.\[([a-z0-9,]+)\]', text)
    return torch_line, set(extras.group(1).split(",")) if extras else set()


def test_the_image_installs_the_object_store_backends_its_cluster_files_use():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    torch_line, installed = dockerfile_installs()
    assert re.search(r"--index-url https://download\.pytorch\.org/whl/cu\d+", torch_line), torch_line
    used = set()
    files = glob.glob(os.path.join(ROOT, "infra", "*.yaml")) + glob.glob(os.path.join(ROOT, "configs", "*.yaml"))
    for path in files:
        with open(path) as f:
            used |= set(re.findall(r"\b(s3|gs)://", f.read()))
    assert "s3" in used  # the shipped GPU configs and the RayService keep their data on S3
    for scheme in used:
        providers = {name for name, deps in extras.items() if any(d.startswith(BACKENDS[scheme]) for d in deps)}
        assert providers & installed, f"{scheme}:// is used but the image installs no extra with {BACKENDS[scheme]}"
