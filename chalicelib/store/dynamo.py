"""DynamoDB JobStore (pynamodb): guarded updates, append-only history, sparse active index."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from pynamodb.attributes import NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.exceptions import DoesNotExist
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from chalicelib.config import Settings
from chalicelib.errors import (
    AlreadyExistsError,
    CapacityExhaustedError,
    ConditionFailedError,
    StaleStateError,
    ValidationError,
)
from chalicelib.jobs.capacity import Claim
from chalicelib.jobs.metrics import Cursor
from chalicelib.jobs.model import (
    EventSource,
    FailureKind,
    HistoryEntry,
    Job,
    JobStatus,
    Transition,
    iso,
    native_name,
    utcnow,
)
from chalicelib.jobs.spec_types import JobSpec
from chalicelib.pricing.jobs import AttemptCost, costs_from_text, costs_to_text
from chalicelib.store.base import (
    IdempotencyRecord,
    JobStore,
    Page,
    apply_changes,
    history_from_transition,
    history_key,
    sort_key,
)
from chalicelib.store.edge import (
    DynamoStore,
    created_index,
    dynamo_errors,
    retry_conflicts,
    share_botocore_loader,
    table_meta,
)

ALL_PK = "jobs"
ONE_MICROSECOND = timedelta(microseconds=1)
ACTIVE_PK = "active"
QUEUED_PK = "queued"
# Job fields stored under their own attribute names (status and spec are handled apart).
_PLAIN_FIELDS = (
    "name",
    "owner",
    "backend",
    "native_id",
    "native_name",
    "attempt",
    "created_at",
    "started_at",
    "finished_at",
    "failure_reason",
    "cost_estimate_usd",
    "planner_reason",
    "updated_at",
    "status_reason",
    "first_refusal_at",
    "launch_operation",
    "region",
)


def build_models(settings: Settings) -> dict[str, type[Model]]:
    """Model classes bound to this deployment's table names and endpoint."""

    _Meta = table_meta(settings)

    OwnerIndex = created_index("owner-created", "owner")
    AllIndex = created_index("all-created", "all_pk")
    # Sparse: only items carrying active_pk (non-terminal jobs, endpoints that may be billed) are in it;
    # reconcile reads nothing else.
    ActiveIndex = created_index("active-created", "active_pk")
    # By the time of each job's last write (`changed`): GET /jobs?updated_since= reads only what changed.
    OwnerChangedIndex = created_index("owner-changed", "owner", "changed")
    AllChangedIndex = created_index("all-changed", "all_pk", "changed")

    class QueuedIndex(GlobalSecondaryIndex):
        """Sparse: only QUEUED jobs (queued_pk set) are in it; the dispatcher reads nothing else."""

        class Meta:
            index_name = "queued-created"
            projection = AllProjection()

        queued_pk = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)

    class OwnerStatusIndex(GlobalSecondaryIndex):
        """A user's jobs of one status, newest first: a status filter reads only what it returns."""

        class Meta:
            index_name = "owner-status-created"
            projection = AllProjection()

        owner_status = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)

    class StatusIndex(GlobalSecondaryIndex):
        """Every owner's jobs of one status, newest first (the admin's filtered listing)."""

        class Meta:
            index_name = "status-created"
            projection = AllProjection()

        status = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)

    class JobModel(Model):
        class Meta(_Meta):
            table_name = settings.jobs_table
            stream_view_type = "NEW_AND_OLD_IMAGES"

        job_id = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute()
        all_pk = UnicodeAttribute(default=ALL_PK)
        active_pk = UnicodeAttribute(null=True)
        queued_pk = UnicodeAttribute(null=True)
        owner_status = UnicodeAttribute(null=True)  # "<owner>#<STATUS>", rewritten with every status
        name = UnicodeAttribute()
        owner = UnicodeAttribute()
        status = UnicodeAttribute()
        backend = UnicodeAttribute()
        spec = UnicodeAttribute()  # JSON text: keys are user data, so no attribute-name surprises
        native_id = UnicodeAttribute(null=True)  # the provider's id or ARN
        native_name = UnicodeAttribute(null=True)  # ours: jp-<job_id>[-a<attempt>]
        attempt = NumberAttribute(default=1)
        created_at = UTCDateTimeAttribute()
        started_at = UTCDateTimeAttribute(null=True)
        finished_at = UTCDateTimeAttribute(null=True)
        updated_at = UTCDateTimeAttribute(null=True)
        failure_kind = UnicodeAttribute(null=True)
        failure_reason = UnicodeAttribute(null=True)
        cost_estimate_usd = NumberAttribute(null=True)
        planner_reason = UnicodeAttribute(null=True)
        status_reason = UnicodeAttribute(null=True)
        claims = UnicodeAttribute(null=True)  # JSON [[pool, units], ...] while capacity is held
        candidates = UnicodeAttribute(null=True)  # JSON list of registry names, in failover order
        first_refusal_at = UTCDateTimeAttribute(null=True)  # capacity_wait_minutes counts from here
        region = UnicodeAttribute(null=True)  # the current attempt's region (None: the deployment's)
        launch_operation = UnicodeAttribute(null=True)  # the provider operation creating the resource (GCE)
        metrics = UnicodeAttribute(null=True)  # JSON {key: latest value}
        metrics_cursor = UnicodeAttribute(null=True)  # JSON Cursor: how far the output was read for metrics
        costs = UnicodeAttribute(null=True)  # JSON [AttemptCost, ...]: each attempt's rate, hours and figure
        changed = UnicodeAttribute(null=True)  # iso() of the last write, whatever it changed (the *-changed indexes)

        by_owner = OwnerIndex()
        by_all = AllIndex()
        active = ActiveIndex()
        queued = QueuedIndex()
        by_owner_status = OwnerStatusIndex()
        by_status = StatusIndex()
        by_owner_changed = OwnerChangedIndex()
        by_all_changed = AllChangedIndex()

    class HistoryModel(Model):
        class Meta(_Meta):
            table_name = settings.events_table

        job_id = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)
        at = UTCDateTimeAttribute()
        from_status = UnicodeAttribute(null=True)
        to_status = UnicodeAttribute()
        reason = UnicodeAttribute()
        source = UnicodeAttribute()
        native_status = UnicodeAttribute(null=True)
        attempt = NumberAttribute(default=1)

    class CapacityModel(Model):
        """One item per capacity pool of the quota-aware queue: units in use."""

        class Meta(_Meta):
            table_name = settings.capacity_table

        pool = UnicodeAttribute(hash_key=True)
        in_use = NumberAttribute(null=True)

    class IdempotencyModel(Model):
        class Meta(_Meta):
            table_name = settings.idempotency_table

        pk = UnicodeAttribute(hash_key=True)
        job_id = UnicodeAttribute()
        request_hash = UnicodeAttribute()
        created_at = UTCDateTimeAttribute()
        expires_at = NumberAttribute()  # DynamoDB TTL attribute (epoch seconds)

    return {
        "jobs": JobModel,
        "history": HistoryModel,
        "idempotency": IdempotencyModel,
        "capacity": CapacityModel,
    }


def owner_status(owner: str, status: JobStatus) -> str:
    """The owner-status index's key. A status never holds "#", so the last one splits the two unambiguously."""
    return f"{owner}#{status.value}"


def _job_from_item(item: Any) -> Job:
    plain = {f: (int(getattr(item, f)) if f == "attempt" else getattr(item, f)) for f in _PLAIN_FIELDS}
    plain["native_name"], plain["native_id"] = _native(
        item.job_id, plain["attempt"], plain["native_name"], plain["native_id"]
    )
    return Job(
        job_id=item.job_id,
        status=JobStatus(item.status),
        spec=JobSpec.from_dict(json.loads(item.spec)),
        failure_kind=FailureKind(item.failure_kind) if item.failure_kind else None,
        claims=_claims(item.claims),
        candidates=tuple(json.loads(item.candidates)) if item.candidates else (),
        metrics=json.loads(item.metrics) if item.metrics else {},
        metrics_cursor=Cursor.from_text(item.metrics_cursor),
        costs=costs_from_text(item.costs),
        **plain,
    )


def _native(job_id: str, attempt: int, name: str | None, native_id: str | None) -> tuple[str | None, str | None]:
    """(native_name, native_id) of an item. Items written before the two were apart have only native_id,
    holding our name until the provider's id replaced it: the name is derived, and our name is no provider id."""
    if name is not None or native_id is None:
        return name, native_id
    name = native_name(job_id, attempt)
    return name, None if native_id == name else native_id


def _value(value: Any) -> Any:
    if isinstance(value, Cursor):
        return value.to_text()
    if isinstance(value, JobSpec):  # a failover to another GPU type rewrites the spec's resources.gpu_type
        return json.dumps(value.to_dict(), sort_keys=True)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else None
    if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
        return json.dumps(list(value))
    if isinstance(value, tuple) and value and all(isinstance(v, AttemptCost) for v in value):
        return costs_to_text(value)
    if isinstance(value, tuple) and all(isinstance(v, Claim) for v in value):
        return _claims_text(value)
    return value.value if isinstance(value, (JobStatus, FailureKind, EventSource)) else value


def _claims_text(claims: tuple[Claim, ...]) -> str | None:
    return json.dumps([c.to_list() for c in claims]) if claims else None


def _claims(text: str | None) -> tuple[Claim, ...]:
    return tuple(Claim.from_list(c) for c in json.loads(text)) if text else ()


class DynamoJobStore(DynamoStore, JobStore):
    IDEMPOTENCY_TTL_SECONDS = 24 * 3600
    TTL_ATTRIBUTES = {"idempotency": "expires_at"}

    def __init__(self, settings: Settings) -> None:
        share_botocore_loader()
        self.models = build_models(settings)
        self.Job = self.models["jobs"]
        self.History = self.models["history"]
        self.Idempotency = self.models["idempotency"]
        self.Capacity = self.models["capacity"]

    # A migration done is recorded as an item of the idempotency table under an owner no token can have, so
    # the Scan it needs (whose cost grows with the history) runs once per deployment, not at every start.
    MIGRATION_OWNER = "__jobplane_migrations__"
    MIGRATION_KEEP_UNTIL = 253402300799  # 9999-12-31: never expired by the table's TTL

    def create_tables(self) -> set[str]:
        created = super().create_tables()
        if "jobs" not in created:
            self.add_missing_indexes()
        if "jobs" in created:
            # A new table holds no job written before the index.
            self._record_migration("owner_status")
        elif not self._migrated("owner_status"):
            self.backfill_owner_status()
            self._record_migration("owner_status")
        return created

    def add_missing_indexes(self) -> list[str]:
        """Add to an existing jobs table (a local stack's, kept across upgrades) the indexes the model has and
        it lacks, one UpdateTable each, waiting for each to be ACTIVE; returns their names. A deployed table
        gets them from Terraform (deploy/aws/resources.py). Items written before an index are in it once
        written again; the indexes added so far (the *-changed ones) need nothing more."""
        schema = self.Job._get_schema()
        client = self.Job._get_connection().connection.client
        table = self.Job.Meta.table_name
        with dynamo_errors():
            present = {
                i["IndexName"]
                for i in client.describe_table(TableName=table)["Table"].get("GlobalSecondaryIndexes", [])
            }
            added = []
            for index in schema["global_secondary_indexes"]:
                if index["index_name"] in present:
                    continue
                names = {k["AttributeName"] for k in index["key_schema"]}
                client.update_table(
                    TableName=table,
                    AttributeDefinitions=[a for a in schema["attribute_definitions"] if a["AttributeName"] in names],
                    GlobalSecondaryIndexUpdates=[
                        {
                            "Create": {
                                "IndexName": index["index_name"],
                                "KeySchema": index["key_schema"],
                                "Projection": {"ProjectionType": index["projection"]["ProjectionType"]},
                            }
                        }
                    ],
                )
                for _ in range(600):
                    described = client.describe_table(TableName=table)["Table"].get("GlobalSecondaryIndexes", [])
                    if any(i["IndexName"] == index["index_name"] and i["IndexStatus"] == "ACTIVE" for i in described):
                        break
                    time.sleep(1)
                added.append(index["index_name"])
        return added

    def _migration_pk(self, name: str) -> str:
        return json.dumps([self.MIGRATION_OWNER, name])

    def _migrated(self, name: str) -> bool:
        with dynamo_errors():
            try:
                self.Idempotency.get(self._migration_pk(name), consistent_read=True)
            except self.Idempotency.DoesNotExist:
                return False
        return True

    def _record_migration(self, name: str) -> None:
        now = datetime.now(UTC)
        item = self.Idempotency(
            self._migration_pk(name),
            job_id="",
            request_hash=name,
            created_at=now,
            expires_at=self.MIGRATION_KEEP_UNTIL,
        )
        with dynamo_errors():
            item.save()

    def backfill_owner_status(self) -> int:
        """Give jobs written before the owner-status index their key (a job that never changes again would
        otherwise be missing from its owner's status listings); returns how many were updated. Idempotent."""
        J = self.Job
        updated = 0
        for item in J.scan(filter_condition=J.owner_status.does_not_exist()):
            status = JobStatus(item.status)
            try:
                with dynamo_errors():
                    J(item.job_id).update(
                        actions=[J.owner_status.set(owner_status(item.owner, status))],
                        condition=(J.status == status.value),
                    )
                updated += 1
            except ConditionFailedError:
                pass  # its status moved meanwhile, and that write set the key
        return updated

    # --- jobs ----------------------------------------------------------------------
    def _item(self, job: Job):
        item = self.Job(
            job.job_id,
            sk=sort_key(job),
            status=job.status.value,
            spec=json.dumps(job.spec.to_dict(), sort_keys=True),
            failure_kind=job.failure_kind.value if job.failure_kind else None,
            active_pk=None if job.terminal else ACTIVE_PK,
            queued_pk=QUEUED_PK if job.status is JobStatus.QUEUED else None,
            owner_status=owner_status(job.owner, job.status),
            claims=_claims_text(job.claims),
            candidates=json.dumps(list(job.candidates)) if job.candidates else None,
            metrics=_value(job.metrics),
            metrics_cursor=_value(job.metrics_cursor),
            costs=costs_to_text(job.costs),
            changed=iso(utcnow()),
            **{f: getattr(job, f) for f in _PLAIN_FIELDS},
        )
        return item

    def _history_item(self, entry: HistoryEntry):
        return self.History(
            entry.job_id,
            history_key(entry),
            at=entry.at,
            from_status=entry.from_status.value if entry.from_status else None,
            to_status=entry.to_status.value,
            reason=entry.reason,
            source=entry.source.value,
            native_status=entry.native_status,
            attempt=entry.attempt,
        )

    def _save_history(self, entry: HistoryEntry) -> None:
        def write() -> None:
            with dynamo_errors():
                self._history_item(entry).save()

        retry_conflicts(write)

    def create_job(self, job: Job, entry: HistoryEntry) -> None:
        def write() -> None:
            with dynamo_errors(conditional=AlreadyExistsError(f"job {job.job_id} already exists")):
                self._item(job).save(condition=self.Job.job_id.does_not_exist())

        retry_conflicts(write)
        self._save_history(entry)

    def get_job(self, job_id: str) -> Job | None:
        try:
            return _job_from_item(self.Job.get(job_id, consistent_read=True))
        except DoesNotExist:
            return None

    def get_jobs(self, job_ids: list[str]) -> dict[str, Job]:
        # BatchGetItem, 100 keys a request (pynamodb retries the unprocessed ones).
        with dynamo_errors():
            items = list(self.Job.batch_get(list(dict.fromkeys(job_ids)), consistent_read=True))
        return {item.job_id: _job_from_item(item) for item in items}

    def _actions(self, fields: dict[str, Any]) -> list:
        actions = []
        for name, value in fields.items():
            attr = getattr(self.Job, name)
            value = _value(value)
            actions.append(attr.remove() if value is None else attr.set(value))
        actions.append(self.Job.changed.set(iso(utcnow())))  # every write moves the job in the *-changed indexes
        return actions

    def _guarded_update(self, job: Job, expected: JobStatus, fields: dict[str, Any]) -> None:
        J = self.Job
        actions = self._actions(fields)
        item = J(job.job_id)

        def write() -> None:
            with dynamo_errors(conditional=StaleStateError(f"job {job.job_id} is no longer {expected.value}")):
                item.update(actions=actions, condition=(J.status == expected.value))

        retry_conflicts(write)

    def apply_transition(self, job: Job, transition: Transition) -> Job:
        updated = apply_changes(job, transition)
        fields = {
            "status": transition.to_status,
            "updated_at": transition.at,
            "status_reason": transition.reason,
            "owner_status": owner_status(job.owner, transition.to_status),
            **transition.changes,
        }
        if transition.to_status.terminal:
            fields["active_pk"] = None  # leaves the sparse active index
        if transition.to_status is JobStatus.QUEUED:
            fields["queued_pk"] = QUEUED_PK
        elif transition.from_status is JobStatus.QUEUED:
            fields["queued_pk"] = None
        entry = history_from_transition(transition, updated.attempt)
        if transition.acquire or transition.release:
            self._transact(job, transition, fields, entry)
            return updated
        self._guarded_update(job, transition.from_status, fields)
        self._save_history(entry)
        return updated

    def _transact(self, job: Job, transition: Transition, fields: dict[str, Any], entry: HistoryEntry) -> None:
        """Job update, capacity counters and history in one transaction: a claim is never held twice,
        never lost, and two dispatchers at once cannot take more than a pool's limit."""
        C = self.Capacity
        for claim, limit in transition.acquire:
            if claim.units > limit:
                raise CapacityExhaustedError(claim.pool, f"{claim.pool} allows {limit}, the job needs {claim.units}")
        connection = self.Job._get_connection().connection

        def write() -> None:
            with dynamo_errors(), TransactWrite(connection=connection) as tx:
                tx.update(
                    self.Job(job.job_id),
                    actions=self._actions(fields),
                    condition=(self.Job.status == transition.from_status.value),
                )
                for claim, limit in transition.acquire:
                    tx.update(
                        C(claim.pool),
                        actions=[C.in_use.add(claim.units)],
                        condition=(C.in_use.does_not_exist() | (C.in_use <= limit - claim.units)),
                    )
                for claim in transition.release:
                    tx.update(C(claim.pool), actions=[C.in_use.add(-claim.units)])
                tx.save(self._history_item(entry))

        try:
            # A cancelled transaction wrote nothing, so writing it again cannot hold a claim twice; the
            # history key is taken anew each try (it starts with the time of the write).
            retry_conflicts(write)
        except ConditionFailedError as exc:
            # pynamodb sends puts before updates: [history put, job update, counter updates...]
            reasons = exc.reasons[1:]
            if reasons and reasons[0] == "ConditionalCheckFailed":
                raise StaleStateError(f"job {job.job_id} is no longer {transition.from_status.value}") from None
            for (claim, _limit), code in zip(transition.acquire, reasons[1:], strict=False):
                if code == "ConditionalCheckFailed":
                    raise CapacityExhaustedError(claim.pool) from None
            raise

    def capacity_usage(self, pools: list[str]) -> dict[str, int]:
        usage = dict.fromkeys(pools, 0)
        for item in self.Capacity.batch_get(list(pools)):
            usage[item.pool] = int(item.in_use or 0)
        return usage

    def update_job(self, job: Job, expected: JobStatus, **changes) -> Job:
        self._guarded_update(job, expected, changes)
        return job.with_changes(**changes)

    def record_metrics(self, job: Job, metrics: dict[str, float], cursor: Cursor) -> Job | None:
        J = self.Job
        stored = job.metrics_cursor
        guard = J.job_id.exists() & (
            J.metrics_cursor.does_not_exist() if stored is None else (J.metrics_cursor == stored.to_text())
        )
        actions = self._actions({"metrics": metrics, "metrics_cursor": cursor})
        try:
            with dynamo_errors():
                J(job.job_id).update(actions=actions, condition=guard)
        except ConditionFailedError:
            return None
        return job.with_changes(metrics=dict(metrics), metrics_cursor=cursor)

    def list_jobs(self, owner, status, limit, cursor) -> Page:
        # Each listing has an index of exactly its jobs, so no filter discards what was read: a page is one
        # query of limit + 1 items (the extra one only says whether another page exists).
        if owner is not None and status is not None:
            index, hash_key, hash_name = self.Job.by_owner_status, owner_status(owner, status), "owner_status"
        elif status is not None:
            index, hash_key, hash_name = self.Job.by_status, status.value, "status"
        elif owner is not None:
            index, hash_key, hash_name = self.Job.by_owner, owner, "owner"
        else:
            index, hash_key, hash_name = self.Job.by_all, ALL_PK, "all_pk"
        return self._page(index, hash_key, hash_name, "sk", limit, cursor, forward=False)

    def list_changed(self, owner, since, limit, cursor) -> Page:
        if owner is not None:
            index, hash_key, hash_name = self.Job.by_owner_changed, owner, "owner"
        else:
            index, hash_key, hash_name = self.Job.by_all_changed, ALL_PK, "all_pk"
        condition = self.Job.changed > since
        return self._page(index, hash_key, hash_name, "changed", limit, cursor, forward=True, condition=condition)

    def _page(self, index, hash_key, hash_name, range_name, limit, cursor, forward, condition=None) -> Page:
        """One page of an index's partition `hash_key`: a query of limit + 1 items (the extra one only says
        whether another page exists), resumed from a cursor of a previous page of the same listing."""
        start = None
        if cursor is not None:
            keys = {"job_id", range_name, hash_name}
            if (
                set(cursor) != keys
                or not all(isinstance(v, str) for v in cursor.values())
                or cursor[hash_name] != hash_key
            ):
                raise ValidationError(
                    "next_token does not belong to this listing",
                    [{"field": "next_token", "message": "use the token the previous page returned"}],
                )
            start = {k: {"S": v} for k, v in cursor.items()}
        invalid = ValidationError(
            "next_token is not valid",
            [{"field": "next_token", "message": "use the token the previous page returned"}],
        )
        with dynamo_errors(invalid=invalid):
            results = index.query(
                hash_key,
                range_key_condition=condition,
                scan_index_forward=forward,
                limit=limit + 1,
                last_evaluated_key=start,
                page_size=limit + 1,
            )
            items = list(results)
        jobs = [_job_from_item(item) for item in items[:limit]]
        next_cursor = None
        if len(items) > limit:
            last = items[limit - 1]
            next_cursor = {"job_id": last.job_id, range_name: getattr(last, range_name), hash_name: hash_key}
        return Page(jobs, next_cursor)

    def iter_queued(self) -> Iterator[Job]:
        for item in self.Job.queued.query(QUEUED_PK, scan_index_forward=True):
            yield _job_from_item(item)

    def iter_created(self, since, until=None, owner=None) -> Iterator[Job]:
        # The sort key is "<created_at ISO>#<job_id>": "#" sorts before every digit, and "~" after "#" and
        # every id character, so [since, until) is the key range [iso(since), iso(until)).
        index, hash_key = (self.Job.by_all, ALL_PK) if owner is None else (self.Job.by_owner, owner)
        start = iso(since)
        sk = self.Job.sk
        condition = sk >= start if until is None else sk.between(start, iso(until - ONE_MICROSECOND) + "#~")
        for item in index.query(hash_key, range_key_condition=condition, scan_index_forward=True):
            yield _job_from_item(item)

    def iter_active(self) -> Iterator[Job]:
        for item in self.Job.active.query(ACTIVE_PK, scan_index_forward=True):
            yield _job_from_item(item)

    def history(self, job_id: str) -> list[HistoryEntry]:
        return [
            HistoryEntry(
                job_id=i.job_id,
                at=i.at,
                from_status=JobStatus(i.from_status) if i.from_status else None,
                to_status=JobStatus(i.to_status),
                reason=i.reason,
                source=EventSource(i.source),
                native_status=i.native_status,
                attempt=int(i.attempt),
            )
            for i in self.History.query(job_id, scan_index_forward=True, consistent_read=True)
        ]

    # --- idempotency -------------------------------------------------------------------
    def claim_idempotency_key(self, record: IdempotencyRecord) -> IdempotencyRecord:
        pk = json.dumps([record.owner, record.key])
        item = self.Idempotency(
            pk,
            job_id=record.job_id,
            request_hash=record.request_hash,
            created_at=record.created_at,
            expires_at=int(record.created_at.timestamp()) + self.IDEMPOTENCY_TTL_SECONDS,
        )
        try:
            with dynamo_errors():
                item.save(condition=self.Idempotency.pk.does_not_exist())
            return record
        except ConditionFailedError:
            pass  # the key is taken: answer with the record that holds it
        existing = self.Idempotency.get(pk, consistent_read=True)
        return IdempotencyRecord(record.owner, record.key, existing.job_id, existing.request_hash, existing.created_at)

    def job_from_image(self, image: dict[str, Any]) -> Job:
        """A job from a DynamoDB stream image of the jobs table (attribute-value JSON, as Lambda gets it)."""
        return _job_from_item(self.Job.from_raw_data(image))
