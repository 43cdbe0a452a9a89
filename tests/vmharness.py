"""Run the generated VM scripts for real under bash, with aws, gcloud, docker and shutdown stand-ins on PATH.

The stand-ins keep an object store in a folder (s3://b/k and gs://b/k are store/s3/b/k and store/gs/b/k),
record every call (tool, argv, time) in calls.jsonl, and `docker run` exits with the status in
docker.exit (0 when absent) after writing from-container.txt into the folder mounted at the outputs path.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

_FAKE = r"""
import json, os, shutil, sys, time
from pathlib import Path

TOOL, HERE = {tool!r}, Path({here!r})
STORE = HERE / "store"
args = sys.argv[1:]
call = {{"tool": TOOL, "argv": args, "t": time.time()}}
VALUED = {{"--region", "--username", "--message", "--attribute"}}
words, i = [], 0
while i < len(args):
    if args[i] in VALUED:
        i += 2
        continue
    if not args[i].startswith("-"):
        words.append(args[i])
    i += 1


def record(**extra):
    with open(HERE / "calls.jsonl", "a") as calls:
        calls.write(json.dumps({{**call, **extra}}) + "\n")


def where(uri):
    scheme, _, rest = uri.partition("://")
    return STORE / scheme / rest if _ else None


def objects(path):
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []


def sync(src, dst):
    s, d = where(src), where(dst)
    source = s if s is not None else Path(src)
    target = d if d is not None else Path(dst)
    for f in objects(source):
        out = target / f.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out)
        if d is None:
            os.chmod(out, 0o644)


def cp(src, dst):
    s, d = where(src), where(dst)
    if s is not None and not s.is_file():
        sys.exit(f"fake {{TOOL}}: {{src}} does not exist")
    target = d if d is not None else Path(dst)
    if dst.endswith("/") or target.is_dir():
        target = target / Path(src).name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(s if s is not None else src, target)


copy = words[1:2] == ["cp"] and where(words[2]) is None and Path(words[2]).is_file()
# An upload keeps what was uploaded, as it was then (the log is uploaded again and again).
record(**({{"uploaded": Path(words[2]).read_text(errors="replace")}} if copy else {{}}))


if TOOL == "aws" and words[:2] == ["s3", "cp"]:
    cp(words[2], words[3])
elif TOOL == "aws" and words[:2] == ["s3", "sync"]:
    sync(words[2], words[3])
elif TOOL == "aws" and words[:2] == ["ecr", "get-login-password"]:
    print("ecr-token")
elif TOOL == "gcloud" and words[:2] == ["storage", "cp"]:
    cp(words[2], words[3])
elif TOOL == "gcloud" and words[:2] == ["storage", "rsync"]:
    sync(words[2], words[3])
elif TOOL == "gcloud" and words[:2] == ["storage", "ls"]:
    found = where(words[2])
    sys.exit(0 if found.is_file() or objects(found) else 1)
elif TOOL == "docker" and words[:1] == ["login"]:
    (HERE / "docker-login.txt").write_text(sys.stdin.read())
elif TOOL == "docker" and words[:1] == ["run"]:
    for i, a in enumerate(args):
        if a == "-v" and args[i + 1].split(":")[1] == "/opt/jobplane/outputs":
            Path(args[i + 1].split(":")[0], "from-container.txt").write_text("written in the container")
    status = HERE / "docker.exit"
    sys.exit(int(status.read_text()) if status.exists() else 0)
"""


@dataclass
class Vm:
    """One VM script run: where its stand-ins kept the store and the calls."""

    here: Path
    root: Path

    def put(self, uri: str, data: bytes | str) -> None:
        path = self.obj(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    def obj(self, uri: str) -> Path:
        scheme, _, rest = uri.partition("://")
        return self.here / "store" / scheme / rest

    def calls(self, tool: str | None = None) -> list[dict]:
        path = self.here / "calls.jsonl"
        found = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [c for c in found if tool is None or c["tool"] == tool]

    def report(self, uri: str) -> dict:
        return json.loads(self.obj(uri).read_text())

    def log(self) -> str:
        return (self.root / "output.log").read_text()


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def prepare(here: Path) -> tuple[Vm, dict[str, str]]:
    """Stand-ins on PATH; returns the run's handle and the script's environment."""
    stubs = here / "bin"
    stubs.mkdir()
    for tool in ("aws", "gcloud", "docker"):
        _stub(stubs, tool, f"#!{sys.executable}\n" + _FAKE.format(tool=tool, here=str(here)))
    _stub(stubs, "shutdown", f'#!/bin/bash\ntouch "{here}/shutdown.called"\n')
    _stub(stubs, "poweroff", f'#!/bin/bash\ntouch "{here}/poweroff.called"\n')
    _stub(stubs, "curl", "#!/bin/bash\nexit 0\n")
    env = {"PATH": f"{stubs}:{os.environ['PATH']}", "HOME": str(here), "LANG": "C.UTF-8"}
    return Vm(here, here / "vm"), env


def run(vm: Vm, script: str, env: dict[str, str], timeout: float = 40) -> float:
    """Run the script under bash as a VM would (its own session); returns the seconds it took."""
    path = vm.here / "script.sh"
    path.write_text(script)
    began = time.monotonic()
    proc = subprocess.Popen(["bash", str(path)], cwd=vm.here, env=env, start_new_session=True)
    try:
        assert proc.wait(timeout=timeout) == 0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # loops a powered-off VM would not keep
        except ProcessLookupError:
            pass
    return time.monotonic() - began


# Shared by the VM and Vertex contract tests: values that must stay data, the job's code, its archive.
HOSTILE = ["$(touch PWNED_subst)", "`touch PWNED_tick`", 'it\'s "q"', "a\nb; touch PWNED_nl", "${HOME} *", ""]

# The job's code: train.py reports what it found, writes an output and a checkpoint, then fails (exit 3).
TRAIN = textwrap.dedent("""\
    import json, os, stat, sys
    env = os.environ
    inputs = env["JOBPLANE_INPUT_DIR"]
    found = sorted(os.path.relpath(os.path.join(d, f), inputs) for d, _, fs in os.walk(inputs) for f in fs)
    ckpt = env["JOBPLANE_CHECKPOINT_DIR"]
    report = {
        "argv": sys.argv[1:],
        "cwd": os.getcwd(),
        "vars": {k: v for k, v in env.items() if k.startswith("JOBPLANE_")},
        "inputs": found,
        "input_modes": sorted({stat.S_IMODE(os.stat(os.path.join(inputs, f)).st_mode) & 0o222 for f in found}),
        "labels": open(os.path.join(inputs, "labels", "labels.csv")).read(),
        "restored": sorted(os.listdir(ckpt)),
        "setup": open("setup-ran").read() if os.path.exists("setup-ran") else None,
        "setup_order": open("order").read() if os.path.exists("order") else None,
        "code_file": open("pkg/data.txt").read(),
        "lr": env.get("LR"),
    }
    out = env["JOBPLANE_OUTPUT_DIR"]
    json.dump(report, open(os.path.join(out, "report.json"), "w"))
    os.makedirs(os.path.join(out, "model"), exist_ok=True)
    open(os.path.join(out, "model", "weights.bin"), "w").write("w")
    open(os.path.join(ckpt, "step-2.pt"), "w").write("two")
    sys.exit(3)
    """)


def archive(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
