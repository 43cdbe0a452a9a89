"""Slack notifications for job state changes (from the jobs table's DynamoDB stream)."""
