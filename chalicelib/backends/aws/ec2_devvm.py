"""Dev VMs on EC2: a tagged GPU instance that stops (not terminates) so its disk survives a restart."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from chalicelib.backends.agent import devvm_script
from chalicelib.backends.aws.base import TAG_STOPPED_BY, instance_type_for
from chalicelib.backends.aws.ec2 import Ec2Backend
from chalicelib.backends.aws.errors import aws_errors
from chalicelib.backends.base import Utilization
from chalicelib.devvms import DevVmSpec, devvm_identity, devvm_resources
from chalicelib.errors import BackendError
from chalicelib.jobs.model import utcnow

TAG_DEVVM_ID = "jobplane:devvm-id"
METRIC_NAMESPACE = "jobplane"
METRIC_NAME = "GPUUtilization"

# The EC2 part of the shared dev VM agent (chalicelib/backends/agent.py devvm_script): the instance finds its
# own id and region from IMDSv2; each sample is published to CloudWatch (the busiest GPU sample of the idle
# window, which is also the VM's heartbeat); a shutdown from inside stops the instance
# (InstanceInitiatedShutdownBehavior: stop), so its disk is kept.
_DEVVM_PART = r"""
imds() {
  local token
  token=$(curl -sS -X PUT "http://169.254.169.254/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
  curl -sS -H "X-aws-ec2-metadata-token: ${token}" "http://169.254.169.254/latest/meta-data/$1"
}
INSTANCE_ID=$(imds instance-id)
REGION=$(imds placement/region)
publish_usage() {
  aws cloudwatch put-metric-data --region "$REGION" --namespace jobplane --metric-name GPUUtilization \
    --dimensions "InstanceId=${INSTANCE_ID}" --unit Percent --value "${1:-0}" || true
}
power_off() {
  echo "jobplane: $1: stopping the instance"
  shutdown -h now
}
"""


def devvm_user_data(idle_minutes: int, max_hours: float, sample_seconds: int = 60) -> str:
    """A dev VM's user data: only its limits (numbers) are interpolated."""
    return devvm_script(
        idle_minutes=idle_minutes, max_hours=max_hours, sample_seconds=sample_seconds, cloud_part=_DEVVM_PART
    )


class Ec2DevVmProvider(Ec2Backend):
    """The EC2 backend's settings, clients and error table, driving dev VMs instead of jobs."""

    iam_actions = (
        "ec2:RunInstances",
        "ec2:StartInstances",
        "ec2:StopInstances",
        "ec2:DescribeInstances",
        "ec2:CreateTags",
        "cloudwatch:GetMetricStatistics",
    )

    default_gpu_type = "A10G"

    def validate_devvm(self, spec) -> None:
        """UnsupportedError naming the field when no EC2 instance type fits (checked before anything is made)."""
        instance_type_for(devvm_resources(spec))

    def devvm_tags(self, vm) -> dict[str, str]:
        # jobplane:managed, :stage, :kind (devvm: the job sweep skips it), :devvm-id, :owner
        tags = {f"jobplane:{key}": value for key, value in devvm_identity(vm, self.settings.stage).items()}
        return {**tags, "Name": f"jobplane-devvm-{vm.spec['name']}"}

    def devvm_request(self, vm) -> dict[str, Any]:
        spec = vm.spec
        resources = devvm_resources(DevVmSpec.model_validate(spec))
        tags = [{"Key": k, "Value": v} for k, v in self.devvm_tags(vm).items()]
        request: dict[str, Any] = {
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceType": instance_type_for(resources),
            "ClientToken": f"devvm-{vm.vm_id}",
            "InstanceInitiatedShutdownBehavior": "stop",  # a shutdown keeps the disk; start it again later
            "UserData": devvm_user_data(spec["idle_minutes"], spec["max_hours"]),
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            **self.placement(),
        }
        if spec.get("spot"):
            # Only a persistent spot request can be stopped and started again.
            request["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop"},
            }
        return request

    def _find(self, vm) -> dict[str, Any] | None:
        instances = self.find_instances(
            {"Name": f"tag:{TAG_DEVVM_ID}", "Values": [vm.vm_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        )
        return instances[0] if instances else None

    def launch_devvm(self, vm) -> tuple[str, str]:
        existing = self._find(vm)  # a retried create finds the first launch (emulators ignore ClientToken)
        if existing is not None:
            return existing["InstanceId"], existing["InstanceType"]
        request = self.devvm_request(vm)
        with aws_errors("ec2", "RunInstances"):
            instance = self.client().run_instances(**request)["Instances"][0]
        return instance["InstanceId"], instance["InstanceType"]

    def _checked_id(self, vm) -> str:
        """The dev VM's instance id, found by its tags: never an instance jobplane did not start for it."""
        instance = self._find(vm)
        if instance is None or instance["InstanceId"] != vm.native_id:
            raise BackendError(f"instance {vm.native_id} is not dev VM {vm.vm_id} of this deployment")
        return instance["InstanceId"]

    def start_devvm(self, vm) -> None:
        instance_id = self._checked_id(vm)
        with aws_errors("ec2", "StartInstances"):
            self.client().start_instances(InstanceIds=[instance_id])

    def stop_devvm(self, vm, reason: str) -> None:
        instance_id = self._checked_id(vm)
        with aws_errors("ec2", "CreateTags"):
            self.client().create_tags(Resources=[instance_id], Tags=[{"Key": TAG_STOPPED_BY, "Value": reason[:255]}])
        with aws_errors("ec2", "StopInstances"):
            self.client().stop_instances(InstanceIds=[instance_id])

    def devvm_utilization(self, vm, window_minutes: int) -> Utilization | None:
        if not vm.native_id:
            return None
        now = utcnow()
        with aws_errors("cloudwatch", "GetMetricStatistics"):
            points = self.client("cloudwatch").get_metric_statistics(
                Namespace=METRIC_NAMESPACE,
                MetricName=METRIC_NAME,
                Dimensions=[{"Name": "InstanceId", "Value": vm.native_id}],
                StartTime=now - timedelta(minutes=window_minutes),
                EndTime=now,
                Period=60,
                Statistics=["Maximum"],
            )["Datapoints"]
        if not points:
            return Utilization(gpu_percent=None, last_heartbeat=None)
        return Utilization(
            gpu_percent=max(p["Maximum"] for p in points), last_heartbeat=max(p["Timestamp"] for p in points)
        )
