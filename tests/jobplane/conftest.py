"""Fixtures of the CLI and SDK tests: the SDK's HTTP answered by the real app in this process."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict


class ChaliceAdapter(BaseAdapter):
    """requests -> chalice.test.Client: the SDK's own HTTP calls, answered by the app in this process."""

    def __init__(self, api):
        super().__init__()
        self.api = api

    def send(self, request, **kwargs):
        parts = urlsplit(request.url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        body = request.body or b""
        answer = getattr(self.api.client.http, request.method.lower())(
            path, headers=dict(request.headers), body=body.encode() if isinstance(body, str) else body
        )
        response = requests.Response()
        response.status_code = answer.status_code
        response.headers = CaseInsensitiveDict(answer.headers)
        response._content = answer.body
        response.request = request
        response.url = request.url
        return response

    def close(self):
        pass


@pytest.fixture
def http_for(api):
    """http_for(token) -> (jobplane.client.Client over the app, the "METHOD /path?query" it sent)."""
    from jobplane.client import Client as Http

    def make(token):
        http = Http("http://api.test", token)
        http.session.mount("http://api.test", ChaliceAdapter(api))
        sent: list[str] = []
        http.session.hooks["response"].append(
            lambda r, *a, **k: sent.append(f"{r.request.method} {r.request.path_url}")
        )
        return http, sent

    return make
