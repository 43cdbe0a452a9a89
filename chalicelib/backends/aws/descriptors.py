"""The AWS backends' facts, light to import: the implementations (and botocore) load only when a backend is built."""

from __future__ import annotations

from chalicelib.backends import BackendDescriptor, Cloud, ConsoleContext


def sagemaker_console_url(job, ctx: ConsoleContext) -> str | None:
    from chalicelib.notify.console import aws_console, aws_resource, q

    region, resource, _ = aws_resource(job.native_id, ctx.region)
    return aws_console(region, f"sagemaker/home?region={region}#/jobs/{q(resource)}")


def batch_console_url(job, ctx: ConsoleContext) -> str | None:
    from chalicelib.notify.console import aws_console, aws_resource, q

    region, resource, _ = aws_resource(job.native_id, ctx.region)
    return aws_console(region, f"batch/home?region={region}#jobs/detail/{q(resource)}")


def ecs_console_url(job, ctx: ConsoleContext) -> str | None:
    from chalicelib.notify.console import aws_console, aws_resource, q

    region, resource, arn = aws_resource(job.native_id, ctx.region)
    # arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/TASK_ID: the console needs the cluster too.
    parts = resource.split("/")
    if not arn or len(parts) != 2:
        return None
    cluster, task = (q(p) for p in parts)
    return aws_console(region, f"ecs/v2/clusters/{cluster}/tasks/{task}/configuration?region={region}")


def ec2_console_url(job, ctx: ConsoleContext) -> str | None:
    from chalicelib.notify.console import aws_console, aws_resource, q

    region, resource, _ = aws_resource(job.native_id, ctx.region)
    return aws_console(region, f"ec2/home?region={region}#InstanceDetails:instanceId={q(resource)}")


SAGEMAKER = BackendDescriptor(
    name="sagemaker",
    price_table="sagemaker",
    instance_prefix="ml.",
    quota="training-instances",
    implementation="chalicelib.backends.aws.sagemaker:SageMakerBackend",
    cloud=Cloud.AWS,
    display_name="SageMaker",
    rank=10,
    role="first choice on AWS (managed spot, S3 checkpoints)",
    event_sources=("aws.sagemaker",),
    iam_actions=(
        "sagemaker:CreateTrainingJob",
        "sagemaker:DescribeTrainingJob",
        "sagemaker:ListTrainingJobs",  # reconcile reads the running jobs 100 a page
        "sagemaker:StopTrainingJob",
        "sagemaker:AddTags",  # CreateTrainingJob with Tags needs it; the sweep's stopped-by mark
        "sagemaker:ListTags",  # the sweep reads a listed job's tags before it stops one
        "servicequotas:ListServiceQuotas",  # "ml.<type> for training job usage" (jobs/quotas.py)
        "logs:DescribeLogStreams",  # the job's output: /aws/sagemaker/TrainingJobs, <job>/algo-N-<epoch>
        "logs:GetLogEvents",
    ),
    console_url=sagemaker_console_url,
    unsupported_features={"tpu": "TPUs exist only on Vertex AI"},
    reaps=True,  # the orphan sweep: running jp- training jobs whose tags name this stage
    # InstanceCount machines of one training job; beyond this, the account's SageMaker instance quotas decide.
    max_nodes=64,
)

BATCH = BackendDescriptor(
    name="aws-batch",
    price_table="ec2",
    implementation="chalicelib.backends.aws.batch:BatchBackend",
    cloud=Cloud.AWS,
    display_name="AWS Batch",
    rank=40,
    role="AWS Batch queue",
    event_sources=("aws.batch",),
    iam_actions=(
        "batch:SubmitJob",
        "batch:DescribeJobs",
        "batch:ListJobs",
        "batch:TerminateJob",
        "batch:RegisterJobDefinition",
        "batch:DescribeJobDefinitions",
        "batch:TagResource",  # SubmitJob / RegisterJobDefinition with tags need it
        "ecs:DescribeContainerInstances",  # the instance type a job was placed on, which its cost is priced by
        "logs:DescribeLogStreams",  # the job's output, in the streams DescribeJobs names
        "logs:GetLogEvents",
        # The helpers' AWS CLI alias file is put under code/, which the API's CodeUploads statement covers.
    ),
    console_url=batch_console_url,
    reaps=True,  # the orphan sweep: this stage's tagged jobs whose job is terminal or gone
    unsupported_features={"tpu": "TPUs exist only on Vertex AI"},
    # A multi-node parallel job (gang scheduled); the compute environment's maxvCpus decides beyond this.
    max_nodes=64,
)

ECS = BackendDescriptor(
    name="ecs",
    price_table="ec2",
    implementation="chalicelib.backends.aws.ecs:EcsBackend",
    cloud=Cloud.AWS,
    display_name="ECS",
    rank=50,
    role="the team's ECS cluster",
    event_sources=("aws.ecs",),
    iam_actions=(
        "ecs:RunTask",
        "ecs:DescribeTasks",
        "ecs:ListTasks",
        "ecs:StopTask",
        "ecs:RegisterTaskDefinition",
        "ecs:ListTaskDefinitions",
        "ecs:DescribeContainerInstances",  # the instance type a task runs on, which its cost is priced by
        "ecs:TagResource",  # RunTask / RegisterTaskDefinition with tags need it
        "logs:GetLogEvents",  # the job's output, which the awslogs driver writes to ecs_log_group
    ),
    console_url=ecs_console_url,
    reaps=True,  # the orphan sweep: this stage's tagged tasks whose job is terminal or gone
    unsupported_features={
        "tpu": "TPUs exist only on Vertex AI",
        "spot": "ECS takes spot capacity from the cluster's capacity providers, not per job; use sagemaker or ec2",
        "multi_node": "an ECS task runs on one container instance and ECS has no rendezvous between tasks",
    },
)

EC2 = BackendDescriptor(
    name="ec2",
    price_table="ec2",
    quota="vcpus",
    implementation="chalicelib.backends.aws.ec2:Ec2Backend",
    cloud=Cloud.AWS,
    display_name="EC2",
    rank=60,
    role="ad-hoc EC2 VM (any image, any GPU; stopped automatically)",
    needs_image=False,
    event_sources=("aws.ec2",),
    iam_actions=(
        "ec2:RunInstances",
        "ec2:DescribeInstances",
        "ec2:TerminateInstances",
        "ec2:CreateTags",  # RunInstances with TagSpecifications, and the stopped-by mark
        "servicequotas:GetServiceQuota",  # the vCPU quota of the instance's family group (jobs/quotas.py)
        "s3:GetObject",  # the exit status the VM uploads (artifacts bucket only)
    ),
    console_url=ec2_console_url,
    unsupported_features={
        "tpu": "TPUs exist only on Vertex AI",
        "multi_node": "EC2 VMs in a cluster placement group are not launched by jobplane yet",
    },
    reaps=True,
    vm=True,
    devvm_provider="chalicelib.backends.aws.ec2_devvm:Ec2DevVmProvider",
)
