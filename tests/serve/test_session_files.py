"""The session store's files: a local directory written with os calls and any fsspec
filesystem leave the same layout, and a failed write leaves nothing half-written."""

import pytest
from fsspec.implementations.local import LocalFileSystem

from rxt_dist.serving.session_files import SessionFiles, _FsspecFiles
from rxt_dist.serving.session_records import new_session_id


def files_at(root, backend: str) -> SessionFiles:
    files = SessionFiles(str(root))
    assert files.local  # a plain directory takes the os-call path
    if backend == "fsspec":
        files.ops = _FsspecFiles(LocalFileSystem())
    return files


BACKENDS = pytest.mark.parametrize("backend", ["os", "fsspec"])


@BACKENDS
def test_a_session_is_written_replaced_and_removed_the_same_way_by_both(tmp_path, backend):
    files = files_at(tmp_path, backend)
    sid = new_session_id()
    assert files.read_meta(sid) is None
    files.write_session(sid, 0, '{"version": 0}', b"stm0")
    files.write_session(sid, 1, '{"version": 1}', b"stm1", drop_version=0)
    files.write_session(sid, 1, '{"version": 1, "pending": 1}', None)
    assert sorted(p.name for p in (tmp_path / sid).iterdir()) == ["meta.json", "stm-00000001.safetensors"]
    assert files.read_meta(sid) == '{"version": 1, "pending": 1}'
    assert files.read_stm(sid, 1) == b"stm1"
    with pytest.raises(ValueError, match="names memory version 0 but .*stm-00000000.safetensors is missing"):
        files.read_stm(sid, 0)
    files.write_link("ab" * 32, sid)
    assert files.read_link("ab" * 32) == sid and files.read_link("cd" * 32) is None
    assert sorted(files.names()) == sorted([sid, "_transcripts"])
    files.remove_link("ab" * 32)
    files.remove_link("ab" * 32)  # already gone: nothing to do
    files.remove_session(sid)
    files.remove_session(sid)
    assert files.read_meta(sid) is None and files.read_link("ab" * 32) is None
    assert sorted(files.names()) == ["_transcripts"]


@BACKENDS
def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path, backend):
    files = files_at(tmp_path, backend)
    sid = new_session_id()
    files.write_session(sid, 0, '{"version": 0}', b"stm0")
    with pytest.raises(TypeError):  # the temporary file is open when the write fails
        files.write_session(sid, 1, '{"version": 1}', "not bytes", drop_version=0)
    assert files.read_meta(sid) == '{"version": 0}' and files.read_stm(sid, 0) == b"stm0"
    assert not [p.name for p in (tmp_path / sid).iterdir() if p.name.startswith(".tmp")]
