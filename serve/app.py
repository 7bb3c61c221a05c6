"""The Ray Serve application: ``serve run serve/config.yaml`` (import path ``serve.app:build_app``).

Three deployments, each with its own replicas and autoscaling::

    Ingress (HTTP, no model) ──► Generator     (decoder replicas, continuous batching)
                            └──► MemoryUpdater (encoder + memory attention, batched)
    Session store: detached Ray actors (sharded by session id), persisted through fsspec

Nothing runs at import; :func:`build_app` checks the model directory and binds the graph.
"""

import logging
import os

import fsspec

from ray.serve import Application

from rxt_dist.model import RxTConfig, load_config, load_tokenizer
from rxt_dist.serving.demo import write_demo_model_dir
from serve.args import MAKE_DEMO_HINT, AppArgs, absolute_url
from serve.generator import Generator
from serve.ingress import Ingress
from serve.updater import MemoryUpdater

logger = logging.getLogger("ray.serve")

DEMO_MODEL_ID = "rxt-debug-random"


def resolve_args(args: AppArgs) -> tuple[AppArgs, str]:
    """Make paths absolute, write the random demo model when asked for, check the model
    directory. Returns the resolved args and the served model id."""
    if args.random_demo_model:
        model_dir = write_demo_model_dir(absolute_url(args.demo_dir))
        logger.warning(
            "random_demo_model: serving a RANDOMLY INITIALISED 'debug' model from %s — answers "
            "are noise. Set model_dir=<exported model directory> to serve a trained model.", model_dir)
        default_id = DEMO_MODEL_ID
    else:
        model_dir = absolute_url(args.model_dir)
        default_id = os.path.basename(model_dir.rstrip("/")) or "rxt"
        fs, root = fsspec.core.url_to_fs(model_dir)
        if not fs.exists(f"{root.rstrip('/')}/config.json"):
            raise FileNotFoundError(f"model_dir={model_dir}: no trained model there (it has no config.json); "
                                    f"{MAKE_DEMO_HINT}, or point model_dir at another exported model")
    cfg = load_config(model_dir)
    if not isinstance(cfg, RxTConfig):
        raise ValueError(f"model_dir={model_dir}: holds a stateless baseline ({type(cfg).__name__}); "
                         "the server needs an RxT model (it keeps per-session memory)")
    if load_tokenizer(model_dir, cfg.vocab_size) is None:
        raise ValueError(f"model_dir={model_dir}: has no tokenizer.json; export the model with its "
                         "tokenizer so the server can encode messages")
    resolved = args.model_copy(update={"model_dir": model_dir, "store_url": absolute_url(args.store_url)})
    return resolved, args.model_name or default_id


def build_app(args: AppArgs) -> Application:
    """The application graph for ``args`` (a dict from a Serve config file is validated into
    :class:`AppArgs` by Serve)."""
    if isinstance(args, dict):
        args = AppArgs.model_validate(args)
    args, model_id = resolve_args(args)
    logger.info("serving %s as '%s'; sessions in %s (%d shard(s))", args.model_dir, model_id,
                args.store_url, args.store_shards)
    options = args.deployment_options
    generator = Generator.options(**options.get("Generator", {})).bind(args)
    updater = MemoryUpdater.options(**options.get("MemoryUpdater", {})).bind(args, generator)
    return Ingress.options(**options.get("Ingress", {})).bind(generator, updater, args, model_id)
