"""`jobplane logs --follow`: cursor offsets go back unchanged, and a note is said once, on stderr."""

from __future__ import annotations

from types import SimpleNamespace

from jobplane import cli


def test_follow_passes_cursor_offsets_back_and_says_a_note_once(monkeypatch, capsys):
    answers = [
        {"text": "", "next_offset": 0, "complete": False, "note": "QUEUED: not started yet (waiting for capacity)"},
        {"text": "", "next_offset": 0, "complete": False, "note": "QUEUED: not started yet (waiting for capacity)"},
        {"text": "epoch 1\n", "next_offset": "t~abc", "complete": False, "note": None},
        {"text": "done\n", "next_offset": "t~def", "complete": False, "note": None},
        {"text": "", "next_offset": "t~def", "complete": True, "note": None},
    ]
    asked = []

    class Client:
        def logs(self, job_id, offset):
            asked.append(offset)
            return answers[len(asked) - 1]

    monkeypatch.setattr(cli, "_client", lambda args: Client())
    monkeypatch.setattr("jobplane.sdk.time.sleep", lambda s: None)
    assert cli.cmd_logs(SimpleNamespace(job_id="a" * 32, follow=True)) == 0
    assert asked == [0, 0, 0, "t~abc", "t~def"]
    out = capsys.readouterr()
    assert out.out == "epoch 1\ndone\n"
    assert out.err == "jobplane: QUEUED: not started yet (waiting for capacity)\n"
