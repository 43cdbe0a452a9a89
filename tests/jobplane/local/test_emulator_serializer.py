"""The emulator's fast DynamoDB serializer writes exactly what moto's generic one writes."""

from __future__ import annotations

import json

from moto.core.responses import ActionContext, ActionResult
from moto.core.serialize import JSONSerializer
from moto.core.utils import get_service_model

from jobplane.local.emulator import _fast_dynamodb_serializer

ITEM = {
    "s": {"S": "text é"},
    "n": {"N": "12.5"},
    "b": {"B": b"\x00\xffbytes"},
    "ss": {"SS": ["a", "b"]},
    "ns": {"NS": ["1", "2"]},
    "bs": {"BS": [b"\x01", b"\x02"]},
    "null": {"NULL": True},
    "bool": {"BOOL": False},
    "m": {"M": {"inner": {"L": [{"S": "x"}, {"N": "1"}, {"M": {"deep": {"B": b"\x03"}}}]}}},
    "empty_l": {"L": []},
    "empty_m": {"M": {}},
}


def _serialize(serializer_class, operation: str, result: dict) -> dict:
    model = get_service_model("dynamodb")
    context = ActionContext(model, model.operation_model(operation), serializer_class, None)
    status, _, body = ActionResult(result).execute_result(context)
    assert status == 200
    return json.loads(body)


def test_can_serialize_every_attribute_type_as_the_generic_serializer_does():
    fast = _fast_dynamodb_serializer()
    for operation, result in (
        ("GetItem", {"Item": ITEM}),
        (
            "Query",
            {"Items": [ITEM, {"k": {"S": "2"}}], "Count": 2, "LastEvaluatedKey": {"k": {"S": "2"}}},
        ),
        ("BatchGetItem", {"Responses": {"t": [ITEM]}, "UnprocessedKeys": {}}),
    ):
        expected = _serialize(JSONSerializer, operation, result)
        assert _serialize(fast, operation, result) == expected
        assert expected  # not two empty answers agreeing


def test_hands_a_value_it_does_not_know_back_to_the_generic_path():
    fast = _fast_dynamodb_serializer()
    odd = {"Item": {"two": {"S": "a", "N": "1"}}}  # not one type per value: the generic path decides
    assert _serialize(fast, "GetItem", odd) == _serialize(JSONSerializer, "GetItem", odd)
