"""Bring Chalice's Terraform to Terraform >= 1.5 and the AWS provider 5.x, without deprecated arguments."""

from __future__ import annotations

import json
import re

# Chalice 1.34 writes ">= 0.12.26, < 1.4.0" and "aws < 5": no Terraform or AWS provider of the last years accepts it.
TERRAFORM_REQUIREMENTS = {
    "required_version": ">= 1.5",
    "required_providers": {"aws": {"source": "hashicorp/aws", "version": ">= 5.0, < 6.0"}},
}
DEPRECATED_DEPLOYMENT_ATTRIBUTE = re.compile(r"aws_api_gateway_deployment\.[\w-]+\.(invoke_url|execution_arn)")


def modernize(tf: dict) -> dict:
    """Rewrite `chalice.tf.json` in place (and return it): version pins, unused data, the API stage."""
    tf["terraform"] = json.loads(json.dumps(TERRAFORM_REQUIREMENTS))
    data = tf.get("data", {})
    # Chalice declares it for its own bookkeeping and never reads it; it would pull in the hashicorp/null provider.
    data.pop("null_data_source", None)
    if not data:
        tf.pop("data", None)
    _split_api_stage(tf)
    leftover = json.dumps(tf)
    if "null_data_source" in leftover or DEPRECATED_DEPLOYMENT_ATTRIBUTE.search(leftover):
        raise ValueError("chalice.tf.json still refers to something modernize() removed or deprecated")
    return tf


def _split_api_stage(tf: dict) -> None:
    """Move each deployment's `stage_name` into an `aws_api_gateway_stage` (deprecated on the deployment in 5.x)."""
    resources = tf["resource"]
    for name, deployment in resources.get("aws_api_gateway_deployment", {}).items():
        if "stage_name" not in deployment:
            continue
        stage_name = deployment.pop("stage_name")
        # Chalice changes stage_description with the API's swagger to force a new deployment; triggers do that now.
        redeploy = deployment.pop("stage_description", "${md5(local.chalice_api_swagger)}")
        deployment["triggers"] = {"redeployment": redeploy}
        deployment.setdefault("lifecycle", {})["create_before_destroy"] = True
        resources.setdefault("aws_api_gateway_stage", {})[name] = {
            "rest_api_id": deployment["rest_api_id"],
            "deployment_id": f"${{aws_api_gateway_deployment.{name}.id}}",
            "stage_name": stage_name,
        }
        for output in tf.get("output", {}).values():
            for attribute in ("invoke_url", "execution_arn"):
                output["value"] = output["value"].replace(
                    f"aws_api_gateway_deployment.{name}.{attribute}", f"aws_api_gateway_stage.{name}.{attribute}"
                )
