"""The shipped Serve config and KubeRay manifest load, validate and agree; the app's
arguments and its builder refuse bad values with a message naming them."""

import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from rxt_dist.model import RxTModel, StatelessLM, from_name, save_model_dir
from serve.app import DEMO_MODEL_ID, build_app, resolve_args
from serve.args import DEPLOYMENT_NAMES, AppArgs
from serve.ray_env import HIGH_THROUGHPUT, use_high_throughput_serve

ROOT = Path(__file__).resolve().parents[2]
# Values a cluster legitimately sets differently from the local config.
CLUSTER_SPECIFIC_ARGS = {"model_dir", "device", "store_url", "store_shards", "api_key_env"}


def serve_config() -> dict:
    return yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())


def rayservice_config() -> dict:
    manifest = yaml.safe_load((ROOT / "infra" / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService"
    return yaml.safe_load(manifest["spec"]["serveConfigV2"])


@pytest.mark.parametrize("load", [serve_config, rayservice_config])
def test_shipped_configs_are_valid_serve_configs_of_this_app(load):
    config = ServeDeploySchema.model_validate(load()).applications
    assert len(config) == 1
    app = config[0]
    assert app.import_path == "serve.app:build_app"
    AppArgs.model_validate(app.args)
    assert {d.name for d in app.deployments} == set(DEPLOYMENT_NAMES)


def test_the_rayservice_embeds_the_same_application():
    local, cluster = serve_config()["applications"][0], rayservice_config()["applications"][0]
    for key in ("name", "route_prefix", "import_path"):
        assert local[key] == cluster[key]
    assert set(local["args"]) == set(cluster["args"])
    differing = {k for k in local["args"] if local["args"][k] != cluster["args"][k]}
    assert differing <= CLUSTER_SPECIFIC_ARGS


def test_the_cluster_files_start_every_serving_node_in_serves_high_throughput_mode():
    manifest = yaml.safe_load((ROOT / "infra" / "rayservice.yaml").read_text())
    spec = manifest["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e.get("value") for c in pod["template"]["spec"]["containers"] for e in c.get("env", [])}
        assert HIGH_THROUGHPUT.items() <= env.items()
    launcher = yaml.safe_load((ROOT / "infra" / "ray-cluster-gpu.yaml").read_text())
    commands = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert all(f"{name}={value} " in command for name, value in HIGH_THROUGHPUT.items())


def test_the_high_throughput_mode_keeps_what_the_environment_already_says():
    environ = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    use_high_throughput_serve(drain_s=0.5, environ=environ)
    assert environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"  # an operator's choice stands
    assert environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "0.5"
    with pytest.raises(ValueError, match="drain_s=-1"):
        use_high_throughput_serve(drain_s=-1, environ={})


def test_the_shipped_config_serves_the_model_make_demo_exports(tmp_path, monkeypatch):
    """No silent random model: the shipped config names make demo's export, and without it
    the app refuses to start, saying how to get one."""
    args = serve_config()["applications"][0]["args"]
    assert args["model_dir"] == "runs/tiny/models/smat" and not args.get("random_demo_model")
    monkeypatch.chdir(tmp_path)  # a fresh clone: nothing trained yet
    with pytest.raises(FileNotFoundError, match=r"no trained model there .*`make demo` trains one"):
        resolve_args(AppArgs.model_validate(args))
    with pytest.raises(ValueError, match="model_dir is not set: .*make demo.*random_demo_model: true"):
        AppArgs.model_validate({**args, "model_dir": None})


def test_a_random_demo_model_only_when_asked_for(tmp_path):
    args = AppArgs.model_validate({**serve_config()["applications"][0]["args"], "model_dir": None,
                                   "random_demo_model": True, "demo_dir": str(tmp_path / "demo"),
                                   "store_url": str(tmp_path / "s")})
    resolved, model_id = resolve_args(args)
    assert model_id == DEMO_MODEL_ID and resolved.model_dir == str(tmp_path / "demo")
    assert (tmp_path / "demo" / "tokenizer.json").exists()
    assert isinstance(build_app(args.model_dump()), Application)  # a dict, as Serve passes it


def test_a_model_dir_is_served_under_its_name(model_dir, tmp_path):
    resolved, model_id = resolve_args(AppArgs(model_dir=model_dir, store_url="rel/sessions"))
    assert model_id == "rxt-test" and resolved.store_url == str(Path("rel/sessions").resolve())
    assert resolve_args(AppArgs(model_dir=model_dir, model_name="nano-v1"))[1] == "nano-v1"


def test_a_model_the_server_cannot_use_is_refused_at_build_time(tmp_path):
    save_model_dir(StatelessLM(from_name("baseline-debug")), str(tmp_path / "baseline"))
    with pytest.raises(ValueError, match="stateless baseline"):
        resolve_args(AppArgs(model_dir=str(tmp_path / "baseline")))
    save_model_dir(RxTModel(from_name("debug")), str(tmp_path / "no-tokenizer"))
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        resolve_args(AppArgs(model_dir=str(tmp_path / "no-tokenizer")))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_args(AppArgs(model_dir=str(tmp_path / "missing")))


@pytest.mark.parametrize("change, message", [
    ({"store_shards": 0}, "store_shards=0: must be ≥ 1"),
    ({"update_wait_timeout_s": 0}, "update_wait_timeout_s=0.0: must be > 0 seconds"),
    ({"update_delay_s": -1}, "update_delay_s=-1.0: must be ≥ 0 seconds"),
    ({"stream_interval_s": -0.5}, "stream_interval_s=-0.5: must be ≥ 0 seconds"),
    ({"default_max_tokens": 600}, "default_max_tokens=600: must be ≤ max_tokens_limit=512"),
    ({"deployment_options": {"Decoder": {}}}, "deployment_options names ['Decoder']"),
    ({"api_key": "k", "api_key_env": "K"}, "api_key and api_key_env are both set"),
    ({"max_batch": 3}, "max_batch"),
])
def test_bad_app_args_are_refused_naming_the_field(change, message):
    with pytest.raises(ValidationError) as info:
        AppArgs.model_validate(change)
    assert message in str(info.value)


def test_the_grafana_dashboard_charts_only_metrics_the_app_exports():
    dashboard = json.loads((ROOT / "infra" / "grafana-rxt.json").read_text())
    exported = set(re.findall(r'"(rxt_[a-z_]+)"', (ROOT / "serve" / "metrics.py").read_text()))
    charted = {re.sub(r"_(total|bucket)$", "", name) for panel in dashboard["panels"]
               for target in panel["targets"] for name in re.findall(r"ray_(rxt_[a-z_]+)", target["expr"])}
    assert charted and charted <= exported, charted - exported
    assert exported <= charted, exported - charted  # every metric the app exports has a panel
