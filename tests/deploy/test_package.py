"""`make package` produces every function, event source and resource a deployment needs, and Terraform takes it."""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from tests.factories import ROOT

# Each module fixture runs `make package` (a cold Chalice cache downloads every dependency).
pytestmark = pytest.mark.timeout(600)

FUNCTIONS = {
    "api_handler",
    "on_job_state_change",
    "on_upload",
    "reconcile",
    "reconcile_shard",
    "notify",
    "slack_worker",
}
PLUGIN_MIRROR = Path(os.environ.get("JOBPLANE_TF_PLUGIN_DIR", "/opt/tf-plugins"))
SITE_PACKAGES = "python/lib/python3.11/site-packages"
# What the Lambda Python runtime ships (and the layer must therefore leave out).
RUNTIME_SDK = {"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3"}


def readme_deploy_lines() -> list[str]:
    """The README's AWS deploy commands, in order, as a reader would type them."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### AWS") : text.index("### Google Cloud")]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def terraform_missing() -> str | None:
    if not shutil.which("terraform"):
        return "terraform is not installed"
    if not any(PLUGIN_MIRROR.glob("registry.terraform.io/hashicorp/aws/5.*")):
        return f"no AWS provider 5.x in the plugin mirror {PLUGIN_MIRROR} (set JOBPLANE_TF_PLUGIN_DIR)"
    return None


def run_readme(lines: list[str], env: dict, until: str | None) -> list[dict]:
    """Run the lines (cwd carried across `cd`), stopping after the first that starts with `until`."""
    cwd, results = ROOT, []
    for line in lines:
        if line.startswith("cd "):
            cwd = cwd / line.removeprefix("cd ").strip()
            continue
        command = line
        if line == "terraform init":
            # The README's comment: an offline machine initialises from its provider mirror.
            command = f"terraform init -input=false -plugin-dir={PLUGIN_MIRROR}"
        if command.startswith("terraform "):
            command += " -no-color"
        proc = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        results.append({"line": line, "rc": proc.returncode, "out": proc.stdout + proc.stderr})
        if proc.returncode != 0 or (until and line.startswith(until)):
            break
    return results


@contextlib.contextmanager
def build_lock():
    """`make package` writes the one build/package: xdist workers take turns."""
    (ROOT / "build").mkdir(exist_ok=True)
    with open(ROOT / "build" / ".package.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """What the README's `make package` line builds, copied out for this worker."""
    copy = tmp_path_factory.mktemp("package")
    with build_lock():
        [result] = run_readme(readme_deploy_lines()[:1], dict(os.environ), until=None)
        assert result["rc"] == 0, result["out"][-3000:]
        for name in ("chalice.tf.json", "jobplane-resources.tf.json", "deployment.zip", "layer-deployment.zip"):
            shutil.copy(ROOT / "build" / "package" / name, copy / name)
    return {
        "chalice": json.loads((copy / "chalice.tf.json").read_text()),
        "extra": json.loads((copy / "jobplane-resources.tf.json").read_text()),
        "zip": copy / "deployment.zip",
        "layer": copy / "layer-deployment.zip",
    }


def test_every_function_is_packaged_with_the_checked_in_policy(package):
    resources = package["chalice"]["resource"]
    assert set(resources["aws_lambda_function"]) == FUNCTIONS
    policy = json.loads((ROOT / ".chalice" / "policy-dev.json").read_text())
    for role in resources["aws_iam_role_policy"].values():
        assert json.loads(role["policy"]) == policy


def test_every_event_source_is_wired(package):
    resources = package["chalice"]["resource"]
    rules = {
        name: json.loads(rule["event_pattern"]) if "event_pattern" in rule else rule["schedule_expression"]
        for name, rule in resources["aws_cloudwatch_event_rule"].items()
    }
    sources = {source for branch in rules["on_job_state_change-event"]["$or"] for source in branch["source"]}
    assert sources >= {"aws.sagemaker", "aws.batch", "aws.ecs", "aws.ec2"}
    assert all(branch.get("detail-type") for branch in rules["on_job_state_change-event"]["$or"])
    assert rules["reconcile-event"] == "rate(1 minute)"
    [notification] = resources["aws_s3_bucket_notification"].values()
    assert notification["lambda_function"][0]["events"] == ["s3:ObjectCreated:*"]
    [mapping] = resources["aws_lambda_event_source_mapping"].values()
    assert mapping["event_source_arn"] == "${aws_dynamodb_table.jobs.stream_arn}"
    assert "aws_api_gateway_rest_api" in resources


def test_the_tables_bucket_and_secrets_are_declared(package):
    extra = package["extra"]["resource"]
    tables = extra["aws_dynamodb_table"]
    assert set(tables) >= {"jobs", "job_events", "tokens", "idempotency", "capacity", "slack", "devvms"}
    jobs = tables["jobs"]
    assert jobs["stream_view_type"] == "NEW_AND_OLD_IMAGES" and jobs["billing_mode"] == "PAY_PER_REQUEST"
    assert {i["name"] for i in jobs["global_secondary_index"]} == {
        "owner-created",
        "all-created",
        "active-created",
        "queued-created",
        "owner-status-created",
        "status-created",
        "owner-changed",
        "all-changed",
    }
    assert tables["idempotency"]["ttl"] == {"attribute_name": "expires_at", "enabled": True}
    assert extra["aws_s3_bucket"]["uploads"]["bucket"] == "jobplane-dev-uploads"
    # The secrets are standard SecureString parameters (Secrets Manager would bill $0.40 a secret a month).
    parameters = extra["aws_ssm_parameter"]
    assert {p["name"] for p in parameters.values()} == {
        "/jobplane/dev/slack-webhook-url",
        "/jobplane/dev/slack-signing-secret",
    }
    assert all(p["type"] == "SecureString" and p["tier"] == "Standard" for p in parameters.values())
    assert all(p["lifecycle"] == {"ignore_changes": ["value"]} for p in parameters.values())
    assert "aws_secretsmanager_secret" not in extra
    assert (
        "budgets" in tables and tables["budgets"]["hash_key"] == "pk" and tables["budgets"]["range_key"] == "budget_id"
    )


def test_the_function_zip_holds_the_core_and_no_dependency(package):
    with zipfile.ZipFile(package["zip"]) as bundle:
        names = bundle.namelist()
    assert "app.py" in names and "chalicelib/jobs/service.py" in names
    assert "chalicelib/dashboard/index.html" in names
    tops = {n.split("/")[0] for n in names}
    # Only the app, the core and Chalice's two runtime modules: every library is in the layer or the runtime.
    assert tops == {"app.py", "chalicelib", "chalice", "__pycache__"}
    assert [n for n in names if n.startswith("__pycache__/")] == [f"__pycache__/app.{sys.implementation.cache_tag}.pyc"]
    assert package["zip"].stat().st_size <= 5 * 2**20


def test_every_function_gets_the_layer_which_holds_the_dependencies_but_not_the_runtime_sdk(package):
    resources = package["chalice"]["resource"]
    [(layer_name, layer)] = resources["aws_lambda_layer_version"].items()
    assert layer["compatible_runtimes"] == ["python3.11"]
    for function in resources["aws_lambda_function"].values():
        assert function["layers"] == [f"${{aws_lambda_layer_version.{layer_name}.arn}}"]
    with zipfile.ZipFile(package["layer"]) as archive:
        names = archive.namelist()
    assert all(n.startswith(SITE_PACKAGES + "/") for n in names)
    tops = {n.removeprefix(SITE_PACKAGES + "/").split("/")[0].removesuffix(".py") for n in names}
    assert {"pynamodb", "pydantic", "pydantic_core", "yaml", "slack_sdk", "typing_extensions"} <= tops
    assert not tops & RUNTIME_SDK
    dists = {t.split("-")[0].lower() for t in tops if t.endswith(".dist-info")}
    assert "pynamodb" in dists and not dists & {"boto3", "botocore", "s3transfer", "python_dateutil", "urllib3"}
    # Lambda's limit is 250 MiB unzipped for the function and its layers together; the layer keeps well
    # under half of it (54 MiB: the Kubernetes client's models and their bytecode are 32 MiB of that).
    with zipfile.ZipFile(package["layer"]) as archive:
        assert sum(i.file_size for i in archive.infolist()) < 100 * 2**20


def test_every_module_of_the_function_zip_and_layer_ships_its_bytecode(package):
    # Lambda's /var/task and /opt are read-only: without these a cold start compiles every module again.
    tag = sys.implementation.cache_tag
    for bundle in (package["zip"], package["layer"]):
        names = set(zipfile.ZipFile(bundle).namelist())
        sources = [n for n in names if n.endswith(".py")]
        compiled = (PurePosixPath(n).parent / "__pycache__" / f"{PurePosixPath(n).stem}.{tag}.pyc" for n in sources)
        missing = [n for n, pyc in zip(sources, compiled, strict=True) if str(pyc).removeprefix("./") not in names]
        assert sources and not missing, f"{bundle.name}: {len(missing)} without bytecode, e.g. {missing[:3]}"


def test_the_function_zip_and_layer_import_with_only_the_runtime_sdk_beside_them(package, tmp_path):
    """Lambda's sys.path: the function, the layer, then the runtime's boto3/botocore (here: this venv's)."""
    task, opt, runtime = tmp_path / "task", tmp_path / "opt", tmp_path / "runtime"
    zipfile.ZipFile(package["zip"]).extractall(task)
    zipfile.ZipFile(package["layer"]).extractall(opt)
    runtime.mkdir()
    for name in sorted(RUNTIME_SDK):
        module = importlib.import_module(name)
        source = Path(module.__file__)
        (runtime / (name if source.name == "__init__.py" else source.name)).symlink_to(
            source.parent if source.name == "__init__.py" else source
        )
    code = (
        "import sys; sys.path[:0] = sys.argv[1:]\n"
        "import app, chalicelib.deps, chalicelib.jobs.service, chalicelib.store.dynamo, chalicelib.jobs.spec\n"
        "import chalicelib.notify.slack, yaml, pynamodb, botocore\n"
        "assert app.app.app_name == 'jobplane'\n"
        "print(botocore.__file__)\n"
    )
    # -I -S: no site-packages of this venv, so anything the zips lack fails the import.
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(task), str(opt / SITE_PACKAGES), str(runtime)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith(str(runtime))


def test_the_kubernetes_backend_and_its_client_are_packaged_and_launch_a_job_from_the_zips(package, tmp_path, fake_k8s):
    """The backend's modules in the function zip, the official client (and what it imports) in the layer: a Job is
    created on the loopback API server by code imported from the unpacked zips alone, with Lambda's runtime SDK."""
    from tests.factories import k8s_env, make_settings

    tag = sys.implementation.cache_tag
    with zipfile.ZipFile(package["zip"]) as bundle:
        names = set(bundle.namelist())
    for module in ("__init__", "backend", "clusters", "descriptors"):
        assert f"chalicelib/backends/kubernetes/{module}.py" in names
        assert f"chalicelib/backends/kubernetes/__pycache__/{module}.{tag}.pyc" in names
    with zipfile.ZipFile(package["layer"]) as archive:
        layer = set(archive.namelist())
    assert f"{SITE_PACKAGES}/kubernetes/client/api/batch_v1_api.py" in layer
    assert any(n.startswith(f"{SITE_PACKAGES}/kubernetes-35.0.0.dist-info/") for n in layer)
    task, opt, runtime = tmp_path / "task", tmp_path / "opt", tmp_path / "runtime"
    zipfile.ZipFile(package["zip"]).extractall(task)
    zipfile.ZipFile(package["layer"]).extractall(opt)
    runtime.mkdir()
    for name in sorted(RUNTIME_SDK):
        source = Path(importlib.import_module(name).__file__)
        (runtime / (name if source.name == "__init__.py" else source.name)).symlink_to(
            source.parent if source.name == "__init__.py" else source
        )
    settings = make_settings(tmp_path, **k8s_env(fake_k8s), JOBPLANE_STAGE="pkg")
    code = (
        "import sys; sys.path[:0] = sys.argv[1:]\n"
        "from chalicelib.config import Settings\n"
        "from chalicelib.backends import get_backend\n"
        "from chalicelib.jobs.model import Job, JobStatus, new_job_id, utcnow\n"
        "from chalicelib.jobs.spec import parse_spec\n"
        "spec = parse_spec({'name': 'pkg', 'backend': 'kubernetes', 'image': 'busybox:1', 'command': ['true']})\n"
        "job = Job(new_job_id(), 'pkg', 'alice', JobStatus.LAUNCHING, 'kubernetes', spec, utcnow())\n"
        "print(get_backend('kubernetes', Settings.from_env()).launch(job).native_id)\n"
        "print(sys.modules['kubernetes'].__file__)\n"
    )
    env = {"PATH": os.environ["PATH"], **settings.to_env(), "KUBECONFIG": str(fake_k8s.config)}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(task), str(opt / SITE_PACKAGES), str(runtime)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    native_id, client_file = proc.stdout.split()
    assert native_id.startswith("default/default/jp-"), native_id
    assert client_file.startswith(str(opt / SITE_PACKAGES / "kubernetes")), client_file  # the layer's own copy
    (body,) = fake_k8s.bodies("POST", "/namespaces/default/jobs")
    assert body["spec"]["template"]["spec"]["containers"][0]["image"] == "busybox:1"


@pytest.mark.slow
def test_the_readme_deploy_steps_init_validate_and_plan_with_terraform_1_5_and_provider_5(moto_endpoint):
    skip = terraform_missing()
    if skip:
        pytest.skip(skip)
    env = {
        **os.environ,
        # Terraform's AWS provider checks its credentials with STS: moto answers, nothing leaves the machine.
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "TF_CLI_CONFIG_FILE": os.devnull,
        "TF_IN_AUTOMATION": "1",
    }
    with build_lock():
        readme = run_readme(readme_deploy_lines(), env, until="terraform plan")
        chalice = json.loads((ROOT / "build" / "package" / "chalice.tf.json").read_text())
        extra = json.loads((ROOT / "build" / "package" / "jobplane-resources.tf.json").read_text())
    results = {r["line"].split(" -")[0]: r for r in readme}
    assert readme[-1]["line"].startswith("terraform plan"), readme[-1]["out"][-3000:]
    for step in ("make package STAGE=dev", "terraform init", "terraform validate", "terraform plan"):
        assert results[step]["rc"] == 0, results[step]["out"][-3000:]
    assert "aws v5." in results["terraform init"]["out"]
    # No deprecation left: the stage is its own resource, nothing reads the deployment's invoke_url.
    assert "Warning" not in results["terraform validate"]["out"], results["terraform validate"]["out"]
    plan = re.search(r"Plan: (\d+) to add, 0 to change, 0 to destroy", results["terraform plan"]["out"])
    assert plan, results["terraform plan"]["out"][-3000:]
    resources = chalice["resource"]
    declared = sum(len(v) for v in resources.values()) + sum(len(v) for v in extra["resource"].values())
    assert int(plan.group(1)) == declared
    assert chalice["terraform"]["required_version"] == ">= 1.5"
    assert set(chalice["terraform"]["required_providers"]) == {"aws"}
    assert "null_data_source" not in chalice.get("data", {})
    assert "stage_name" not in resources["aws_api_gateway_deployment"]["rest_api"]
    assert resources["aws_api_gateway_stage"]["rest_api"]["stage_name"] == "api"
