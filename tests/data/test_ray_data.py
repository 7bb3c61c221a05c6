"""Ray Data over the shards: each training worker gets its own rows, none twice, none lost."""

from __future__ import annotations

import dataclasses
import os
import threading

import numpy as np
import pytest

from rxt_dist.data import ShardError, iter_conversations, prepare_dataset, ray_dataset, ray_text_dataset
from tests.data.conftest import small_config

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """A local folder (Ray's read tasks run in other processes: memory:// cannot work)."""
    root = tmp_path_factory.mktemp("ray-data")
    extra = root / "extra.txt"
    extra.write_text("first document .\n\nsecond document .\n")
    out = str(root / "ds")
    prepare_dataset(dataclasses.replace(small_config(out, conversations=200, shard_rows=16), extra_text=(str(extra),)))
    return out


def _consume(iterators) -> list[dict[str, list]]:
    """Iterate every split at once, like Ray Train workers (streaming_split needs all consumers);
    returns each consumer's rows as {conversation_id: query_ids turns}."""
    got: list[dict[str, list]] = [{} for _ in iterators]
    errors: list[BaseException] = []

    def run(k, it):
        try:
            for batch in it.iter_batches(batch_size=8, batch_format="numpy"):
                for cid, turns in zip(batch["conversation_id"], batch["query_ids"]):
                    assert cid not in got[k], f"{cid} twice"
                    got[k][cid] = turns
        except BaseException as e:  # surfaced below: a thread's exception is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k, it)) for k, it in enumerate(iterators)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return got


@pytest.mark.parametrize("equal", [True, False])
def test_streaming_split_covers_every_row_once(ray_cluster, dataset, equal):
    """equal=True is what Ray Train's get_dataset_shard uses (rows cut evenly; 160 rows here, so
    none dropped); equal=False hands out whole blocks (Ray packs small files into one block, so
    one worker may get all of them)."""
    convs = {c.conversation_id: c for c in iter_conversations(dataset, "train")}
    assert len(convs) == 160
    ds = ray_dataset(dataset, "train", columns=["conversation_id", "query_ids", "answer_ids"])
    a, b = _consume(ds.streaming_split(2, equal=equal))
    assert not a.keys() & b.keys() and sorted(a.keys() | b.keys()) == sorted(convs)  # each row once
    if equal:
        assert len(a) == len(b) == 80
    # numpy batches: per conversation an object array holding one int32 array per turn
    for cid, turns in {**a, **b}.items():
        assert [t.tolist() for t in turns] == [t.query_ids for t in convs[cid].turns]
        assert all(t.dtype == np.int32 for t in turns)


def test_unknown_column_is_refused_before_reading(dataset):
    with pytest.raises(ShardError, match=r"part-00000.parquet: no column \['tokens'\]"):
        ray_dataset(dataset, "valid", columns=["conversation_id", "tokens"])


def test_text_view_adds_extra_text_to_train(ray_cluster, dataset):
    train = ray_text_dataset(dataset, "train")
    rows = train.take_all()
    n_train = sum(1 for _ in iter_conversations(dataset, "train"))
    assert len(rows) == n_train + 2
    assert {r["text"] for r in rows if r["source"] != "conversation"} == {"first document .", "second document ."}
    conv = next(iter_conversations(dataset, "train"))
    assert {"text": conv.text(), "ids": conv.token_ids()} in [
        {"text": r["text"], "ids": list(r["ids"])} for r in rows if r["source"] == "conversation"
    ]
