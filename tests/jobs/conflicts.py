"""Inject DynamoDB's answers to writes that meet another transaction, at the HTTP layer of the botocore client."""

from __future__ import annotations

import json
import threading

PREFIX = "com.amazonaws.dynamodb.v20120810#"


class _Raw:
    def stream(self, **_):
        yield b""


def _cancelled(request) -> dict:
    """TransactWriteItems: the whole transaction cancelled, one reason per item in request order."""
    items = len(json.loads(request.body)["TransactItems"])
    reasons = [{"Code": "None"}] * (items - 1) + [
        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
    ]
    codes = ", ".join(r["Code"] for r in reasons)
    return {
        "__type": f"{PREFIX}TransactionCanceledException",
        "Message": f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
        "CancellationReasons": reasons,
    }


def _single(_request) -> dict:
    """PutItem / UpdateItem on an item a transaction is writing."""
    return {"__type": f"{PREFIX}TransactionConflictException", "message": "Transaction is ongoing for the item"}


def inject_transaction_conflicts(store, count: int, operations=("TransactWriteItems",)) -> dict[str, int]:
    """The next `count` calls of `operations` answer HTTP 400 with DynamoDB's conflict error (the emulator
    applies requests one at a time, so it never does); returns the live count of injected answers."""
    from botocore.awsrequest import AWSResponse

    state = {"left": count, "seen": 0}
    lock = threading.Lock()

    def conflict(request, **_):
        with lock:
            if state["left"] <= 0:
                return None
            state["left"] -= 1
            state["seen"] += 1
        operation = request.headers["X-Amz-Target"].decode().rsplit(".", 1)[-1]
        body = _cancelled(request) if operation == "TransactWriteItems" else _single(request)
        response = AWSResponse(request.url, 400, {"x-amzn-requestid": "conflict"}, _Raw())
        response._content = json.dumps(body).encode()
        return response

    for client in {m._get_connection().connection.client for m in store.models.values()}:
        for operation in operations:
            client.meta.events.register(f"before-send.dynamodb.{operation}", conflict)
    return state
