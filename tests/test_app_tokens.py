"""GET /tokens and DELETE /tokens/{token_id}: listed by id (never the token), revoked at once, owner-scoped."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chalicelib.auth import hash_token
from chalicelib.store.tokens import TokenRecord


def _error(response, status):
    assert response.status_code == status, response.body
    return response.json_body["error"]


@pytest.fixture
def tokens(api):
    return {
        "alice": api.token("alice"),
        "alice2": api.token("alice"),
        "bob": api.token("bob"),
        "root": api.token("root", admin=True),
    }


def _id(token: str) -> str:
    return hash_token(token)[:12]


def test_a_user_lists_only_their_own_tokens_by_id_and_never_a_token(api, tokens):
    response = api.request("GET", "/tokens", tokens["alice"])
    assert response.status_code == 200, response.body
    listed = response.json_body["tokens"]
    assert {t["token_id"] for t in listed} == {_id(tokens["alice"]), _id(tokens["alice2"])}
    assert {t["user"] for t in listed} == {"alice"} and not any(t["admin"] for t in listed)
    body = response.body.decode() if isinstance(response.body, bytes) else response.body
    assert tokens["alice"] not in body and hash_token(tokens["alice"]) not in body
    assert _error(api.request("GET", "/tokens?user=bob", tokens["alice"]), 404)["code"] == "not_found"


def test_an_admin_lists_everyones_or_one_users(api, tokens):
    everyone = api.request("GET", "/tokens", tokens["root"]).json_body["tokens"]
    assert {t["user"] for t in everyone} == {"alice", "bob", "root"}
    bobs = api.request("GET", "/tokens?user=bob", tokens["root"]).json_body["tokens"]
    assert [t["token_id"] for t in bobs] == [_id(tokens["bob"])]


def test_a_revoked_token_is_refused_on_its_next_request(api, tokens):
    response = api.request("DELETE", f"/tokens/{_id(tokens['alice2'])}", tokens["alice"])
    assert response.status_code == 200, response.body
    assert response.json_body["token_id"] == _id(tokens["alice2"]) and response.json_body["user"] == "alice"
    assert _error(api.request("GET", "/jobs", tokens["alice2"]), 401)["code"] == "unauthenticated"
    assert api.request("GET", "/jobs", tokens["alice"]).status_code == 200
    assert _error(api.request("DELETE", f"/tokens/{_id(tokens['alice2'])}", tokens["alice"]), 404)


def test_a_user_cannot_revoke_another_users_token_and_an_admin_can(api, tokens):
    assert _error(api.request("DELETE", f"/tokens/{_id(tokens['bob'])}", tokens["alice"]), 404)
    assert api.request("GET", "/jobs", tokens["bob"]).status_code == 200
    assert api.request("DELETE", f"/tokens/{_id(tokens['bob'])[:6]}", tokens["root"]).status_code == 200
    assert api.request("GET", "/jobs", tokens["bob"]).status_code == 401


def test_a_bad_or_ambiguous_token_id_names_the_field(api, tokens):
    bad = _error(api.request("DELETE", "/tokens/not-hex!", tokens["root"]), 400)
    assert bad["details"][0]["field"] == "token_id"
    at = datetime(2026, 1, 1, tzinfo=UTC)
    api.stores["tokens"].put_token(TokenRecord("abcd" + "1" * 60, "carol", False, at))
    api.stores["tokens"].put_token(TokenRecord("abcd" + "2" * 60, "carol", False, at))
    clash = _error(api.request("DELETE", "/tokens/abcd", tokens["root"]), 409)
    assert clash["details"][0]["field"] == "token_id" and "abcd11111111" in clash["details"][0]["message"]
    assert api.request("DELETE", "/tokens/abcd1", tokens["root"]).status_code == 200
    assert [t.token_hash[:5] for t in api.stores["tokens"].list_tokens("carol")] == ["abcd2"]


def test_listing_and_revoking_need_a_token(api):
    assert api.request("GET", "/tokens").status_code == 401
    assert api.request("DELETE", "/tokens/abcdef").status_code == 401
