"""The one atomic write (vdm_jax.io): concurrent writers of one path both complete and the file is
one writer's whole content; a failed write leaves the old file; publish() for path-based
writers; stale temporaries are removable; a JSON object read as input, or one line on what is
wrong with it."""

import multiprocessing
import os

import numpy as np
import pytest

from vdm_jax import io

SIZE = 4 << 20  # 4 MiB: a write spans many syscalls, so interleaving would show


def _writer(path: str, fill: int, rounds: int) -> None:
    data = bytes([fill]) * SIZE
    for _ in range(rounds):
        io.write_bytes(path, data)


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    path = tmp_path / "shared.bin"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), fill, 20)) for fill in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    data = path.read_bytes()
    assert len(data) == SIZE and data in (bytes([1]) * SIZE, bytes([2]) * SIZE)
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]  # no temporary left


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.json"
    io.write_json(path, {"a": 1})

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        io.atomic_write(path, boom)
    assert io.read_json(path) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_publish_and_npz_and_stale_temporaries(tmp_path):
    target = tmp_path / "sub" / "x.bin"
    with io.publish(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc"
    io.write_npz(tmp_path / "a.npz", {"x": np.arange(3)})
    with np.load(tmp_path / "a.npz") as npz:
        np.testing.assert_array_equal(npz["x"], np.arange(3))
    stale = tmp_path / f".a.npz.xyz{io.TMP_SUFFIX}"
    stale.write_bytes(b"left by a killed writer")
    assert io.remove_stale_temporaries(tmp_path) == [stale] and not stale.exists()
    assert os.path.exists(tmp_path / "a.npz")


def test_read_json_object(tmp_path):
    good = tmp_path / "good.json"
    io.write_json(good, {"a": 1})
    assert io.read_json_object(good, "config") == {"a": 1}
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe")
    unreadable = "is not readable JSON"
    for name, why in [("list.json", "holds a JSON list, expected an object"),
                      ("broken.json", unreadable), ("binary.json", unreadable),
                      ("absent.json", unreadable)]:
        with pytest.raises(ValueError, match=f"^settings file .*{name} {why}"):
            io.read_json_object(tmp_path / name, "settings file")
