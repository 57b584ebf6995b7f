"""Shard specs (braces, '::', lists, directories, pipe:) and reading tar shards, good and bad."""
from __future__ import annotations

import io
import logging
import tarfile

import pytest
import webdataset

from multimodal.data.pipeline.shard_reader import TarFormatError, expand_shards, iterate_tar, read_shard


def write_shard(path, num_samples: int, prefix: str = "s") -> list[str]:
    keys = [f"{prefix}{index:04d}" for index in range(num_samples)]
    with webdataset.TarWriter(str(path)) as writer:
        for key in keys:
            writer.write({"__key__": key, "txt": f"caption of {key}", "json": b'{"label": 1}'})
    return keys


@pytest.fixture
def shard_dir(tmp_path):
    for index in range(3):
        write_shard(tmp_path / f"train-{index:06d}.tar", 2, prefix=f"k{index}-")
    return tmp_path


def test_brace_expansion_keeps_order(shard_dir):
    urls = expand_shards(str(shard_dir / "train-{000000..000002}.tar"))
    assert urls == [str(shard_dir / f"train-{i:06d}.tar") for i in range(3)]


def test_double_colon_and_list_specs_join(shard_dir):
    first, rest = str(shard_dir / "train-000000.tar"), str(shard_dir / "train-{000001..000002}.tar")
    expected = [str(shard_dir / f"train-{i:06d}.tar") for i in range(3)]
    assert expand_shards(f"{first}::{rest}") == expected
    assert expand_shards([first, rest]) == expected


def test_directory_lists_its_tar_files_sorted(shard_dir):
    (shard_dir / "notes.txt").write_text("not a shard")
    assert expand_shards(str(shard_dir)) == [str(shard_dir / f"train-{i:06d}.tar") for i in range(3)]
    empty = shard_dir / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no"):
        expand_shards(str(empty))


def test_missing_files_are_dropped_with_a_warning_and_all_missing_is_an_error(shard_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="multimodal.data.pipeline.shard_reader"):
        urls = expand_shards(str(shard_dir / "train-{000000..000004}.tar"))
    assert len(urls) == 3
    assert "2 of 5 shards" in caplog.text
    with pytest.raises(ValueError, match="none of the 2 shards"):
        expand_shards(str(shard_dir / "missing-{0..1}.tar"))
    with pytest.raises(ValueError, match="names no shard"):
        expand_shards("::")


def test_pipe_specs_are_not_checked_and_read_a_stream(shard_dir):
    spec = f"pipe:cat {shard_dir}/train-{{000000..000001}}.tar"
    urls = expand_shards(spec)
    assert urls == [f"pipe:cat {shard_dir}/train-00000{i}.tar" for i in range(2)]
    problems = []
    samples = list(read_shard(urls[1], problems))
    assert problems == []
    assert [s["__key__"] for s in samples] == ["k1-0000", "k1-0001"]
    assert samples[0]["txt"] == b"caption of k1-0000"


def test_read_shard_groups_files_by_key(shard_dir):
    problems = []
    samples = list(read_shard(str(shard_dir / "train-000002.tar"), problems))
    assert [sorted(s) for s in samples] == [["__key__", "__url__", "json", "txt"]] * 2
    assert problems == []


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty_shard"), (b"this is not a tar file" * 40, "unreadable_shard")],
)
def test_empty_and_non_tar_files_are_reported(tmp_path, content, reason):
    path = tmp_path / "bad.tar"
    path.write_bytes(content)
    problems = []
    assert list(read_shard(str(path), problems)) == []
    assert [p.reason for p in problems] == [reason]


def test_tar_without_samples_is_empty(tmp_path):
    path = tmp_path / "meta-only.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("__meta__.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    problems = []
    assert list(read_shard(str(path), problems)) == []
    assert [p.reason for p in problems] == ["empty_shard"]
    with tarfile.open(tmp_path / "no-members.tar", "w"):
        pass
    problems = []
    assert list(read_shard(str(tmp_path / "no-members.tar"), problems)) == []
    assert [p.reason for p in problems] == ["empty_shard"]


def test_truncated_shard_keeps_complete_samples(tmp_path):
    path = tmp_path / "whole.tar"
    with webdataset.TarWriter(str(path)) as writer:
        for index in range(4):
            writer.write({"__key__": f"k{index}", "bin": bytes(5000)})
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    problems = []
    samples = list(read_shard(str(cut), problems))
    assert 1 <= len(samples) < 4
    assert all(len(s["bin"]) == 5000 for s in samples)
    assert [p.reason for p in problems] == ["truncated_shard"]


def test_failing_pipe_is_unreadable(tmp_path):
    problems = []
    assert list(read_shard(f"pipe:cat {tmp_path}/does-not-exist.tar", problems)) == []
    assert len(problems) == 1 and problems[0].reason in ("empty_shard", "unreadable_shard")


def build_tar(format: int, compression: str = "") -> tuple[bytes, list[tuple[str, bytes]]]:
    """A tar with long, prefixed and non-ASCII names, an empty file, a directory and a link."""
    members = [
        ("short.txt", b"hello"),
        ("d" * 90 + "/" + "n" * 60 + ".jpg", bytes(range(256)) * 3),  # needs ustar's prefix or a long name
        ("x" * 150 + ".json", b'{"a": 1}'),  # longer than 100 characters: pax or GNU long name
        ("caf\u00e9/\u00e9t\u00e9.txt", "\u00e9t\u00e9".encode()),
        ("empty.bin", b""),
        ("exact.bin", bytes(1024)),
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}", format=format) as tar:
        directory = tarfile.TarInfo("folder")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.txt")
        link.type = tarfile.SYMTYPE
        link.linkname = "short.txt"
        tar.addfile(link)
    return buffer.getvalue(), members


@pytest.mark.parametrize("format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_iterate_tar_reads_what_tarfile_writes(format):
    if format == tarfile.USTAR_FORMAT:
        data, members = build_tar(tarfile.PAX_FORMAT)
        members = [m for m in members if len(m[0].encode()) <= 100 or "/" in m[0] and len(m[0]) < 250]
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=format) as tar:
            for name, content in members:
                if not name.isascii():
                    continue
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        data, members = buffer.getvalue(), [m for m in members if m[0].isascii()]
    else:
        data, members = build_tar(format)
    assert list(iterate_tar(io.BytesIO(data))) == members


def test_iterate_tar_reads_gzip_and_rejects_what_is_not_a_tar():
    data, members = build_tar(tarfile.PAX_FORMAT, compression="gz")
    assert list(iterate_tar(io.BytesIO(data))) == members
    with pytest.raises(TarFormatError, match="empty"):
        list(iterate_tar(io.BytesIO(b"")))
    with pytest.raises(TarFormatError, match="not a tar"):
        list(iterate_tar(io.BytesIO(b"PK\x03\x04" + bytes(600))))
    plain, _ = build_tar(tarfile.PAX_FORMAT)
    inside_a_member = plain.index(bytes(range(256))) + 100
    for cut in (100, 700, inside_a_member):
        with pytest.raises(TarFormatError, match="unexpected end"):
            list(iterate_tar(io.BytesIO(plain[:cut])))


def test_iterate_tar_matches_webdataset_on_its_own_shards(shard_dir):
    from webdataset.tariterators import tar_file_iterator

    path = shard_dir / "train-000001.tar"
    with open(path, "rb") as stream:
        expected = [(m["fname"], m["data"]) for m in tar_file_iterator(stream)]
    with open(path, "rb") as stream:
        assert list(iterate_tar(stream)) == expected
