"""Packing a workdir: git's ignore rules (and .jobplaneignore), .git skipped, the same tree gives the same digest."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from jobplane.pack import PackError, pack


def tree(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def names(packed) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(packed.data), mode="r:gz") as tar:
        return sorted(m.name for m in tar.getmembers() if not m.isdir())


def test_gitignore_rules_are_honoured_with_negation_folders_and_nested_files(tmp_path):
    tree(
        tmp_path,
        {
            ".gitignore": "*.log\n!keep.log\nbuild/\n/top-only.txt\n",
            "train.py": "",
            "run.log": "",
            "keep.log": "",
            "build/out.bin": "",
            "top-only.txt": "",
            "pkg/top-only.txt": "",
            "pkg/.gitignore": "secret.txt\n",
            "pkg/secret.txt": "",
            "pkg/model.py": "",
            "secret.txt": "",
        },
    )
    assert list(pack(tmp_path).files) == [
        ".gitignore",
        "keep.log",
        "pkg/.gitignore",
        "pkg/model.py",
        "pkg/top-only.txt",
        "secret.txt",
        "train.py",
    ]


def test_jobplaneignore_adds_rules_and_dot_git_is_always_skipped(tmp_path):
    tree(
        tmp_path,
        {
            ".jobplaneignore": "data/\n",
            "data/big.bin": "x",
            ".git/HEAD": "ref",
            ".git/objects/ab": "",
            "a.py": "",
            "pkg/.jobplaneignore": "*.npz\n",
            "pkg/w.npz": "",
            "pkg/m.py": "",
        },
    )
    packed = pack(tmp_path)
    assert list(packed.files) == [".jobplaneignore", "a.py", "pkg/.jobplaneignore", "pkg/m.py"]
    assert names(packed) == [".jobplaneignore", "a.py", "pkg/.jobplaneignore", "pkg/m.py"]


def test_the_same_tree_packs_to_the_same_digest_whatever_its_times_and_umask(tmp_path):
    files = {"a.py": "print(1)\n", "pkg/b.py": "x = 2\n", "run.sh": "#!/bin/sh\n"}
    first, second = tmp_path / "one", tmp_path / "two"
    tree(first, files)
    tree(second, dict(reversed(files.items())))
    (first / "run.sh").chmod(0o755)
    (second / "run.sh").chmod(0o700)
    (second / "a.py").chmod(0o600)
    os.utime(second / "a.py", (1, 1))
    assert pack(first).sha256 == pack(second).sha256
    with tarfile.open(fileobj=io.BytesIO(pack(first).data), mode="r:gz") as tar:
        run = tar.getmember("run.sh")
        assert (run.mode, run.mtime, run.uid, run.uname) == (0o755, 0, 0, "")
    (second / "a.py").write_text("print(2)\n")
    assert pack(first).sha256 != pack(second).sha256


def test_a_tree_over_the_limit_is_refused_naming_the_limit_and_the_biggest_files(tmp_path):
    tree(tmp_path, {"small.txt": "x"})
    (tmp_path / "weights.bin").write_bytes(os.urandom(300_000))
    (tmp_path / "data.bin").write_bytes(os.urandom(200_000))
    with pytest.raises(PackError) as refused:
        pack(tmp_path, max_bytes=100_000)
    message = str(refused.value)
    assert "limit (JOBPLANE_CODE_MAX_MB)" in message and "0.1 MB" in message
    assert message.index("weights.bin (0.3 MB)") < message.index("data.bin (0.2 MB)")


def test_the_limit_comes_from_jobplane_code_max_mb(tmp_path, monkeypatch):
    (tmp_path / "weights.bin").write_bytes(os.urandom(1_200_000))
    monkeypatch.setenv("JOBPLANE_CODE_MAX_MB", "1")
    with pytest.raises(PackError, match="1.0 MB limit"):
        pack(tmp_path)
    monkeypatch.setenv("JOBPLANE_CODE_MAX_MB", "2")
    assert pack(tmp_path).size > 1_000_000


def test_a_link_out_of_the_workdir_is_refused_and_one_inside_is_kept(tmp_path):
    root = tmp_path / "src"
    tree(root, {"data/a.txt": "A"})
    (root / "inside").symlink_to("data/a.txt")
    assert "inside" in pack(root).files
    (root / "outside").symlink_to(tmp_path)
    with pytest.raises(PackError, match="outside is a link to .* outside the workdir"):
        pack(root)


def test_a_missing_workdir_is_named(tmp_path):
    with pytest.raises(PackError, match="is not a folder"):
        pack(tmp_path / "nope")


def test_the_demo_workdir_packs_without_what_it_ignores_and_its_spec_is_valid():
    from pathlib import Path

    import yaml

    from chalicelib.jobs.spec import parse_spec

    root = Path(__file__).resolve().parents[2] / "examples"
    document = yaml.safe_load((root / "train-workdir-local.yaml").read_text())
    assert document.pop("workdir") == "workdir-demo"
    packed = pack(root / "workdir-demo")
    assert list(packed.files) == [".jobplaneignore", "prepare.py", "serve.py", "train.py"]  # serve.py: the endpoint
    spec = parse_spec(
        {**document, "code_uri": f"s3://bucket/code/{packed.sha256}.tar.gz", "code_sha256": packed.sha256}
    )
    assert list(spec.inputs) == ["samples", "labels"] and spec.setup == (("/bin/sh", "-c", "python prepare.py"),)


def test_a_tree_the_job_side_unpack_would_refuse_is_refused_at_pack(tmp_path, monkeypatch):
    from chalicelib.jobs import contract

    (tmp_path / "src").mkdir()
    for i in range(4):
        (tmp_path / "src" / f"f{i}.txt").write_text("0123456789")
    monkeypatch.setattr(contract, "CODE_MAX_MEMBERS", 3)
    with pytest.raises(PackError, match=r"4 files and folders, more than a job unpacks \(3\)"):
        pack(tmp_path / "src")
    monkeypatch.setattr(contract, "CODE_MAX_MEMBERS", 4)
    monkeypatch.setattr(contract, "CODE_MAX_UNPACKED_BYTES", 39)
    with pytest.raises(PackError, match="more than a job unpacks"):
        pack(tmp_path / "src")
    monkeypatch.setattr(contract, "CODE_MAX_UNPACKED_BYTES", 40)
    assert len(pack(tmp_path / "src").files) == 4
