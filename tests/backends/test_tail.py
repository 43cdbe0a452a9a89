"""tail(): a failed job's last lines, from the end of a local job's file, or by paging a provider's log forward."""

from __future__ import annotations

import pytest

from chalicelib.backends.base import TAIL_PAGES, Handle, last_lines
from chalicelib.backends.local.backend import LocalBackend
from chalicelib.jobs.model import native_name
from tests.factories import LogBackend, make_job


def test_last_lines_bounds_lines_and_bytes_and_keeps_a_long_lines_end():
    text = "".join(f"line {i}\n" for i in range(30))
    assert last_lines(text, 3, 1000) == ["line 27", "line 28", "line 29"]
    assert last_lines(text, 15, 16) == ["line 28", "line 29"]  # 8 bytes each with the newline
    assert last_lines("a\r\nb\r\n", 5, 100) == ["a", "b"]
    assert last_lines("x" * 100, 5, 20) == ["…" + "x" * 16]
    assert last_lines("tial line\nwhole\n", 5, 100, cut=True) == ["whole"]  # started inside a line
    assert last_lines("", 5, 100) == []


@pytest.mark.parametrize("paged", [False, True])
def test_the_default_tail_pages_forward_and_keeps_the_end(settings, paged):
    backend = LogBackend(settings, paged=paged, page_lines=50)
    job = make_job(native_name=native_name("a" * 32))
    backend.output[job.native_name] = "".join(f"step {i}\n" for i in range(120))
    assert backend.tail(Handle.of(job), 3, 1000) == ["step 117", "step 118", "step 119"]


def test_the_default_tail_gives_none_rather_than_lines_from_the_middle(settings):
    backend = LogBackend(settings, paged=True, page_lines=1)
    job = make_job(native_name=native_name("b" * 32))
    backend.output[job.native_name] = "".join(f"step {i}\n" for i in range(TAIL_PAGES + 5))
    assert backend.tail(Handle.of(job), 3, 1000) is None
    assert backend.logs_calls == TAIL_PAGES  # bounded


def test_a_local_job_tail_reads_the_files_end_however_long_it_is(settings):
    backend = LocalBackend(settings)
    job = make_job(native_name=native_name("c" * 32))
    folder = backend.job_dir(job.native_name)
    folder.mkdir(parents=True)
    (folder / "output.log").write_text("".join(f"epoch {i}: loss {1 / (i + 1):.4f}\n" for i in range(100_000)))
    assert backend.tail(Handle.of(job), 2, 2048) == ["epoch 99998: loss 0.0000", "epoch 99999: loss 0.0000"]
    assert len(backend.tail(Handle.of(job), 15, 2048)) == 15
    assert backend.tail(Handle.of(make_job(native_name=native_name("d" * 32))), 15, 2048) == []  # no output yet
