"""Shards over HTTP and from pipe: commands, against a loopback server with scripted faults.

Every fault is bounded in time, named in words with its URL, keeps the samples read
before it, and never stops the other shards.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time

import pytest
import torch
import webdataset

from bench.shard_server import ShardServer, free_port
from multimodal.data.pipeline.fetch_ahead import FetchAhead
from multimodal.data.pipeline.remote import RemoteConfig
from multimodal.data.pipeline.shard_reader import ShardProblem, read_shard
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.training.train_config import parse_config
from tests.data.pipeline.test_pipeline import keys_of, loader, write_img2dataset

# Tiny timeouts: a stall is noticed after 0.5 s, three tries at most, 0.1 s then 0.2 s between them.
FAST = RemoteConfig(stall_timeout=0.5, retries=2, backoff=0.1)
SAMPLES = 20


@pytest.fixture
def shard_dir(tmp_path):
    """Shards a.tar ... e.tar of 20 samples each (2 kB of bytes and a caption), about 100 kB a shard."""
    for name in "abcde":
        with webdataset.TarWriter(str(tmp_path / f"{name}.tar")) as writer:
            for index in range(SAMPLES):
                payload = bytes((index * 7 + i) % 251 for i in range(2000))
                writer.write({"__key__": f"{name}{index:03d}", "bin": payload, "txt": f"{name} {index}"})
    return tmp_path


def read_all(urls: list[str], config: RemoteConfig = FAST):
    """(sample keys in the order read, {url: problems}, {url: seconds from the start to the shard's end})."""
    keys, problems, ends = [], {}, {}
    start = time.monotonic()
    for _, url, sample, shard_problems in FetchAhead(iter(enumerate(urls)), config).reads():
        if sample is not None:
            keys.append(sample["__key__"])
        else:
            problems[url] = shard_problems
            ends[url] = time.monotonic() - start
    return keys, problems, ends


def local_keys(path) -> list[str]:
    return [sample["__key__"] for sample in read_shard(str(path), [])]


def whole_samples_before(path, end: int) -> int:
    """Samples of a tar whose files all end before byte ``end``."""
    with tarfile.open(path) as archive:
        members = archive.getmembers()
    ends: dict[str, int] = {}
    for member in members:
        key = member.name.split(".", 1)[0]
        ends[key] = member.offset_data + member.size
    return sum(1 for last in ends.values() if last <= end)


def test_http_shards_read_as_local_files_in_the_order_drawn(shard_dir):
    with ShardServer(shard_dir, first_byte_delay=0.05) as server:
        names = ["a", "b", "c", "a", "d"]  # a drawn twice
        keys, problems, _ = read_all([server.url(f"{n}.tar") for n in names])
        samples = list(read_shard(server.url("c.tar"), []))
    assert keys == [key for n in names for key in local_keys(shard_dir / f"{n}.tar")]
    assert all(p == [] for p in problems.values())
    local = list(read_shard(str(shard_dir / "c.tar"), []))
    assert [{k: v for k, v in s.items() if k != "__url__"} for s in samples] == \
        [{k: v for k, v in s.items() if k != "__url__"} for s in local]


def test_training_batches_over_http_equal_those_from_disk(tmp_path):
    write_img2dataset(tmp_path, "img", num_shards=3, per_shard=4)
    names = [f"img-{i:05d}.tar" for i in range(3)]
    with ShardServer(tmp_path, first_byte_delay=0.02) as server:
        over_http = list(loader([SourceSpec([server.url(n) for n in names], ["image", "text"], name="img")],
                                train=True, samples_per_epoch=40, seed=3, remote=FAST))
    from_disk = list(loader([SourceSpec([str(tmp_path / n) for n in names], ["image", "text"], name="img")],
                            train=True, samples_per_epoch=40, seed=3))
    assert keys_of(over_http) == keys_of(from_disk)
    for remote_batch, local_batch in zip(over_http, from_disk):
        assert torch.equal(remote_batch["image"], local_batch["image"]) and torch.equal(remote_batch["text"], local_batch["text"])


def test_shards_are_fetched_several_at_once_and_no_more_than_fetch_ahead(shard_dir):
    with ShardServer(shard_dir, first_byte_delay=0.3) as server:
        keys, _, _ = read_all([server.url(f"{n}.tar") for n in "abcde"], RemoteConfig(stall_timeout=5, fetch_ahead=2))
    assert len(keys) == 5 * SAMPLES and server.most_in_flight == 2


def test_404_is_named_and_not_tried_again(shard_dir):
    with ShardServer(shard_dir, faults={"c.tar": "404"}) as server:
        url = server.url("c.tar")
        keys, problems, _ = read_all([url])
    assert keys == []
    assert problems[url] == [ShardProblem(url, "unreadable_shard", "HTTP 404 Not Found", 0)]
    assert server.requests == [("c.tar", None)]


def test_server_error_is_tried_again(shard_dir):
    with ShardServer(shard_dir, faults={"e.tar": "500-then-ok"}) as server:
        keys, problems, _ = read_all([server.url("e.tar")])
    assert keys == local_keys(shard_dir / "e.tar") and problems[server.url("e.tar")] == []
    assert server.requests == [("e.tar", None), ("e.tar", None)]


def test_cut_keeps_the_samples_before_it_and_resumes_from_the_byte_reached(shard_dir):
    data = (shard_dir / "d.tar").read_bytes()
    half = len(data) // 2
    with ShardServer(shard_dir, faults={"d.tar": "cut"}) as server:
        url = server.url("d.tar")
        start = time.monotonic()
        keys, problems, _ = read_all([url])
        seconds = time.monotonic() - start
    # Samples whose files all lie in the first half are kept, but for the last of them, which
    # a reader cannot know complete (another of its files could follow) when the bytes end.
    whole = whole_samples_before(shard_dir / "d.tar", half)
    kept = local_keys(shard_dir / "d.tar")[: len(keys)]
    assert keys == kept and whole - 1 <= len(kept) <= whole and len(kept) > 0
    message = f"connection cut after {half} of {len(data)} bytes (3 tries)"
    assert problems[url] == [ShardProblem(url, "truncated_shard", message, len(kept))]
    assert server.requests == [("d.tar", None)] + [("d.tar", f"bytes={half}-")] * 2
    assert seconds < 2.0  # three tries, 0.3 s of waits between them


@pytest.mark.parametrize("ranges", [True, False], ids=["range-requests", "no-range-requests"])
def test_a_shard_cut_once_is_read_whole_on_the_next_try(shard_dir, ranges):
    half = (shard_dir / "a.tar").stat().st_size // 2
    with ShardServer(shard_dir, faults={"a.tar": "cut-once"}, ranges=ranges) as server:
        keys, problems, _ = read_all([server.url("a.tar")])
    assert keys == local_keys(shard_dir / "a.tar") and problems[server.url("a.tar")] == []
    # Where the server takes ranges, the rest is asked for; where not, the whole is read again and the half held skipped.
    assert server.requests == [("a.tar", None), ("a.tar", f"bytes={half}-")]


def test_a_stalled_shard_is_abandoned_and_does_not_hold_the_others(shard_dir):
    with ShardServer(shard_dir, faults={"b.tar": "stall"}) as server:
        urls = [server.url(f"{n}.tar") for n in "bacde"]  # the stalled shard drawn first
        keys, problems, ends = read_all(urls)
    stalled = urls[0]
    kept = [key for key in keys if key.startswith("b")]
    assert problems[stalled] == [ShardProblem(stalled, "truncated_shard", "no data for 0.5 s (3 tries)", len(kept))]
    assert 0 < len(kept) < SAMPLES
    # Every other shard was read whole, and before the stalled one was given up.
    for url, name in zip(urls[1:], "acde"):
        assert [key for key in keys if key.startswith(name)] == local_keys(shard_dir / f"{name}.tar")
        assert problems[url] == [] and ends[url] < ends[stalled]
    assert ends[urls[1]] < 1.5  # not held for the stalled shard's tries (3 x 0.5 s and the waits)
    assert ends[stalled] < 3.0  # bounded: three tries of 0.5 s without data, 0.3 s between them


def test_a_refused_connection_is_tried_a_bounded_number_of_times():
    url = f"http://127.0.0.1:{free_port()}/a.tar"
    start = time.monotonic()
    problems: list[ShardProblem] = []
    assert list(read_shard(url, problems, FAST)) == []
    assert problems == [ShardProblem(url, "unreadable_shard", "connection refused (3 tries)", 0)]
    assert time.monotonic() - start < 1.5


def test_a_failing_command_is_named_with_its_exit_status_and_last_line(shard_dir):
    url = "pipe:echo starting >&2; echo 'curl: (22) The requested URL returned error: 404' >&2; exit 22"
    problems: list[ShardProblem] = []
    assert list(read_shard(url, problems, FAST)) == []
    message = "command failed with exit status 22: curl: (22) The requested URL returned error: 404"
    assert problems == [ShardProblem(url, "unreadable_shard", message, 0)]


def test_a_silent_command_is_killed_after_the_stall_timeout(tmp_path):
    pid_file = tmp_path / "pid"
    url = f"pipe:echo $$ > {pid_file}; exec sleep 30"
    problems: list[ShardProblem] = []
    start = time.monotonic()
    assert list(read_shard(url, problems, RemoteConfig(stall_timeout=0.5, retries=0))) == []
    assert time.monotonic() - start < 2.0
    assert problems == [ShardProblem(url, "unreadable_shard", "no data for 0.5 s", 0)]
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_command_reads_as_the_file(shard_dir):
    problems: list[ShardProblem] = []
    keys = [s["__key__"] for s in read_shard(f"pipe:cat {shard_dir}/a.tar", problems, FAST)]
    assert keys == local_keys(shard_dir / "a.tar") and problems == []


def test_a_pass_reads_every_good_shard_beside_shards_that_stall_fail_and_are_cut(tmp_path):
    good = write_img2dataset(tmp_path, "img", num_shards=3, per_shard=4)
    bad = write_img2dataset(tmp_path, "bad", num_shards=3, per_shard=4)
    faults = {"bad-00000.tar": "stall", "bad-00001.tar": "404", "bad-00002.tar": "cut"}
    with ShardServer(tmp_path, faults=faults) as server:
        urls = [server.url(f"img-{i:05d}.tar") for i in range(3)] + [server.url(name) for name in faults]
        stream = loader([SourceSpec(urls, ["image", "text"], name="img")], train=True, resampled=False,
                        drop_last=False, remote=FAST)
        start = time.monotonic()
        keys = keys_of(list(stream))
        seconds = time.monotonic() - start
    assert set(good) <= set(keys) <= set(good) | set(bad)
    assert seconds < 5.0  # the stalled shard's three tries, the others read beside them
    stalled, gone, cut = (server.url(name) for name in faults)
    size = (tmp_path / "bad-00002.tar").stat().st_size
    failed = {url: message for (_, url), message in stream.stats.failed_shards.items()}
    assert failed == {
        gone: f"(unreadable_shard) {gone}: HTTP 404 Not Found",
        # Unreadable or truncated, as the samples before the stall or cut are none or some.
        stalled: failed[stalled][: failed[stalled].index(")") + 1] + f" {stalled}: no data for 0.5 s (3 tries)",
        cut: failed[cut][: failed[cut].index(")") + 1] + f" {cut}: connection cut after {size // 2} of {size} bytes (3 tries)",
    }
    assert all(message.startswith(("(unreadable_shard) ", "(truncated_shard) ")) for message in failed.values())
    assert sum(stream.stats.skipped["img"].values()) == 3


def test_remote_settings_are_dotted_keys_and_checked():
    config = parse_config(["--data.remote.stall_timeout", "60", "--data.remote.retries", "2",
                           "--data.remote.fetch_ahead", "8"])
    assert (config.data.remote.stall_timeout, config.data.remote.retries, config.data.remote.fetch_ahead) == (60, 2, 8)
    with pytest.raises(ValueError, match="unknown configuration key: data.remote.stall "):
        parse_config(["--data.remote.stall", "60"])
    with pytest.raises(ValueError, match=r"data.remote.fetch_ahead must be at least 1 \(shards downloaded at once\), "
                                         "got 0"):
        parse_config(["--data.remote.fetch_ahead", "0"])


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads children from Linux's /proc")
def test_a_loader_worker_blocked_on_a_stalled_read_dies_with_its_run(shard_dir):
    script = (
        "import sys\n"
        "from multimodal.data.pipeline.loader import make_loader\n"
        "from multimodal.data.pipeline.remote import RemoteConfig\n"
        "from multimodal.data.pipeline.source_spec import SourceSpec\n"
        "loader = make_loader([SourceSpec([sys.argv[1]], ['text', 'image'])], batch_size=2, train=True,\n"
        "                     num_workers=1, preprocess={'image': object()}, remote=RemoteConfig(stall_timeout=60))\n"
        "for batch in loader:\n"
        "    pass\n"
    )
    with ShardServer(shard_dir, faults={"b.tar": "stall"}) as server:
        run = subprocess.Popen([sys.executable, "-c", script, server.url("b.tar")])
        workers: list[int] = []
        try:
            deadline = time.monotonic() + 60
            while not _children(run.pid) and run.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            workers = _children(run.pid)
            assert workers, "the loader started no worker"
            while not any(name == "b.tar" for name, _ in server.requests) and time.monotonic() < deadline:
                time.sleep(0.1)  # the worker is now blocked on the stalled shard
            run.kill()
            run.wait()
            deadline = time.monotonic() + 5
            while any(_alive(worker) for worker in workers) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(_alive(worker) for worker in workers)
        finally:
            if run.poll() is None:
                run.kill()
            for worker in workers:
                if _alive(worker):  # only if the test failed: leave no process behind
                    os.kill(worker, 9)
