#!/usr/bin/env bash
# Deploy jobplane's Cloud Functions (gen2), their topics, the log sink and the reconcile schedule.
# Usage: deploy/gcp/deploy.sh [--dry-run] --project P --stage S --aws-role-arn ARN [--region R]
#        [--upload-bucket B] [--status-uri gs://B/prefix] [--service-account EMAIL] [--aws-region R]
# --dry-run prints every command instead of running it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DRY_RUN=0
PROJECT=""
STAGE="dev"
REGION="us-central1"
AWS_ROLE_ARN=""
AWS_REGION_NAME="us-east-1"
UPLOAD_BUCKET=""
STATUS_URI=""
SERVICE_ACCOUNT=""

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --project) PROJECT=$2; shift ;;
    --stage) STAGE=$2; shift ;;
    --region) REGION=$2; shift ;;
    --aws-role-arn) AWS_ROLE_ARN=$2; shift ;;
    --aws-region) AWS_REGION_NAME=$2; shift ;;
    --upload-bucket) UPLOAD_BUCKET=$2; shift ;;
    --status-uri) STATUS_URI=$2; shift ;;
    --service-account) SERVICE_ACCOUNT=$2; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$PROJECT" ] || [ -z "$AWS_ROLE_ARN" ]; then
  echo "--project and --aws-role-arn are required" >&2
  exit 2
fi
UPLOAD_BUCKET=${UPLOAD_BUCKET:-jobplane-${STAGE}-uploads}
STATUS_URI=${STATUS_URI:-gs://jobplane-${STAGE}-artifacts/status}
SERVICE_ACCOUNT=${SERVICE_ACCOUNT:-jobplane-${STAGE}@${PROJECT}.iam.gserviceaccount.com}
EVENTS_TOPIC="jobplane-${STAGE}-events"
TICK_TOPIC="jobplane-${STAGE}-reconcile"
SINK="jobplane-${STAGE}-events"
BUILD="${ROOT}/build/gcp-functions-${STAGE}"

run() {
  if [ "$DRY_RUN" -eq 1 ]; then
    local out=""
    for arg in "$@"; do out+="$(printf '%q' "$arg") "; done
    echo "${out% }"
  else
    "$@"
  fi
}

# What the functions' settings are (Settings.from_env reads them). "^@^" makes "@" gcloud's list
# delimiter, since JOBPLANE_BACKENDS itself holds a comma.
ENV_VARS="^@^JOBPLANE_STAGE=${STAGE}@JOBPLANE_BACKENDS=vertex,gce@JOBPLANE_GCP_PROJECT=${PROJECT}"
ENV_VARS+="@JOBPLANE_GCP_REGION=${REGION}@JOBPLANE_GCP_STATUS_URI=${STATUS_URI}"
ENV_VARS+="@JOBPLANE_GCP_EVENTS_TOPIC=projects/${PROJECT}/topics/${EVENTS_TOPIC}"
ENV_VARS+="@JOBPLANE_AWS_ROLE_ARN=${AWS_ROLE_ARN}@AWS_REGION=${AWS_REGION_NAME}"

# Vertex AI service messages and Compute Engine state changes of jobplane's VMs only (names jp-...).
LOG_FILTER='(resource.type="ml_job" AND resource.labels.task_name="service") OR '
LOG_FILTER+='(resource.type="gce_instance" AND protoPayload.serviceName="compute.googleapis.com" '
LOG_FILTER+='AND protoPayload.resourceName:"/instances/jp-" AND ('
LOG_FILTER+='protoPayload.methodName="compute.instances.preempted" OR '
LOG_FILTER+='protoPayload.methodName="compute.instances.guestTerminate" OR '
LOG_FILTER+='protoPayload.methodName="v1.compute.instances.stop" OR '
LOG_FILTER+='protoPayload.methodName="v1.compute.instances.delete"))'

# 1. Stage chalicelib/ next to the functions' main.py: the deployed source is exactly this folder.
run rm -rf "$BUILD"
run mkdir -p "$BUILD"
run cp "${ROOT}/gcp_functions/main.py" "${ROOT}/gcp_functions/requirements.txt" "$BUILD/"
run cp -R "${ROOT}/chalicelib" "$BUILD/chalicelib"

# 2. Topics: state hints (log sink, VMs) and the reconcile tick.
run gcloud pubsub topics create "$EVENTS_TOPIC" --project="$PROJECT"
run gcloud pubsub topics create "$TICK_TOPIC" --project="$PROJECT"

# 3. The log sink, and its writer identity may publish to the topic.
run gcloud logging sinks create "$SINK" "pubsub.googleapis.com/projects/${PROJECT}/topics/${EVENTS_TOPIC}" \
  --project="$PROJECT" --log-filter="$LOG_FILTER"
if [ "$DRY_RUN" -eq 1 ]; then
  WRITER='serviceAccount:WRITER_IDENTITY_OF_THE_SINK'
else
  WRITER=$(gcloud logging sinks describe "$SINK" --project="$PROJECT" --format='value(writerIdentity)')
fi
run gcloud pubsub topics add-iam-policy-binding "$EVENTS_TOPIC" --project="$PROJECT" \
  --member="$WRITER" --role=roles/pubsub.publisher

# 4. The functions (gen2).
common=(--gen2 --project="$PROJECT" --region="$REGION" --runtime=python311 --source="$BUILD"
  --service-account="$SERVICE_ACCOUNT" --set-env-vars="$ENV_VARS" --memory=512Mi --timeout=120s)
run gcloud functions deploy "jobplane-${STAGE}-on_job_event" "${common[@]}" \
  --entry-point=on_job_event --trigger-topic="$EVENTS_TOPIC"
run gcloud functions deploy "jobplane-${STAGE}-on_gcs_upload" "${common[@]}" \
  --entry-point=on_gcs_upload --trigger-event-filters=type=google.cloud.storage.object.v1.finalized \
  --trigger-event-filters="bucket=${UPLOAD_BUCKET}"
run gcloud functions deploy "jobplane-${STAGE}-reconcile" "${common[@]}" \
  --entry-point=reconcile --trigger-topic="$TICK_TOPIC"

# 5. The reconcile schedule (every 5 minutes, as on AWS).
run gcloud scheduler jobs create pubsub "jobplane-${STAGE}-reconcile" --project="$PROJECT" \
  --location="$REGION" --schedule='*/5 * * * *' --topic="$TICK_TOPIC" --message-body=tick
