
import pytest

from rxt_dist.data import PrepareConfig, SyntheticConfig, prepare_dataset


def make_dataset(path, conversations: int, seed: int = 0, **synthetic) -> str:
    """A small synthetic dialogue dataset at ``path`` (local, so Ray Data can read it)."""
    cfg = PrepareConfig(
        out=str(path),
        conversations=conversations,
        synthetic=SyntheticConfig.from_name("default", seed=seed, **synthetic),
        vocab_size=512,
        valid_fraction=0.1,
        test_fraction=0.1,
    )
    prepare_dataset(cfg)
    return str(path)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory.mktemp("data") / "dialogue", 200)
