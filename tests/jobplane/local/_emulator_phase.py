"""One life of the embedded emulator on a state folder: write, compact or read, then report what it holds."""

import json
import os
import sys

sys.path.insert(0, sys.argv[3])
from pathlib import Path

import boto3

from jobplane.local import emulator as em

emu, url = em.start_moto(state=Path(sys.argv[1]))
mode = sys.argv[2]
kw = dict(endpoint_url=url, region_name="us-east-1")
ddb, s3 = boto3.client("dynamodb", **kw), boto3.client("s3", **kw)
if mode.startswith("write"):
    # Names no code lists: the mechanism is generic over tables and buckets.
    for table in ("any-table", "another-table"):
        ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[
                {"AttributeName": "k", "AttributeType": "S"},
                {"AttributeName": "g", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by-g",
                    "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
    ddb.update_time_to_live(TableName="any-table", TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"})
    for i in range(60):
        ddb.put_item(
            TableName="any-table", Item={"k": {"S": str(i)}, "g": {"S": "x"}, "n": {"N": "1"}, "b": {"B": b"\x00\xff"}}
        )
    ddb.update_item(
        TableName="any-table",
        Key={"k": {"S": "1"}},
        UpdateExpression="ADD n :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    ddb.delete_item(TableName="any-table", Key={"k": {"S": "2"}})
    try:  # a refused conditional write changes nothing and must not be replayed as if it had
        ddb.put_item(TableName="any-table", Item={"k": {"S": "3"}}, ConditionExpression="attribute_not_exists(k)")
    except ddb.exceptions.ConditionalCheckFailedException:
        pass
    ddb.transact_write_items(
        TransactItems=[{"Put": {"TableName": "another-table", "Item": {"k": {"S": "t"}, "g": {"S": "y"}}}}]
    )
    s3.create_bucket(Bucket="artifacts-bucket")
    s3.put_object(
        Bucket="artifacts-bucket", Key="a b/c%2Fd.txt", Body=b"hello", Metadata={"who": "me"}, ContentType="text/plain"
    )
    s3.put_object(Bucket="artifacts-bucket", Key="model.bin", Body=os.urandom(200_000))
    s3.put_object(Bucket="artifacts-bucket", Key="gone", Body=b"x")
    s3.delete_object(Bucket="artifacts-bucket", Key="gone")
    up = s3.create_multipart_upload(Bucket="artifacts-bucket", Key="checkpoint")
    p1 = s3.upload_part(
        Bucket="artifacts-bucket", Key="checkpoint", UploadId=up["UploadId"], PartNumber=1, Body=b"x" * (5 << 20)
    )
    p2 = s3.upload_part(Bucket="artifacts-bucket", Key="checkpoint", UploadId=up["UploadId"], PartNumber=2, Body=b"y")
    parts = [{"PartNumber": 1, "ETag": p1["ETag"]}, {"PartNumber": 2, "ETag": p2["ETag"]}]
    s3.complete_multipart_upload(
        Bucket="artifacts-bucket", Key="checkpoint", UploadId=up["UploadId"], MultipartUpload={"Parts": parts}
    )
    # An upload through a presigned URL (what `jobplane submit` does with POST /code's answer): no
    # Authorization header, the signature rides in the query string.
    from botocore.config import Config

    presigner = boto3.client("s3", config=Config(signature_version="s3v4"), **kw)
    code = b"packed code" * 1000
    url = presigner.generate_presigned_url(
        "put_object", Params={"Bucket": "artifacts-bucket", "Key": "code/abc.tar.gz"}, ExpiresIn=60
    )
    import urllib.request

    request = urllib.request.Request(url, data=code, method="PUT", headers={"Content-Type": "application/gzip"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
if mode == "compact":
    with emu.persistent.lock:
        emu.persistent._compact_locked()
items = {
    t: sorted(json.dumps(i, sort_keys=True, default=str) for i in ddb.scan(TableName=t)["Items"])
    for t in ("any-table", "another-table")
}
table = ddb.describe_table(TableName="any-table")["Table"]
objects = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket="artifacts-bucket")["Contents"]}
head = s3.get_object(Bucket="artifacts-bucket", Key="a b/c%2Fd.txt")
model = s3.get_object(Bucket="artifacts-bucket", Key="model.bin")["Body"].read()
print(
    json.dumps(
        {
            "items": items,
            "index": [i["IndexName"] for i in table["GlobalSecondaryIndexes"]],
            "stream": table["StreamSpecification"],
            "ttl": ddb.describe_time_to_live(TableName="any-table")["TimeToLiveDescription"],
            "objects": objects,
            "meta": [head["Metadata"], head["ContentType"], head["Body"].read().decode()],
            "model": __import__("hashlib").sha256(model).hexdigest(),
            "replayed": emu.replayed["failed"],
        }
    )
)
sys.stdout.flush()
if mode.endswith("kill"):
    os._exit(0)  # no close, no fsync at exit: what an acknowledged write must survive
emu.stop()
