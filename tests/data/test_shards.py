"""Writing and reading shards (single process, memory:// and a temp folder)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rxt_dist.data.writer as writer
from rxt_dist.data import (
    CONVERSATION_SCHEMA,
    SCHEMA_VERSION,
    Conversation,
    ShardError,
    SyntheticConfig,
    TextCodec,
    Turn,
    generate_splits,
    index_shards,
    iter_conversations,
    iter_text,
    load_tokenizer,
    prepare_dataset,
    ray_dataset,
    read_manifest,
    tokenize_conversations,
    train_tokenizer,
    write_shards,
)
from rxt_dist.data.reader import validate_split_files
from rxt_dist.data.storage import resolve, temp_name
from tests.data.conftest import rewrite_shard, set_token, small_config


def _written(url: str, n: int = 60, **kw):
    cfg = SyntheticConfig.from_name("debug", seed=1)
    splits = generate_splits(cfg, {"train": n, "valid": 10})
    texts = [s for c in splits["train"] for t in c.turns for s in (t.query, t.answer)]
    tok = train_tokenizer(texts, 600)
    return splits, tok, write_shards(url, splits, tok, generator=cfg.to_dict(), **kw)


def test_round_trip_through_memory_url(memory_url):
    splits, tok, manifest = _written(memory_url, shard_rows=16)
    expected = tokenize_conversations(splits["train"], TextCodec(tok))
    assert list(iter_conversations(memory_url, "train")) == expected
    assert [len(list(iter_conversations(memory_url, s))) for s in ("train", "valid")] == [60, 10]
    assert load_tokenizer(memory_url).to_str() == tok.to_str()


def test_manifest_describes_the_dataset(memory_url):
    splits, tok, manifest = _written(memory_url, shard_rows=16)
    m = read_manifest(memory_url)
    assert m == manifest
    assert m.schema_version == SCHEMA_VERSION and m.vocab_size == tok.get_vocab_size()
    assert m.counts == {"train": 60, "valid": 10}
    assert m.splits["train"].turns == sum(len(c.turns) for c in splits["train"])
    assert [f.path for f in m.splits["train"].files] == [f"train/part-{i:05d}.parquet" for i in range(4)]
    assert [f.rows for f in m.splits["train"].files] == [16, 16, 16, 12]
    assert SyntheticConfig.from_dict(m.generator) == SyntheticConfig.from_name("debug", seed=1)
    fs, root = resolve(memory_url)
    with fs.open(root + "/tokenizer.json", "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == m.tokenizer_sha256
    assert pq.read_schema(fs.open(m.files("train")[0], "rb")).equals(CONVERSATION_SCHEMA, check_metadata=False)


def test_prepare_is_deterministic_for_a_seed(tmp_path):
    a = prepare_dataset(small_config(str(tmp_path / "a")))
    b = prepare_dataset(small_config(str(tmp_path / "b")))
    assert a.tokenizer_sha256 == b.tokenizer_sha256
    for split in ("train", "valid", "test"):
        assert list(iter_conversations(str(tmp_path / "a"), split)) == list(iter_conversations(str(tmp_path / "b"), split))
    for f in a.splits["train"].files:
        assert (tmp_path / "a" / f.path).read_bytes() == (tmp_path / "b" / f.path).read_bytes()


def test_interrupted_write_leaves_no_manifest_and_no_partial_shard(tmp_path, monkeypatch):
    real = writer._write_table
    calls = []

    def fail_on_second(fs, path, table):
        calls.append(path)
        if len(calls) == 2:
            # die halfway through writing this shard
            with fs.open(temp_name(path), "wb") as f:
                f.write(b"PAR1 half a shard")
            raise KeyboardInterrupt("simulated kill")
        real(fs, path, table)

    monkeypatch.setattr(writer, "_write_table", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        _written(str(tmp_path), shard_rows=16)
    assert not (tmp_path / "manifest.json").exists()
    assert [p.name for p in (tmp_path / "train").iterdir() if not p.name.startswith(".tmp-")] == ["part-00000.parquet"]
    with pytest.raises(FileNotFoundError, match="manifest.json: manifest missing"):
        read_manifest(str(tmp_path))
    monkeypatch.setattr(writer, "_write_table", real)
    _written(str(tmp_path), shard_rows=16)  # a rerun completes over the debris
    assert read_manifest(str(tmp_path)).counts["train"] == 60
    assert not [p for p in (tmp_path / "train").iterdir() if p.name.startswith(".tmp-")]


def test_atomic_write_removes_its_temp_file_on_error(tmp_path, monkeypatch):
    def broken(table, f, **kw):
        f.write(b"PAR1")
        raise OSError("disk full")

    monkeypatch.setattr(writer.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        _written(str(tmp_path))
    assert not list((tmp_path / "train").iterdir())
    assert not (tmp_path / "manifest.json").exists()


def test_existing_dataset_is_kept_unless_overwrite(tmp_path):
    _written(str(tmp_path), n=60, shard_rows=8)
    assert len(list((tmp_path / "train").iterdir())) == 8
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        _written(str(tmp_path))
    _written(str(tmp_path), n=30, shard_rows=16, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [f"part-{i:05d}.parquet" for i in range(2)]
    assert read_manifest(str(tmp_path)).counts["train"] == 30


def test_bad_conversations_are_refused_before_writing(memory_url):
    tok = train_tokenizer(["hello there"], 300)
    bad = {"train": [Conversation("c1", [Turn("q", "a", kind="chitchat")])]}
    with pytest.raises(ValueError, match="conversation 'c1' turn 0: kind='chitchat'"):
        write_shards(memory_url, bad, tok)
    with pytest.raises(ValueError, match="split name 'Train!'"):
        write_shards(memory_url, {"Train!": []}, tok)
    with pytest.raises(ValueError, match="conversation 'c2' in split 'train': has no turns"):
        write_shards(memory_url, {"train": [Conversation("c2", [])]}, tok)
    fs, root = resolve(memory_url)
    assert not fs.exists(root + "/manifest.json")


# ---------------------------------------------------------------- bad inputs at read

_READERS = {
    "iter": lambda url, split: list(iter_conversations(url, split)),
    "ray": lambda url, split: ray_dataset(url, split),  # validation runs on the driver, before Ray
}


@pytest.fixture(params=sorted(_READERS))
def read(request):
    return _READERS[request.param]


def test_missing_manifest(read, memory_url):
    with pytest.raises(FileNotFoundError, match=f"{memory_url}/manifest.json: manifest missing"):
        read(memory_url, "train")


def test_missing_column(read, small_dataset):
    name = rewrite_shard(small_dataset, "train", 1, lambda t: t.drop_columns(["answer_ids"]))
    with pytest.raises(ShardError, match=f"train/{name}: missing column 'answer_ids'"):
        read(small_dataset, "train")


def test_wrong_column_type(read, small_dataset):
    def as_strings(t):
        i = t.schema.get_field_index("query_ids")
        return t.set_column(i, "query_ids", pa.array([str(x) for x in t["query_ids"].to_pylist()]))

    name = rewrite_shard(small_dataset, "train", 0, as_strings)
    with pytest.raises(ShardError, match=f"train/{name}: column 'query_ids' has type string, expected list<list<int32>>"):
        read(small_dataset, "train")


def test_empty_shard(read, small_dataset):
    name = rewrite_shard(small_dataset, "valid", 1, lambda t: t.slice(0, 0))
    with pytest.raises(ShardError, match=f"valid/{name}: empty shard"):
        read(small_dataset, "valid")


def test_corrupt_file(read, small_dataset):
    fs, _ = resolve(small_dataset)
    path = read_manifest(small_dataset).files("test")[1]
    fs.pipe(path, b"this is not parquet at all")
    with pytest.raises(ShardError, match=r"test/part-00001.parquet: not a readable Parquet file"):
        read(small_dataset, "test")


@pytest.mark.parametrize("bad_id", [-1, "vocab"])
def test_token_id_outside_vocabulary_names_file_and_row(read, small_dataset, bad_id):
    vocab = read_manifest(small_dataset).vocab_size
    value = vocab if bad_id == "vocab" else bad_id
    name = rewrite_shard(small_dataset, "train", 2, lambda t: set_token(t, "answer_ids", 5, 1, 0, value))
    with pytest.raises(ShardError, match=rf"train/{name}: row 5 \(conversation_id='train-\d+'\): column 'answer_ids' turn 1: token id {value} outside the vocabulary \[0, {vocab}\)"):
        read(small_dataset, "train")


def test_shard_replaced_with_other_row_count(read, small_dataset):
    name = rewrite_shard(small_dataset, "train", 0, lambda t: t.slice(0, 3))
    with pytest.raises(ShardError, match=f"train/{name}: has 3 rows but the manifest says"):
        read(small_dataset, "train")


def test_missing_shard(read, small_dataset):
    fs, _ = resolve(small_dataset)
    path = read_manifest(small_dataset).files("train")[3]
    fs.rm(path)
    with pytest.raises(FileNotFoundError, match="train/part-00003.parquet: shard listed in the manifest is missing"):
        read(small_dataset, "train")


def test_turn_columns_must_agree(small_dataset):
    def drop_a_turn(t):
        i = t.schema.get_field_index("kind")
        kinds = t["kind"].to_pylist()
        kinds[4] = kinds[4][:-1]
        return t.set_column(i, "kind", pa.array(kinds, pa.list_(pa.string())))

    name = rewrite_shard(small_dataset, "train", 0, drop_a_turn)
    with pytest.raises(ShardError, match=rf"train/{name}: row 4 .*column 'kind' has \d+ entries for \d+ turns"):
        list(iter_conversations(small_dataset, "train"))


def test_unknown_split_and_corrupt_manifest(small_dataset):
    with pytest.raises(KeyError, match="no split 'dev'"):
        list(iter_conversations(small_dataset, "dev"))
    fs, root = resolve(small_dataset)
    fs.pipe(root + "/manifest.json", b'{"schema_version": 99}')
    with pytest.raises(ValueError, match="manifest.json: schema_version=99"):
        read_manifest(small_dataset)
    fs.pipe(root + "/manifest.json", b'{"schema_version": 1, "splits": {}}')
    with pytest.raises(ValueError, match="manifest.json: malformed manifest .*vocab_size"):
        read_manifest(small_dataset)


# ---------------------------------------------------------------- shards written by a user


def test_user_written_shards_with_plain_pyarrow(tmp_path):
    """The docs/data.md recipe: three required columns, int64 ids, then index_shards."""
    tok = train_tokenizer(["my name is ada .", "hello , ada ."] * 5, 300)
    codec = TextCodec(tok)
    (tmp_path / "train").mkdir()
    (tmp_path / "tokenizer.json").write_text(tok.to_str())
    table = pa.table(
        {
            "conversation_id": ["a", "b"],
            "query_ids": [[codec.encode("my name is ada .")], [codec.encode("hello"), codec.encode("ada")]],
            "answer_ids": [[codec.encode("hello , ada .")], [codec.encode("hello"), codec.encode(".")]],
        }
    )
    pq.write_table(table, tmp_path / "train" / "part-00000.parquet")
    m = index_shards(str(tmp_path))
    assert m.counts == {"train": 2} and m.splits["train"].turns == 3
    convs = list(iter_conversations(str(tmp_path), "train"))
    assert convs[0].turns[0].query == "my name is ada ." and convs[0].turns[0].kind == "unknown"
    assert [len(c.turns) for c in convs] == [1, 2]
    bad = pa.table({"conversation_id": ["c"], "query_ids": [[[10**6]]], "answer_ids": [[[5]]]})
    pq.write_table(bad, tmp_path / "train" / "part-00001.parquet")
    with pytest.raises(ShardError, match="part-00001.parquet: row 0 .*token id 1000000 outside"):
        index_shards(str(tmp_path), overwrite=True)


def test_text_view_and_extra_text(tmp_path):
    extra = tmp_path / "story.txt"
    extra.write_text("once upon a time\nthere was a cat .\n\nthe end .\n")
    out = str(tmp_path / "ds")
    m = prepare_dataset(dataclasses.replace(small_config(out), extra_text=(str(extra),)))
    assert m.splits["text"].kind == "text" and m.counts["text"] == 2
    rows = list(iter_text(out, "train"))
    assert len(rows) == m.counts["train"] + 2
    convs = list(iter_conversations(out, "train"))
    assert rows[0] == (convs[0].text(), convs[0].token_ids())
    codec = TextCodec.load(out)
    assert rows[-2][0] == "once upon a time there was a cat ." and codec.decode(rows[-2][1]) == rows[-2][0]
    assert len(list(iter_text(out, "valid"))) == m.counts["valid"]  # extra text belongs to train only
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["sources"]["extra_text"] == [str(extra)]


# ---------------------------------------------------------------- recall_seen


def test_recall_seen_round_trips_through_shards(small_dataset):
    cfg = small_config(small_dataset)
    expected = generate_splits(cfg.synthetic, cfg.split_counts(cfg.conversations))
    flags = {}
    for split, convs in expected.items():
        read = list(iter_conversations(small_dataset, split))
        flags[split] = [t.recall.seen for c in read for _, t in c.recall_turns]
        assert flags[split] == [t.recall.seen for c in convs for _, t in c.recall_turns]
    assert all(flags["train"])
    held_out = flags["valid"] + flags["test"]
    assert True in held_out and False in held_out  # the open space's seen share and held-out values


def test_dataset_without_recall_seen_reads_every_value_as_seen(small_dataset):
    """Datasets written before the column (closed value space: every value was in training)."""
    rewrite_shard(small_dataset, "valid", 0, lambda t: t.drop_columns(["recall_seen"]))
    m = read_manifest(small_dataset)
    fs, _ = resolve(small_dataset)
    validate_split_files(fs, m.files("valid"), "conversations", m.vocab_size)  # ray_dataset's check passes
    convs = list(iter_conversations(small_dataset, "valid"))
    rows = read_manifest(small_dataset).splits["valid"].files[0].rows
    assert all(t.recall.seen for c in convs[:rows] for _, t in c.recall_turns)
    assert not all(t.recall.seen for c in convs for _, t in c.recall_turns)  # the other shard still has it


def test_recall_seen_without_the_recall_columns_is_refused(read, small_dataset):
    recall = [c for c in CONVERSATION_SCHEMA.names if c.startswith("recall_") and c != "recall_seen"]
    name = rewrite_shard(small_dataset, "train", 0, lambda t: t.drop_columns(recall))
    with pytest.raises(ShardError, match=f"train/{name}: has 'recall_seen' but none of"):
        read(small_dataset, "train")
