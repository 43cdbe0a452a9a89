"""The metrics contract (pure): which lines count, what is kept, how reading resumes, how a series is bounded."""

from __future__ import annotations

import re

import pytest

from chalicelib.jobs.metrics import (
    MAX_KEYS_PER_JOB,
    MAX_KEYS_PER_LINE,
    MAX_LINE_CHARS,
    Cursor,
    Malformed,
    Series,
    by_key,
    format_value,
    latest,
    parse_line,
    sagemaker_regex,
    scan,
)


def test_a_metrics_line_gives_its_finite_numbers_anywhere_on_the_line():
    assert parse_line('JOBPLANE_METRICS {"val_accuracy": 0.87, "epoch": 3}') == {"val_accuracy": 0.87, "epoch": 3.0}
    # after a logger's prefix, with trailing spaces or a carriage return
    assert parse_line('2024-05-01 12:00:00 INFO JOBPLANE_METRICS {"loss": 1e-3}  \r') == {"loss": 0.001}
    assert parse_line("epoch 3 loss=0.5") is None
    assert parse_line("JOBPLANE_METRICS_DIR=/tmp") is None  # the marker must be followed by whitespace


def test_a_non_finite_value_drops_its_key_and_keeps_the_rest():
    assert parse_line('JOBPLANE_METRICS {"loss": NaN, "acc": 0.5, "grad": -Infinity}') == {"acc": 0.5}


def test_only_finite_numbers_and_valid_keys_are_kept():
    line = 'JOBPLANE_METRICS {"ok": 1, "flag": true, "name": "x", "nested": {"a": 1}, "bad key": 2, "big": 1e400}'
    assert parse_line(line) == {"ok": 1.0}
    assert parse_line('JOBPLANE_METRICS {"a/b:c.d-e_f": 2, "' + "k" * 65 + '": 1}') == {"a/b:c.d-e_f": 2.0}
    assert parse_line('JOBPLANE_METRICS {"huge": ' + "9" * 400 + ', "ok": 2}') == {"ok": 2.0}


@pytest.mark.parametrize(
    "line",
    [
        "JOBPLANE_METRICS not json",
        "JOBPLANE_METRICS [1, 2]",
        'JOBPLANE_METRICS {"loss": NaN}',
        'JOBPLANE_METRICS {"loss": Infinity}',
        'JOBPLANE_METRICS {"loss": "0.5"}',
        "JOBPLANE_METRICS {}",
        'JOBPLANE_METRICS {"loss": 0.5',
        "JOBPLANE_METRICS " + '{"a": ' + "1" * MAX_LINE_CHARS + "}",
    ],
)
def test_a_line_with_the_marker_but_no_object_of_numbers_is_malformed(line):
    with pytest.raises(Malformed):
        parse_line(line)


def test_at_most_max_keys_per_line_are_read_in_the_lines_order():
    keys = [f"k{i:02d}" for i in range(MAX_KEYS_PER_LINE + 5)]
    line = "JOBPLANE_METRICS {" + ", ".join(f'"{k}": {i}' for i, k in enumerate(keys)) + "}"
    assert list(parse_line(line)) == keys[:MAX_KEYS_PER_LINE]


def test_scan_numbers_lines_counts_malformed_ones_and_carries_a_partial_line():
    start = Cursor()
    text = 'noise\nJOBPLANE_METRICS {"loss": 2}\nJOBPLANE_METRICS oops\nJOBPLANE_METRICS {"loss": 1, "acc'
    first = scan(start, text, 100)
    assert first.lines == ((1, {"loss": 2.0}),)
    assert first.cursor == Cursor(100, 1, 1, 'JOBPLANE_METRICS {"loss": 1, "acc', 1)
    second = scan(first.cursor, '": 0.5}\nJOBPLANE_METRICS {"loss": 0.5}\n', 160)
    assert second.lines == ((2, {"loss": 1.0, "acc": 0.5}), (3, {"loss": 0.5}))
    assert second.cursor == Cursor(160, 3, 1, "", 1)


def test_a_final_scan_reads_a_last_line_without_its_newline():
    cursor = scan(Cursor(), 'JOBPLANE_METRICS {"loss": 0.1}', 30).cursor
    assert cursor.carry and cursor.lines == 0
    last = scan(cursor, "", 30, final=True)
    assert last.lines == ((1, {"loss": 0.1}),)
    assert last.cursor.carry == ""


def test_the_carried_part_of_an_endless_line_is_bounded():
    cursor = scan(Cursor(), "x" * (3 * MAX_LINE_CHARS), 1).cursor
    cursor = scan(cursor, "y" * (3 * MAX_LINE_CHARS), 2).cursor
    assert len(cursor.carry) == MAX_LINE_CHARS + 1


def test_the_same_output_from_the_same_cursor_gives_the_same_result():
    text = 'JOBPLANE_METRICS {"a": 1}\nJOBPLANE_METRICS {"a": 2}\n'
    assert scan(Cursor(5, 7, 1, "", 2), text, 60) == scan(Cursor(5, 7, 1, "", 2), text, 60)


def test_a_cursor_round_trips_and_a_new_attempt_starts_its_own_log_with_the_numbering_going_on():
    cursor = Cursor("t~abc", 12, 2, "JOBPLANE_METR", 1)
    assert Cursor.from_text(cursor.to_text()) == cursor
    assert Cursor.from_text(None) is None
    assert cursor.for_attempt(1) is cursor
    assert cursor.for_attempt(2) == Cursor(0, 12, 2, "", 2)


def test_latest_keeps_every_key_up_to_the_job_limit():
    lines = tuple((i + 1, {f"k{i}": float(i)}) for i in range(MAX_KEYS_PER_JOB + 3))
    merged = latest({}, lines)
    assert len(merged) == MAX_KEYS_PER_JOB
    assert "k0" in merged and f"k{MAX_KEYS_PER_JOB}" not in merged
    assert latest(merged, ((99, {"k0": 5.0}),))["k0"] == 5.0  # a known key still updates
    assert by_key(((1, {"a": 1.0, "z": 2.0}),), {"a": 0.0}) == {"a": [(1, 1.0)]}


def test_a_series_keeps_at_most_max_points_evenly_spaced_over_the_run():
    series = Series().extend([(seq, float(seq)) for seq in range(1, 5001)], max_points=100)
    seqs = [s for s, _ in series.points]
    assert len(seqs) <= 100
    assert seqs[0] == 1  # the start of the run is kept
    gaps = {b - a for a, b in zip(seqs, seqs[1:], strict=False)}
    assert gaps == {series.stride}  # evenly spaced
    assert seqs[-1] > 5000 - 2 * series.stride  # and reaching the end
    assert (series.seen, series.last_seq) == (5000, 5000)


def test_a_point_at_or_before_the_last_seq_is_not_added_twice():
    series = Series().extend([(1, 1.0), (2, 2.0)])
    assert series.extend([(2, 2.0), (1, 1.0)]) == series
    assert series.extend([(2, 2.0), (3, 3.0)]).points == ((1, 1.0), (2, 2.0), (3, 3.0))
    assert Series.from_dict(series.to_dict()) == series


def test_the_sagemaker_regex_captures_the_keys_value_and_no_other():
    line = 'JOBPLANE_METRICS {"a_loss": 9, "loss": -1.5e-3, "val.acc": 0.9}'
    assert re.search(sagemaker_regex("loss"), line).group(1) == "-1.5e-3"
    assert re.search(sagemaker_regex("val.acc"), line).group(1) == "0.9"
    assert re.search(sagemaker_regex("val.acc"), 'JOBPLANE_METRICS {"valXacc": 1}') is None
    assert re.search(sagemaker_regex("loss"), 'print {"loss": 1}') is None


def test_values_read_as_people_write_them():
    assert [format_value(v) for v in (0.87312345, 3.0, 1.2e-05)] == ["0.873123", "3", "1.2e-05"]
