"""`jobplane status` shows the latest metrics; `jobplane metrics` prints the series as a table or JSON."""

from __future__ import annotations

import json

from jobplane import cli

JOB = {"job_id": "a" * 32, "name": "blobs", "owner": "al", "status": "SUCCEEDED", "backend": "local"}
SERIES = {
    "job_id": "a" * 32,
    "metrics": {"epoch": 3.0, "val_accuracy": 0.8731},
    "series": {"epoch": [[1, 1.0], [2, 2.0], [3, 3.0]], "val_accuracy": [[1, 0.5], [3, 0.8731]]},
    "lines": 3,
    "malformed_lines": 1,
    "caught_up": True,
}


class Client:
    def get(self, job_id):
        return {**JOB, "metrics": SERIES["metrics"]}

    def events(self, job_id):
        return []

    def metrics(self, job_id):
        return SERIES


def test_status_shows_the_latest_metrics(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_client", lambda args: Client())
    assert cli.main(["status", "a" * 32]) == 0
    out = capsys.readouterr().out
    assert "metrics:\n  epoch  3\n  val_accuracy  0.8731\n" in out


def test_metrics_prints_one_row_per_line_and_json_on_request(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_client", lambda args: Client())
    assert cli.main(["metrics", "a" * 32]) == 0
    out = capsys.readouterr().out
    cells = [[c.strip() for c in line.strip()[1:-1].split("│")] for line in out.splitlines() if line.startswith("│")]
    assert cells == [["1", "1", "0.5"], ["2", "2", ""], ["3", "3", "0.8731"]]
    assert "SEQ" in out and "VAL_ACCURACY" in out
    assert "1 malformed JOBPLANE_METRICS lines were ignored" in out
    assert cli.main(["metrics", "a" * 32, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == SERIES
