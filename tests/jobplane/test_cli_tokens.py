"""`jobplane token list` and `token revoke` over the API: ids, never tokens; the revoke says what it did."""

from __future__ import annotations

import json

from jobplane import cli

LISTED = [
    {"token_id": "0123456789ab", "user": "alice", "admin": False, "created_at": "2026-12-01T10:00:00+00:00"},
    {"token_id": "ba9876543210", "user": "root", "admin": True, "created_at": "2026-12-02T09:30:00+00:00"},
]


class Client:
    def __init__(self):
        self.calls = []

    def token_list(self, user=None):
        self.calls.append(("list", user))
        return [t for t in LISTED if user in (None, t["user"])]

    def token_revoke(self, token_id):
        self.calls.append(("revoke", token_id))
        return LISTED[0]


def test_token_list_prints_ids_users_and_json_on_request(monkeypatch, capsys):
    client = Client()
    monkeypatch.setattr(cli, "_client", lambda args: client)
    assert cli.main(["token", "list"]) == 0
    rows = [[c.strip() for c in line.strip()[1:-1].split("│")] for line in capsys.readouterr().out.splitlines()]
    rows = [r for r in rows if len(r) == 4 and r[0] != "TOKEN ID"]
    assert rows == [
        ["0123456789ab", "alice", "", "2026-12-01T10:00:00"],
        ["ba9876543210", "root", "yes", "2026-12-02T09:30:00"],
    ]
    assert cli.main(["token", "list", "--user", "alice", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == LISTED[:1]
    assert client.calls == [("list", None), ("list", "alice")]


def test_token_revoke_names_the_token_and_its_user(monkeypatch, capsys):
    client = Client()
    monkeypatch.setattr(cli, "_client", lambda args: client)
    assert cli.main(["token", "revoke", "0123"]) == 0
    assert capsys.readouterr().out == "revoked token 0123456789ab of alice: requests with it now get 401\n"
    assert client.calls == [("revoke", "0123")]
