"""The policy reads exactly the stage's secrets: SSM parameters by name, Secrets Manager only when a name is one."""

from __future__ import annotations

from chalicelib.backends.policy import build, declared_actions, secret_actions
from chalicelib.config import Settings


def settings(**secrets):
    return Settings.from_env({"JOBPLANE_STAGE": "qa", "JOBPLANE_BACKENDS": "local", **secrets})


def statement(s):
    return [x for x in build(s)["Statement"] if x["Sid"] == "SlackSecrets"]


def test_ssm_parameters_are_granted_by_name_and_nothing_of_secrets_manager():
    s = settings(
        JOBPLANE_SLACK_WEBHOOK_SECRET="ssm:/jobplane/qa/slack-webhook-url",
        JOBPLANE_SLACK_SIGNING_SECRET="ssm:/jobplane/qa/slack-signing-secret",
    )
    assert secret_actions(s) == ("ssm:GetParameter",)
    assert "secretsmanager:GetSecretValue" not in declared_actions(s)
    assert statement(s) == [
        {
            "Sid": "SlackSecrets",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter"],
            "Resource": [
                "arn:aws:ssm:*:*:parameter/jobplane/qa/slack-webhook-url",
                "arn:aws:ssm:*:*:parameter/jobplane/qa/slack-signing-secret",
            ],
        }
    ]


def test_a_secrets_manager_name_adds_its_read_and_no_secret_grants_nothing():
    s = settings(
        JOBPLANE_SLACK_WEBHOOK_SECRET="jobplane/qa/slack-webhook-url",
        JOBPLANE_SLACK_BOT_TOKEN_SECRET="ssm:/jobplane/qa/bot",
    )
    assert secret_actions(s) == ("secretsmanager:GetSecretValue", "ssm:GetParameter")
    [grant] = statement(s)
    assert grant["Resource"] == [
        "arn:aws:secretsmanager:*:*:secret:jobplane/qa/*",
        "arn:aws:ssm:*:*:parameter/jobplane/qa/bot",
    ]
    bare = settings()
    assert secret_actions(bare) == () and statement(bare) == []
    assert not {"ssm:GetParameter", "secretsmanager:GetSecretValue"} & declared_actions(bare)
