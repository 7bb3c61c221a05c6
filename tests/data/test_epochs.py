"""The training data order: a function of (seed, epoch, workers), each row once per epoch, and a
resume at (epoch, micro-batch) that reads on exactly where an uninterrupted run would."""

import numpy as np
import pytest

from rxt_dist.data import (
    PrepareConfig,
    ShardError,
    SyntheticConfig,
    prepare_dataset,
    read_batches,
    training_rows,
    worker_rows,
)

COLUMNS = ["conversation_id", "query_ids", "answer_ids"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """100 conversations, 80 of them in 10 training shards of 8 (local: workers open the files)."""
    url = str(tmp_path_factory.mktemp("epochs") / "data")
    prepare_dataset(PrepareConfig(out=url, conversations=100, synthetic=SyntheticConfig.from_name("default", seed=2),
                                  vocab_size=512, valid_fraction=0.1, test_fraction=0.1, shard_rows=8))
    return url


def ids_read(rows, seed, epoch, rank, world, shuffle_buffer=16, micro=4, skip_batches=0):
    ids = worker_rows(rows, seed, epoch, rank, world, shuffle_buffer)
    return [cid for batch in read_batches(rows, ids[skip_batches * micro:], micro) for cid in batch["conversation_id"]]


def test_every_row_is_read_once_per_epoch_by_one_worker_in_an_order_set_by_seed_and_epoch(dataset):
    rows = training_rows(dataset, COLUMNS)
    assert rows.num_rows == 80 and len(rows.files) == 10
    epoch0 = [ids_read(rows, 0, 0, rank, 3) for rank in range(3)]
    assert [len(w) for w in epoch0] == [24, 24, 24]  # 80 // 3 = 26 rows each, in whole micro-batches of 4
    seen = [cid for w in epoch0 for cid in w]
    assert len(set(seen)) == len(seen)  # no row twice in an epoch
    assert epoch0 == [ids_read(rows, 0, 0, rank, 3) for rank in range(3)]  # the same again
    assert ids_read(rows, 0, 1, 0, 3) != epoch0[0]  # a new order each epoch
    assert ids_read(rows, 1, 0, 0, 3) != epoch0[0]  # and for each seed
    in_order = [cid for batch in read_batches(rows, worker_rows(rows, 0, 0, 0, 1, 0), 8)
                for cid in batch["conversation_id"]]
    assert in_order == ids_read(rows, 5, 7, 0, 1, shuffle_buffer=0, micro=8)  # 0: manifest order, every epoch


def test_a_resume_at_a_micro_batch_reads_on_where_the_uninterrupted_run_does(dataset):
    rows = training_rows(dataset, COLUMNS)
    for rank in range(2):
        whole = ids_read(rows, 3, 2, rank, 2)
        assert ids_read(rows, 3, 2, rank, 2, skip_batches=3) == whole[3 * 4:]


def test_the_text_view_reads_conversations_as_token_rows(dataset):
    rows = training_rows(dataset, ["ids"], text=True)
    batch = next(read_batches(rows, worker_rows(rows, 0, 0, 0, 1, 0), 2))
    first = next(read_batches(training_rows(dataset, COLUMNS), worker_rows(rows, 0, 0, 0, 1, 0), 1))
    q, a = first["query_ids"][0], first["answer_ids"][0]
    assert batch["ids"][0] == [t for pair in zip(q, a) for part in pair for t in part]


def test_a_shard_replaced_after_the_check_is_named(dataset, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    rows = training_rows(str(copy), COLUMNS)
    shard = rows.files[0].path
    pq.write_table(pq.read_table(shard).slice(0, 3), shard)
    with pytest.raises(ShardError, match=f"{shard}: has 3 rows but the manifest says 8"):
        list(read_batches(rows, np.arange(8), 4))
