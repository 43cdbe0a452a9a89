"""The rendezvous prelude: each node of a multi-node job derives its JOBPLANE_* node variables from its provider.

A job with resources.nodes > 1 sees, on every backend and every node, JOBPLANE_NUM_NODES, JOBPLANE_NODE_RANK
(0 is the master), JOBPLANE_MASTER_ADDR, JOBPLANE_MASTER_PORT and JOBPLANE_GPUS_PER_NODE. What a backend knows
at launch (the node count, the GPUs per node, a port, a fixed master name) travels in the job's environment; what
only the node knows (its rank, the master's address) the prelude below reads from the provider's own facts:

  sagemaker   /opt/ml/input/config/resourceconfig.json (current_host, hosts; SM_CURRENT_HOST / SM_HOSTS where the
              training toolkit set them instead): the rank is current_host's place in hosts, the master hosts[0]
  vertex      CLUSTER_SPEC: workerpool0 is the master (rank 0), workerpool1's replica i is rank i + 1; the master's
              address and port are workerpool0's first entry
  aws-batch   AWS_BATCH_JOB_NODE_INDEX, AWS_BATCH_JOB_NUM_NODES, AWS_BATCH_JOB_MAIN_NODE_INDEX and, on the other
              nodes, AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS (absent on the main node: its own address)
  kubernetes  JOB_COMPLETION_INDEX of an Indexed Job; the master is pod 0 by its name under the headless Service

It is POSIX sh and awk only (what any image has), is fixed text (no value of the user's is in it) and runs before
jobplane's wrapper (chalicelib/backends/aws/staging.py) in the same shell, which then runs setup and command.
Its own variables are JOBPLANE_R_*: a spec's env cannot set JOBPLANE_* names.
"""

from __future__ import annotations

from chalicelib.jobs import contract

# Each prelude is named by the fact it reads (the backend that uses it names it; this module imports none).
SAGEMAKER = "resourceconfig.json"
VERTEX = "CLUSTER_SPEC"
BATCH = "AWS_BATCH_JOB_NODE_INDEX"
KUBERNETES = "JOB_COMPLETION_INDEX"
#: where SageMaker describes the training cluster to each container
RESOURCE_CONFIG = "/opt/ml/input/config/resourceconfig.json"
#: what the prelude exits with when the provider's facts are missing (BSD's EX_CONFIG): the node fails, the job too
RENDEZVOUS_FAILED = 78

_COMMON = rf"""jobplane_r_fail() {{
  echo "jobplane: rendezvous: $1" >&2
  exit {RENDEZVOUS_FAILED}
}}
jobplane_r_get() {{
  printf '%s' "$1" | awk -v key="\"$2\":" '{{
    i = index($0, key); if (!i) exit 1
    s = substr($0, i + length(key))
    if (substr(s, 1, 1) == "\"") {{ s = substr(s, 2); print substr(s, 1, index(s, "\"") - 1) }}
    else if (match(s, /^[0-9]+/)) print substr(s, 1, RLENGTH)
  }}'
}}
jobplane_r_list() {{
  printf '%s' "$1" | awk -v key="\"$2\":[" '{{
    i = index($0, key); if (!i) exit 1
    s = substr($0, i + length(key)); s = substr(s, 1, index(s, "]") - 1); gsub(/"/, "", s)
    n = split(s, items, ","); for (j = 1; j <= n; j++) print items[j]
  }}'
}}
jobplane_r_place() {{
  JOBPLANE_R_ME=$1
  shift
  JOBPLANE_MASTER_ADDR=$1 JOBPLANE_R_I=0 JOBPLANE_NODE_RANK=
  for JOBPLANE_R_HOST in "$@"; do
    [ "$JOBPLANE_R_HOST" = "$JOBPLANE_R_ME" ] && JOBPLANE_NODE_RANK=$JOBPLANE_R_I
    JOBPLANE_R_I=$((JOBPLANE_R_I + 1))
  done
  [ -n "$JOBPLANE_NODE_RANK" ] || jobplane_r_fail "this host ($JOBPLANE_R_ME) is not among the hosts ($*)"
  [ "$JOBPLANE_R_I" -eq "$JOBPLANE_NUM_NODES" ] || jobplane_r_fail "$JOBPLANE_R_I hosts, $JOBPLANE_NUM_NODES asked for"
}}
"""

_PROVIDERS = {
    SAGEMAKER: rf"""JOBPLANE_R_CONF=${{JOBPLANE_R_RESOURCE_CONFIG:-{RESOURCE_CONFIG}}}
if [ -f "$JOBPLANE_R_CONF" ]; then
  JOBPLANE_R_JSON=$(tr -d ' \t\r\n' < "$JOBPLANE_R_CONF")
  JOBPLANE_R_ME=$(jobplane_r_get "$JOBPLANE_R_JSON" current_host)
  JOBPLANE_R_HOSTS=$(jobplane_r_list "$JOBPLANE_R_JSON" hosts)
elif [ -n "${{SM_HOSTS:-}}" ] && [ -n "${{SM_CURRENT_HOST:-}}" ]; then
  JOBPLANE_R_ME=$SM_CURRENT_HOST
  JOBPLANE_R_HOSTS=$(jobplane_r_list "\"hosts\":$(printf '%s' "$SM_HOSTS" | tr -d ' \t\r\n')" hosts)
else
  jobplane_r_fail "neither $JOBPLANE_R_CONF nor SM_HOSTS / SM_CURRENT_HOST"
fi
[ -n "$JOBPLANE_R_ME" ] || jobplane_r_fail "no current_host"
jobplane_r_place "$JOBPLANE_R_ME" $JOBPLANE_R_HOSTS
""",
    VERTEX: r"""JOBPLANE_R_JSON=$(printf '%s' "${CLUSTER_SPEC:-}" | tr -d ' \t\r\n')
[ -n "$JOBPLANE_R_JSON" ] || jobplane_r_fail "CLUSTER_SPEC is not set"
JOBPLANE_R_TASK=$(printf '%s' "$JOBPLANE_R_JSON" | awk '{
  i = index($0, "\"task\":{"); if (!i) exit 1; s = substr($0, i + 8); print substr(s, 1, index(s, "}"))
}')
JOBPLANE_R_TYPE=$(jobplane_r_get "$JOBPLANE_R_TASK" type)
JOBPLANE_R_INDEX=$(jobplane_r_get "$JOBPLANE_R_TASK" index)
JOBPLANE_R_MASTER=$(jobplane_r_list "$JOBPLANE_R_JSON" workerpool0 | head -n 1)
[ -n "$JOBPLANE_R_MASTER" ] && [ -n "$JOBPLANE_R_INDEX" ] || jobplane_r_fail "CLUSTER_SPEC has no workerpool0 or task"
case $JOBPLANE_R_TYPE in
  workerpool0) JOBPLANE_NODE_RANK=0 ;;
  workerpool1) JOBPLANE_NODE_RANK=$((JOBPLANE_R_INDEX + 1)) ;;
  *) jobplane_r_fail "task type $JOBPLANE_R_TYPE is not a training node's (workerpool0 or workerpool1)" ;;
esac
JOBPLANE_MASTER_ADDR=${JOBPLANE_R_MASTER%:*}
JOBPLANE_MASTER_PORT=${JOBPLANE_R_MASTER##*:}
""",
    BATCH: r"""[ -n "${AWS_BATCH_JOB_NODE_INDEX:-}" ] || jobplane_r_fail "AWS_BATCH_JOB_NODE_INDEX is not set"
JOBPLANE_NUM_NODES=${AWS_BATCH_JOB_NUM_NODES:-$JOBPLANE_NUM_NODES}
JOBPLANE_R_MAIN=${AWS_BATCH_JOB_MAIN_NODE_INDEX:-0}
JOBPLANE_NODE_RANK=$(( (AWS_BATCH_JOB_NODE_INDEX - JOBPLANE_R_MAIN + JOBPLANE_NUM_NODES) % JOBPLANE_NUM_NODES ))
if [ -n "${AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS:-}" ]; then
  JOBPLANE_MASTER_ADDR=$AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS
else
  JOBPLANE_MASTER_ADDR=$(hostname -i 2>/dev/null | awk '{ print $1 }')
  [ -n "$JOBPLANE_MASTER_ADDR" ] || JOBPLANE_MASTER_ADDR=$(hostname)
fi
""",
    KUBERNETES: r"""[ -n "${JOB_COMPLETION_INDEX:-}" ] || jobplane_r_fail "no JOB_COMPLETION_INDEX (not an Indexed Job)"
JOBPLANE_NODE_RANK=$JOB_COMPLETION_INDEX
""",
}

_EXPORT = """export JOBPLANE_NUM_NODES JOBPLANE_NODE_RANK JOBPLANE_MASTER_ADDR JOBPLANE_MASTER_PORT
export JOBPLANE_GPUS_PER_NODE
echo "jobplane: node $JOBPLANE_NODE_RANK of $JOBPLANE_NUM_NODES, master $JOBPLANE_MASTER_ADDR:$JOBPLANE_MASTER_PORT" >&2
"""


def prelude(provider: str) -> str:
    """The sh text that sets and exports the node variables on a node of `provider` (one of the four names
    above: SAGEMAKER, VERTEX, BATCH, KUBERNETES; see the module)."""
    return _COMMON + _PROVIDERS[provider] + _EXPORT


def launch_env(spec, master_addr: str | None = None, port: int = contract.DEFAULT_MASTER_PORT) -> dict[str, str]:
    """What the backend puts in every node's environment at launch: all but what each node finds out itself."""
    return contract.node_variables(spec, None, master_addr, port)
