"""`jobplane vm start|list`: the backend and GPU type are the deployment's unless given, and are shown."""

from __future__ import annotations

from jobplane import cli

VM = {
    "vm_id": "a" * 32,
    "name": "nb",
    "owner": "alice",
    "status": "RUNNING",
    "backend": "gce",
    "instance_type": "g2-standard-8",
    "idle_minutes": 30,
    "max_hours": 8.0,
    "started_at": "2026-01-01T00:00:00Z",
    "stop_reason": None,
}


class Client:
    def __init__(self):
        self.bodies = []

    def vm_create(self, body):
        self.bodies.append(body)
        return {**VM, "name": body["name"], "backend": body.get("backend", "gce")}

    def vm_list(self):
        return [VM]


def test_vm_start_sends_the_backend_only_when_given_and_says_where_it_runs(monkeypatch, capsys):
    client = Client()
    monkeypatch.setattr(cli, "_client", lambda args: client)
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["vm", "start", "--name", "nb"]) == 0
    assert cli.main(["vm", "start", "--name", "gb", "--backend", "gce", "--gpu-type", "T4", "--spot"]) == 0
    assert client.bodies == [
        {"name": "nb", "gpus": 1, "spot": False, "idle_minutes": 30, "max_hours": 8},
        {"name": "gb", "gpus": 1, "spot": True, "idle_minutes": 30, "max_hours": 8, "backend": "gce", "gpu_type": "T4"},
    ]
    assert f"{'a' * 32} nb: RUNNING on gce (g2-standard-8, stops after 30 idle min or 8 h)" in capsys.readouterr().out


def test_vm_list_shows_each_vms_backend(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_client", lambda args: Client())
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["vm", "list"]) == 0
    out = capsys.readouterr().out
    assert "BACKEND" in out and " gce " in out and "g2-standard-8" in out
