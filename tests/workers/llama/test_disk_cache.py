"""The prompt cache's disk tier: files that a restarted worker reads back.

Unit tests of :class:`workers.llama.disk_cache.DiskCache` (no model), then the engine:
a conversation cached before the engine closes is reused by a new engine on the same
folder, with the cache-off answer; another model layout never sees those files."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.workers.llama.test_prompt_cache import (
    FOLLOW_UP,
    QUESTION,
    cached_engine,
    chat,
    office,
    plain,
    whole_chunks,
)
from workers.llama import LlamaEngine
from workers.llama.cache import Entry, HostCache, Sharing
from workers.llama.disk_cache import DiskCache

NOBODY = Sharing([])
__all__ = ["plain"]  # the cache-off reference engine, a fixture


def entry(tokens: list[int], scope: str = "acme", conversation: str | None = None,
          state: bytes = b"kv-bytes") -> Entry:
    return Entry(tokens, scope, conversation, state=state)


def test_an_entry_comes_back_from_its_file_in_a_new_run(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "model", 1 << 20)
    assert disk.put(entry(list(range(40)), conversation="c1", state=b"\x00\x01state"))
    again = DiskCache(tmp_path / "model", 1 << 20)  # the worker restarted
    found, n = again.best([*range(40), 99], "acme", NOBODY)
    assert found is not None and n == 40 and found.conversation == "c1"
    again.take(found)
    assert found.state == b"\x00\x01state"
    assert len(again) == 0 and not list((tmp_path / "model").glob("*.kv"))  # taken: gone


def test_files_are_private_to_the_worker(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "model", 1 << 20)
    disk.put(entry(list(range(20))))
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o700
    [path] = (tmp_path / "model").glob("*.kv")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_another_tenant_takes_nothing_of_an_entry(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "model", 1 << 20)
    disk.put(entry(list(range(40)), scope="acme"))
    assert disk.best(list(range(41)), "globex", NOBODY) == (None, 0)
    shared = Sharing([list(range(20))])  # an operator's shared prompt: up to its end
    found, n = disk.best(list(range(41)), "globex", shared)
    assert found is not None and n == 20


def test_the_budget_drops_the_least_recently_used(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "model", 700)
    for i in range(3):
        assert disk.put(entry([i] * 30, state=bytes(200)))
    assert disk.bytes <= 700 and len(disk) < 3
    assert disk.best([0] * 31, "acme", NOBODY)[0] is None  # the oldest went
    assert disk.best([2] * 31, "acme", NOBODY)[0] is not None
    assert not disk.put(entry([7] * 30, state=bytes(800)))  # never fits


def test_a_later_turn_replaces_the_earlier_one_and_forget_drops_a_conversation(
        tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "model", 1 << 20)
    disk.put(entry(list(range(30)), conversation="c1"))
    disk.put(entry(list(range(50)), conversation="c1"))  # turn 2 begins with turn 1
    assert len(disk) == 1
    disk.put(entry([5] * 30, conversation="c2"))
    assert disk.forget("acme", "c1") == 1
    assert disk.best(list(range(51)), "acme", NOBODY) == (None, 0)
    assert len(list((tmp_path / "model").glob("*.kv"))) == 1


def test_half_written_and_broken_files_are_dropped_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    DiskCache(folder, 1 << 20).put(entry(list(range(20))))
    (folder / "x.tmp").write_bytes(b"a write cut short")
    (folder / "broken.kv").write_bytes(b"not a header\n")
    disk = DiskCache(folder, 1 << 20)
    assert len(disk) == 1
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in folder.glob("*.kv")]


def test_host_memory_spills_to_disk_and_finds_it_there(tmp_path: Path) -> None:
    host = HostCache(300, DiskCache(tmp_path / "model", 1 << 20))
    host.put(entry(list(range(30)), state=bytes(200)))
    host.put(entry([9] * 30, state=bytes(200)))  # the first goes to disk
    assert len(host) == 1
    found, n = host.best([*range(30), 1], "acme", NOBODY)
    assert found is not None and n == 30
    host.take(found)
    assert found.state == bytes(200)
    assert host.flush() == 1 and len(host) == 0  # closing: memory to disk


# The engine


def test_a_restarted_engine_resumes_a_conversation_from_disk(
        tmp_path: Path, plain: LlamaEngine) -> None:
    options = {"prompt_cache_disk_mib": 64, "prompt_cache_dir": str(tmp_path)}
    first_engine = cached_engine(slots=1, **options)
    try:
        first = chat(first_engine, office(QUESTION), tenant="disk", conversation="c1")
        head_only = chat(first_engine, office(QUESTION), tenant="else")  # not disk's
        assert head_only.outcome.cached_tokens == 0
    finally:
        first_engine.close()  # the slots and host memory go to disk
    [folder] = tmp_path.iterdir()
    assert list(folder.glob("*.kv"))
    engine = cached_engine(slots=1, **options)
    try:
        assert engine.cache_info()["prompt_cache_disk_entries"] >= 1
        turn2 = office(QUESTION, first.text, FOLLOW_UP)
        second = chat(engine, turn2, tenant="disk", conversation="c1")
        assert second.outcome.cached_tokens == whole_chunks(
            engine, engine.prompter.render(office(QUESTION)).tokens) > 0
        assert engine.cache_info()["prompt_cache_restored"] == 1
        assert second.text == chat(plain, turn2).text
    finally:
        engine.close()


def test_another_layout_never_sees_the_files(tmp_path: Path) -> None:
    options = {"prompt_cache_disk_mib": 64, "prompt_cache_dir": str(tmp_path)}
    eng = cached_engine(slots=1, **options)
    try:
        chat(eng, office(QUESTION), tenant="disk")
    finally:
        eng.close()
    other = cached_engine(slots=1, context_size=1024, **options)  # another KV layout
    try:
        assert other.cache_info()["prompt_cache_disk_entries"] == 0
        assert chat(other, office(QUESTION), tenant="disk").outcome.cached_tokens == 0
    finally:
        other.close()
    assert len(list(tmp_path.iterdir())) == 2  # a folder each
