"""The AWS resources the cloud backends need, provisioned in the local stack's embedded AWS.

What a deployment's Terraform would create (roles, a Batch compute environment and queues, an ECS
cluster with a container instance, an EC2 launch template, subnet and instance profile, the artifact
bucket), made in moto at each start. Only DynamoDB and S3 are journaled, so everything else is made
again after a restart: every step looks before it creates, and running it twice changes nothing.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from chalicelib.backends import Cloud, descriptor, get_backend

# Names of what the stack itself owns (the backends' own resources are named by their settings).
LAUNCH_TEMPLATE = "jobplane-local-ec2"
COMPUTE_ENVIRONMENT = "jobplane-local"
BATCH_SERVICE_ROLE = "jobplane-local-batch-service"
ECS_HOST_NAME = "jobplane-local-ecs-host"
# The image job VMs boot: any AMI moto knows; the fake VM runs the user data, not the image.
AMI_NAME_PREFIX = "amzn2-ami-hvm"


def trust_policy(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )


def cloud_backends(settings) -> list[str]:
    """The enabled backends that run on AWS (the local stack's emulator is the only cloud it has)."""
    return [name for name in settings.enabled_backends if descriptor(name).cloud is Cloud.AWS]


def unsupported_backends(names) -> list[str]:
    """Backends the local stack cannot run: neither local, nor on AWS (it emulates no other cloud), nor on the
    Kubernetes cluster KUBECONFIG names (it drives that one as it is)."""
    return [name for name in names if descriptor(name).cloud not in (Cloud.AWS, Cloud.LOCAL, Cloud.KUBERNETES)]


class Provisioner:
    """Makes (or finds) each backend's resources; `env` collects the settings that name them."""

    def __init__(self, settings, endpoint: str, region: str) -> None:
        import boto3

        self.settings = settings
        self.endpoint = endpoint
        self.kw = {"region_name": region, "endpoint_url": endpoint}
        self._boto3 = boto3
        self._clients: dict[str, Any] = {}
        self.env: dict[str, str] = {}
        self._ami: str | None = None
        self.created: list[str] = []  # what this run made (empty when everything was there already)

    def client(self, service: str):
        if service not in self._clients:
            self._clients[service] = self._boto3.client(service, **self.kw)
        return self._clients[service]

    def run(self) -> dict[str, str]:
        names = cloud_backends(self.settings)
        if not names:
            return self.env
        self.bucket(self.settings.artifacts_bucket)
        for name in names:
            for role, service in get_backend(name, self.settings).roles():
                self.role(role, service)
            getattr(self, "_" + name.replace("-", "_"), lambda: None)()
        return self.env

    # --- pieces ----------------------------------------------------------------------------
    def bucket(self, name: str) -> None:
        s3 = self.client("s3")
        if name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=name)  # else restored from the journal, with its objects
            self.created.append(f"s3://{name}")

    def role(self, name: str, service: str) -> str:
        iam = self.client("iam")
        try:
            return iam.get_role(RoleName=name)["Role"]["Arn"]
        except iam.exceptions.NoSuchEntityException:
            pass
        self.created.append(f"role {name}")
        return iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust_policy(service))["Role"]["Arn"]

    def instance_profile(self, name: str) -> str:
        """An instance profile holding the role of the same name (the ec2 backend's convention)."""
        iam = self.client("iam")
        try:
            profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        except iam.exceptions.NoSuchEntityException:
            profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
            self.created.append(f"instance profile {name}")
        if name not in {r["RoleName"] for r in profile.get("Roles", [])}:
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        return profile["Arn"]

    def ami(self) -> str:
        if self._ami is None:
            # Filtered by name: moto answers a bare DescribeImages with its ~1,300 images in seconds.
            name = [{"Name": "name", "Values": [AMI_NAME_PREFIX + "*"]}]
            images = self.client("ec2").describe_images(Owners=["amazon"], Filters=name)["Images"]
            if not images:
                images = self.client("ec2").describe_images(Owners=["amazon"])["Images"]
            self._ami = min(i["ImageId"] for i in images)
        return self._ami

    def default_subnet(self) -> tuple[str, str]:
        """(subnet, its VPC's default security group) of the default VPC, first zone first."""
        ec2 = self.client("ec2")
        subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
        subnet = min(subnets, key=lambda s: s["AvailabilityZone"])
        groups = ec2.describe_security_groups(
            Filters=[{"Name": "vpc-id", "Values": [subnet["VpcId"]]}, {"Name": "group-name", "Values": ["default"]}]
        )["SecurityGroups"]
        return subnet["SubnetId"], groups[0]["GroupId"]

    # --- per backend (named after the registry key) ----------------------------------------------
    def _ec2(self) -> None:
        self.instance_profile(self.settings.ec2_instance_profile)
        ec2 = self.client("ec2")
        found = ec2.describe_launch_templates(
            Filters=[{"Name": "launch-template-name", "Values": [LAUNCH_TEMPLATE]}]
        ).get("LaunchTemplates", [])
        if not found:
            ec2.create_launch_template(LaunchTemplateName=LAUNCH_TEMPLATE, LaunchTemplateData={"ImageId": self.ami()})
            self.created.append(f"launch template {LAUNCH_TEMPLATE}")
        subnet, group = self.default_subnet()
        self.env.update(
            JOBPLANE_EC2_LAUNCH_TEMPLATE=LAUNCH_TEMPLATE, JOBPLANE_EC2_SUBNET=subnet, JOBPLANE_EC2_SECURITY_GROUPS=group
        )

    def _sagemaker(self) -> None:
        return None  # its execution role is all it needs (made from roles())

    def _aws_batch(self) -> None:
        # moto runs Batch jobs in Docker unless told not to; there is no Docker engine here.
        body = json.dumps({"batch": {"use_docker": False}}).encode()
        config = f"{self.endpoint}/moto-api/config"
        request = urllib.request.Request(config, data=body, method="POST")  # noqa: S310 - the stack's emulator
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - as above
            pass
        batch = self.client("batch")
        found = batch.describe_compute_environments(computeEnvironments=[COMPUTE_ENVIRONMENT])["computeEnvironments"]
        if found:
            environment = found[0]["computeEnvironmentArn"]
        else:
            environment = batch.create_compute_environment(
                computeEnvironmentName=COMPUTE_ENVIRONMENT,
                type="UNMANAGED",
                state="ENABLED",
                serviceRole=self.role(BATCH_SERVICE_ROLE, "batch.amazonaws.com"),
            )["computeEnvironmentArn"]
            self.created.append(f"compute environment {COMPUTE_ENVIRONMENT}")
        queues = [self.settings.batch_job_queue, self.settings.batch_gpu_job_queue]
        if self.settings.batch_spot_job_queue:
            queues.append(self.settings.batch_spot_job_queue)
        existing = {q["jobQueueName"] for q in batch.describe_job_queues(jobQueues=queues)["jobQueues"]}
        for queue in dict.fromkeys(queues):
            if queue not in existing:
                batch.create_job_queue(
                    jobQueueName=queue,
                    state="ENABLED",
                    priority=1,
                    computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}],
                )
                self.created.append(f"job queue {queue}")

    def _ecs(self) -> None:
        ecs = self.client("ecs")
        cluster = self.settings.ecs_cluster
        active = [c for c in ecs.describe_clusters(clusters=[cluster])["clusters"] if c.get("status") == "ACTIVE"]
        if not active:
            ecs.create_cluster(clusterName=cluster)
            self.created.append(f"ECS cluster {cluster}")
        logs = self.client("logs")
        group = self.settings.ecs_log_group
        if not any(g["logGroupName"] == group for g in logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]):
            logs.create_log_group(logGroupName=group)
            self.created.append(f"log group {group}")
        if self.settings.ecs_launch_type == "FARGATE":
            subnet, group_id = self.default_subnet()
            self.env.update(JOBPLANE_ECS_SUBNETS=subnet, JOBPLANE_ECS_SECURITY_GROUPS=group_id)
            return
        # The EC2 launch type places tasks on the cluster's container instances: one host, untagged
        # by jobplane (so the reaper and the fake VMs never touch it).
        if ecs.list_container_instances(cluster=cluster)["containerInstanceArns"]:
            return
        ec2 = self.client("ec2")
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": ECS_HOST_NAME}]}]
        host = ec2.run_instances(
            ImageId=self.ami(), InstanceType="g5.12xlarge", MinCount=1, MaxCount=1, TagSpecifications=tags
        )["Instances"][0]["InstanceId"]
        ecs.register_container_instance(
            cluster=cluster, instanceIdentityDocument=json.dumps({"instanceId": host, "region": self.kw["region_name"]})
        )
        self.created.append(f"ECS container instance on {host}")


def provision(settings, endpoint: str, region: str) -> Provisioner:
    provisioner = Provisioner(settings, endpoint, region)
    provisioner.run()
    return provisioner
