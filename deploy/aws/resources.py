"""Post-process `chalice package --pkg-format terraform`: add the resources Chalice does not create.

DynamoDB tables (from the same pynamodb models the code uses, so they cannot drift), the jobs
stream wired to the `notify` function, the upload bucket, and the SSM SecureString parameters (or Secrets
Manager entries) whose names the stage's settings carry (their values are put by an operator, never by this
script). It also
brings Chalice's Terraform to current Terraform and AWS provider versions (`terraform.py`) and drops
from the dependency layer the AWS SDK the Lambda runtime ships (`layer.py`), and adds compiled bytecode to the
function zip and the layer (`bytecode.py`), so a cold start compiles nothing.

    python deploy/aws/resources.py --stage dev build/package
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
# Its siblings by path: under pytest, `deploy` would name the tests' own deploy package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bytecode  # noqa: E402  (run as a script: the folders are on sys.path above)
import layer  # noqa: E402
import terraform  # noqa: E402

TF_NAMES = {
    "jobs": "jobs",
    "history": "job_events",
    "tokens": "tokens",
    "idempotency": "idempotency",
    "capacity": "capacity",
    "slack": "slack",
}


def stage_settings(stage: str):
    from chalicelib.config import Settings

    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    env = {**config.get("environment_variables", {}), **config["stages"][stage].get("environment_variables", {})}
    env.setdefault("JOBPLANE_STAGE", stage)
    return Settings.from_env(env), env


def table_resource(model, ttl_attribute: str | None = None) -> dict:
    schema = model._get_schema()
    keys = {k["KeyType"]: k["AttributeName"] for k in schema["key_schema"]}
    table = {
        "name": model.Meta.table_name,
        "billing_mode": "PAY_PER_REQUEST",
        "hash_key": keys["HASH"],
        "attribute": [
            {"name": a["AttributeName"], "type": a["AttributeType"]} for a in schema["attribute_definitions"]
        ],
        "point_in_time_recovery": {"enabled": True},
        "server_side_encryption": {"enabled": True},
        "deletion_protection_enabled": True,
        "tags": {"jobplane:managed": "true"},
    }
    if "RANGE" in keys:
        table["range_key"] = keys["RANGE"]
    indexes = []
    for index in schema["global_secondary_indexes"]:
        index_keys = {k["KeyType"]: k["AttributeName"] for k in index["key_schema"]}
        entry = {
            "name": index["index_name"],
            "hash_key": index_keys["HASH"],
            "projection_type": index["projection"]["ProjectionType"],
        }
        if "RANGE" in index_keys:
            entry["range_key"] = index_keys["RANGE"]
        indexes.append(entry)
    if indexes:
        table["global_secondary_index"] = indexes
    stream = getattr(model.Meta, "stream_view_type", None)
    if stream:
        table["stream_enabled"] = True
        table["stream_view_type"] = stream
    if ttl_attribute:
        table["ttl"] = {"attribute_name": ttl_attribute, "enabled": True}
    return table


def extra_resources(stage: str) -> dict:
    from chalicelib.config import deploy_constants
    from chalicelib.store.tables import dynamo_stores

    settings, env = stage_settings(stage)
    tables = {
        TF_NAMES.get(name, name): table_resource(model, store.TTL_ATTRIBUTES.get(name))
        for store in dynamo_stores(settings).values()
        for name, model in store.models.items()
    }
    bucket = deploy_constants(env)["upload_bucket"]
    secrets, parameters = {}, {}
    for var in sorted(k for k in env if k.startswith("JOBPLANE_SLACK_") and k.endswith("_SECRET")):
        name = env[var]
        key = var.lower().removeprefix("jobplane_")
        description = f"jobplane {stage}: {var} (value set by an operator)"
        if name and name.startswith("ssm:"):
            # A standard SecureString (no charge; the AWS managed key decrypts): the value is the operator's,
            # so Terraform writes a placeholder once and never puts it back.
            parameters[key] = {
                "name": name[len("ssm:") :],
                "type": "SecureString",
                "tier": "Standard",
                "value": "set-by-an-operator",
                "description": description,
                "tags": {"jobplane:managed": "true"},
                "lifecycle": {"ignore_changes": ["value"]},
            }
        elif name:
            secrets[key] = {"name": name, "description": description, "tags": {"jobplane:managed": "true"}}
    return {
        "resource": {
            "aws_dynamodb_table": tables,
            "aws_s3_bucket": {"uploads": {"bucket": bucket, "tags": {"jobplane:managed": "true"}}},
            "aws_s3_bucket_public_access_block": {
                "uploads": {
                    "bucket": "${aws_s3_bucket.uploads.id}",
                    "block_public_acls": True,
                    "block_public_policy": True,
                    "ignore_public_acls": True,
                    "restrict_public_buckets": True,
                }
            },
            **({"aws_secretsmanager_secret": secrets} if secrets else {}),
            **({"aws_ssm_parameter": parameters} if parameters else {}),
        },
        "output": {
            "jobs_stream_arn": {"value": "${aws_dynamodb_table.jobs.stream_arn}"},
            "upload_bucket": {"value": "${aws_s3_bucket.uploads.id}"},
        },
    }


def wire_stream(chalice_tf: dict, placeholder: str) -> int:
    """Point the `notify` event source mapping at the jobs table's real stream (known only at apply)."""
    wired = 0
    for mapping in chalice_tf.get("resource", {}).get("aws_lambda_event_source_mapping", {}).values():
        if mapping.get("event_source_arn") == placeholder:
            mapping["event_source_arn"] = "${aws_dynamodb_table.jobs.stream_arn}"
            wired += 1
    return wired


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("out", type=Path, help="the folder `chalice package --pkg-format terraform` wrote")
    args = parser.parse_args(argv)
    from chalicelib.config import deploy_constants

    chalice_file = args.out / "chalice.tf.json"
    chalice_tf = json.loads(chalice_file.read_text())
    _, env = stage_settings(args.stage)
    if wire_stream(chalice_tf, deploy_constants(env)["jobs_stream_arn"]) != 1:
        raise SystemExit("expected exactly one DynamoDB stream mapping (the notify function) in chalice.tf.json")
    chalice_file.write_text(json.dumps(terraform.modernize(chalice_tf), indent=2))
    (args.out / "jobplane-resources.tf.json").write_text(json.dumps(extra_resources(args.stage), indent=2))
    print(f"wrote {args.out / 'jobplane-resources.tf.json'} and wired the jobs stream into {chalice_file}")
    layer_zip = args.out / "layer-deployment.zip"
    if not layer_zip.exists():
        raise SystemExit("no layer-deployment.zip: set automatic_layer in .chalice/config.json")
    dropped = layer.strip_runtime_sdk(layer_zip)
    if dropped:
        shipped = ", ".join(f"{name} {version}" for name, version in dropped.items())
        print(f"dropped from the layer (the Lambda runtime ships them): {shipped}")
    runtimes = {f["runtime"] for f in chalice_tf["resource"]["aws_lambda_function"].values()}
    if len(runtimes) != 1:
        raise SystemExit(f"expected one Lambda runtime for every function, found {sorted(runtimes)}")
    tag = bytecode.runtime_tag(runtimes.pop())
    for name in ("deployment.zip", "layer-deployment.zip"):
        print(f"{name}: compiled {bytecode.add_bytecode(args.out / name, tag)} modules ({tag})")
    for name in ("deployment.zip", "layer-deployment.zip"):
        print(f"{name}: {(args.out / name).stat().st_size / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
