"""`jobplane budget set/list/delete` and `jobplane cost` over the API client: what they send and print."""

from __future__ import annotations

import json

from jobplane import cli

BUDGET = {
    "budget_id": "owner:alice",
    "scope": "owner",
    "subject": "alice",
    "limit_usd": 500.0,
    "on_exceed": "refuse",
    "hard": False,
    "updated_at": "2026-12-01T10:00:00.000000Z",
    "updated_by": "root",
}
REPORT = {
    "since": "2026-12-01T00:00:00.000000Z",
    "until": "2026-12-02T12:00:00.000000Z",
    "scope": "all owners",
    "total": {"jobs": 2, "cost_usd": 5.5, "unpriced_jobs": 1, "hours": 3.0},
    "rows": [
        {
            "job_id": "a" * 32,
            "name": "resnet",
            "owner": "alice",
            "backend": "sagemaker",
            "labels": {"team": "vision"},
            "launched": "2026-12-02T09:00:00.000000Z",
            "duration_seconds": 7380.0,
            "resources": "1x A10G (spot)",
            "status": "SUCCEEDED",
            "hourly_price_usd": 1.408,
            "cost_usd": 5.5,
        },
        {
            "job_id": "b" * 32,
            "name": "bert",
            "owner": "bob",
            "backend": "vertex",
            "labels": {},
            "launched": "2026-12-01T08:00:00.000000Z",
            "duration_seconds": 3420.0,
            "resources": "1x L4",
            "status": "FAILED",
            "hourly_price_usd": None,
            "cost_usd": None,
        },
    ],
    "rows_truncated": False,
    "by": "owner",
    "groups": [
        {"key": "alice", "jobs": 1, "cost_usd": 5.5, "unpriced_jobs": 0, "hours": 2.05},
        {"key": "bob", "jobs": 1, "cost_usd": 0.0, "unpriced_jobs": 1, "hours": 0.95},
    ],
}


class Client:
    def __init__(self):
        self.calls = []

    def budget_set(self, body):
        self.calls.append(("set", body))
        return {**BUDGET, "limit_usd": body["limit_usd"], "hard": body["hard"], "on_exceed": body["on_exceed"]}

    def budget_list(self):
        self.calls.append(("list",))
        return [{**BUDGET, "month": "2026-12", "spent_usd": 412.5, "percent": 82.5, "jobs": 7, "unpriced_jobs": 0}]

    def budget_delete(self, budget_id):
        self.calls.append(("delete", budget_id))
        return BUDGET

    def cost(self, by=None, since=None):
        self.calls.append(("cost", by, since))
        return REPORT


def rows(text: str, columns: int) -> list[list[str]]:
    found = [[c.strip() for c in line.strip()[1:-1].split("│")] for line in text.splitlines() if "│" in line]
    return [r for r in found if len(r) == columns]


def test_budget_set_sends_the_owner_or_the_label_and_says_what_was_set(monkeypatch, capsys):
    client = Client()
    monkeypatch.setattr(cli, "_client", lambda args: client)
    assert cli.main(["budget", "set", "--owner", "alice", "500"]) == 0
    assert capsys.readouterr().out == "budget owner:alice: $500.00 a month, refuse past it\n"
    assert cli.main(["budget", "set", "--label", "team=vision", "2000", "--on-exceed", "hold", "--hard"]) == 0
    assert "hold past it, hard: running jobs are stopped at 100 %" in capsys.readouterr().out
    assert client.calls == [
        ("set", {"limit_usd": 500.0, "on_exceed": "refuse", "hard": False, "owner": "alice"}),
        ("set", {"limit_usd": 2000.0, "on_exceed": "hold", "hard": True, "label": "team=vision"}),
    ]


def test_budget_list_and_delete(monkeypatch, capsys):
    client = Client()
    monkeypatch.setattr(cli, "_client", lambda args: client)
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["budget", "list"]) == 0
    assert rows(capsys.readouterr().out, 8) == [["owner:alice", "2026-12", "412.50", "500.00", "82", "refuse", "", "7"]]
    assert cli.main(["budget", "delete", "owner:alice"]) == 0
    assert capsys.readouterr().out == "deleted budget owner:alice\n"
    assert client.calls[-1] == ("delete", "owner:alice")


def test_cost_prints_the_rows_the_groups_and_the_totals(monkeypatch, capsys):
    client = Client()
    monkeypatch.setattr(cli, "_client", lambda args: client)
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["cost", "--by", "owner", "--since", "2026-12-01"]) == 0
    out = capsys.readouterr().out
    assert client.calls == [("cost", "owner", "2026-12-01")]
    assert rows(out, 7) == [
        ["resnet", "2026-12-02 09:00", "2h 03m", "sagemaker, 1x A10G (spot)", "SUCCEEDED", "1.4080", "5.50"],
        ["bert", "2026-12-01 08:00", "57m 00s", "vertex, 1x L4", "FAILED", "-", "-"],
    ]
    assert rows(out, 4) == [["alice", "1", "2.05", "5.50"], ["bob", "1", "0.95", "0.00"]]
    assert "total since 2026-12-01 (all owners): 2 jobs, 3.00 h, $5.50 (1 without a price, not counted)" in out
    assert cli.main(["cost", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == REPORT
