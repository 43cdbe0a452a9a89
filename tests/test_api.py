"""Query parameters at the HTTP edge: strings in, the typed values the service takes out."""

from __future__ import annotations

import pytest

from chalicelib.api import MAX_LIMIT, ListQuery, list_query, parse_offset
from chalicelib.errors import ValidationError
from chalicelib.jobs.model import JobStatus


def test_list_parameters_become_a_status_a_number_and_the_token_untouched():
    assert list_query({"status": "RUNNING", "limit": "7", "next_token": "abc"}) == ListQuery(
        JobStatus.RUNNING, 7, "abc"
    )
    assert list_query({"limit": str(MAX_LIMIT)}).limit == MAX_LIMIT


def test_absent_list_parameters_leave_the_choice_to_the_service():
    assert list_query({}) == ListQuery(None, None, None)


@pytest.mark.parametrize(("raw", "expected"), [(None, 0), ("", 0), ("0", 0), ("4096", 4096), (12, 12)])
def test_a_logs_offset_is_a_non_negative_integer_defaulting_to_zero(raw, expected):
    assert parse_offset(raw) == expected


@pytest.mark.parametrize("raw", ["-1", "ten", "1.5", -3])
def test_a_bad_logs_offset_names_the_offset(raw):
    with pytest.raises(ValidationError) as info:
        parse_offset(raw)
    assert info.value.details[0]["field"] == "offset"


def test_a_provider_cursor_offset_passes_unchanged_and_a_forged_one_names_the_offset():
    from chalicelib.backends.base import encode_log_token

    token = encode_log_token({"i": 1, "s": "stream", "t": "f/1"})
    assert parse_offset(token) == token
    with pytest.raises(ValidationError) as info:
        parse_offset("t~not base64 json!")
    assert info.value.details[0]["field"] == "offset"
