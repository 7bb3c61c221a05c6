
import pytest

from rxt_dist.data import PrepareConfig, SyntheticConfig, prepare_dataset


def make_dataset(path, conversations: int, seed: int = 0, shard_rows: int = 2048, **synthetic) -> str:
    """A small synthetic dialogue dataset at ``path`` (local, so Ray's workers can read it)."""
    cfg = PrepareConfig(
        out=str(path),
        conversations=conversations,
        synthetic=SyntheticConfig.from_name("default", seed=seed, **synthetic),
        vocab_size=512,
        valid_fraction=0.1,
        test_fraction=0.1,
        shard_rows=shard_rows,
    )
    prepare_dataset(cfg)
    return str(path)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory.mktemp("data") / "dialogue", 200)


@pytest.fixture
def dataset_without_recall(tmp_path, dataset) -> str:
    """A copy of ``dataset`` whose train shards lack the synthetic recall metadata (as real
    dialogue data does)."""
    import shutil

    import pyarrow.parquet as pq

    data = tmp_path / "no-recall"
    shutil.copytree(dataset, data)
    for shard in (data / "train").glob("*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns([c for c in table.column_names if c.startswith("recall_")]), shard)
    return str(data)
