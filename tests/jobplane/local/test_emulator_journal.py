"""The embedded emulator's journal: torn tails, checksums, compaction's switch, one owner per folder."""

from __future__ import annotations

import base64
import os

import pytest

from jobplane.local import emulator
from jobplane.local.emulator import BLOB_BYTES, Journal, StateLocked


def _entry(i: int, body: bytes = b"") -> dict:
    return {"env": {"REQUEST_METHOD": "POST", "HTTP_X_AMZ_TARGET": f"op{i}"}, "body": base64.b64encode(body).decode()}


def _reopen(path) -> tuple[Journal, list[dict]]:
    journal = Journal(path)
    return journal, list(journal.entries())


def test_can_read_back_what_was_appended_and_synced(tmp_path):
    journal, entries = _reopen(tmp_path)
    assert entries == []
    journal.open()
    for i in range(3):
        journal.sync(journal.append(_entry(i)))
    journal.close()
    _, entries = _reopen(tmp_path)
    assert [e["env"]["HTTP_X_AMZ_TARGET"] for e in entries] == ["op0", "op1", "op2"]


def test_a_torn_last_line_is_cut_off_and_later_writes_follow_the_good_prefix(tmp_path):
    journal, _ = _reopen(tmp_path)
    journal.open()
    journal.sync(journal.append(_entry(0)))
    journal.close()
    path = tmp_path / "journal-0.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'0000abcd {"env": {"REQUEST_ME')  # a crash in the middle of a write
    journal, entries = _reopen(tmp_path)
    assert len(entries) == 1
    journal.open()
    journal.sync(journal.append(_entry(1)))
    journal.close()
    _, entries = _reopen(tmp_path)
    assert [e["env"]["HTTP_X_AMZ_TARGET"] for e in entries] == ["op0", "op1"]


def test_a_line_whose_checksum_fails_ends_the_replay(tmp_path):
    journal, _ = _reopen(tmp_path)
    journal.open()
    for i in range(3):
        journal.append(_entry(i))
    journal.close()
    path = tmp_path / "journal-0.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"op1", b"opX")
    path.write_bytes(b"".join(lines))
    _, entries = _reopen(tmp_path)
    assert [e["env"]["HTTP_X_AMZ_TARGET"] for e in entries] == ["op0"]


def test_compaction_replaces_snapshot_and_journal_and_drops_unreferenced_blobs(tmp_path):
    journal, _ = _reopen(tmp_path)
    journal.open()
    big = os.urandom(BLOB_BYTES + 1)
    journal.sync(journal.append(_entry(0, big)))
    assert len(list((tmp_path / "blobs").iterdir())) == 1
    assert len((tmp_path / "journal-0.jsonl").read_bytes()) < BLOB_BYTES  # the body is not in the line
    journal.compact(iter([_entry(7), _entry(8, b"small")]))
    journal.sync(journal.append(_entry(9)))
    journal.close()
    assert not (tmp_path / "journal-0.jsonl").exists()
    assert list((tmp_path / "blobs").iterdir()) == []
    _, entries = _reopen(tmp_path)
    assert [e["env"]["HTTP_X_AMZ_TARGET"] for e in entries] == ["op7", "op8", "op9"]
    assert base64.b64decode(entries[1]["body"]) == b"small"


def test_a_journal_left_by_a_compaction_that_finished_is_not_replayed_again(tmp_path):
    journal, _ = _reopen(tmp_path)
    journal.open()
    journal.sync(journal.append(_entry(0)))
    old = (tmp_path / "journal-0.jsonl").read_bytes()
    journal.compact(iter([_entry(0)]))
    journal.close()
    # A crash right after the snapshot was renamed into place, before the old journal was removed.
    (tmp_path / "journal-0.jsonl").write_bytes(old)
    _, entries = _reopen(tmp_path)
    assert [e["env"]["HTTP_X_AMZ_TARGET"] for e in entries] == ["op0"]
    assert not (tmp_path / "journal-0.jsonl").exists()


def test_files_are_private_and_a_second_owner_is_refused(tmp_path):
    journal, _ = _reopen(tmp_path / "aws")
    journal.open()
    journal.sync(journal.append(_entry(0, os.urandom(BLOB_BYTES + 1))))
    journal.compact(iter([_entry(0, os.urandom(BLOB_BYTES + 1))]))
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "aws").rglob("*")}
    assert set(modes.values()) <= {0o600, 0o700}, modes
    assert (tmp_path / "aws").stat().st_mode & 0o777 == 0o700
    with pytest.raises(StateLocked, match="another jobplane local stack"):
        Journal(tmp_path / "aws")
    journal.close()
    Journal(tmp_path / "aws").close()  # free again once the owner is gone


def test_compaction_is_due_when_the_journal_outgrows_the_snapshot(tmp_path, monkeypatch):
    monkeypatch.setattr(emulator, "COMPACT_MIN_BYTES", 1000)
    journal, _ = _reopen(tmp_path)
    journal.open()
    while not journal.needs_compaction():
        journal.append(_entry(0, b"x" * 100))
    assert journal._tail_bytes > 1000
    journal.compact(iter([_entry(i, b"y" * 200) for i in range(10)]))
    assert not journal.needs_compaction()
    journal.close()
