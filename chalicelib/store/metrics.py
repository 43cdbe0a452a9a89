"""The metrics store: each job's series per key (bounded: jobs.metrics.Series), on DynamoDB and in memory."""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from chalicelib.errors import ConditionFailedError
from chalicelib.jobs.metrics import MAX_POINTS, Series
from chalicelib.store.edge import DynamoStore, dynamo_errors, share_botocore_loader, table_meta

if TYPE_CHECKING:
    from pynamodb.models import Model

    from chalicelib.config import Settings


class MetricsStore(ABC):
    """A job's metric series, one per key. Appends are idempotent per seq: reading the same output twice
    (a lost race, a retried write) adds nothing the second time."""

    @abstractmethod
    def series(self, job_id: str) -> dict[str, Series]:
        """Every key's series of the job (empty when it reported none)."""

    @abstractmethod
    def append(self, job_id: str, points: dict[str, list[tuple[int, float]]]) -> dict[str, Series]:
        """Add (seq, value) points per key (a seq at or before a key's last_seq is skipped); the series after."""

    def create_tables(self) -> None:
        """Create whatever backing tables are missing (tests, the local stack)."""


class InMemoryMetricsStore(MetricsStore):
    def __init__(self, max_points: int = MAX_POINTS) -> None:
        self._lock = threading.Lock()
        self._series: dict[str, dict[str, Series]] = {}
        self.max_points = max_points

    def series(self, job_id: str) -> dict[str, Series]:
        return dict(self._series.get(job_id, {}))

    def append(self, job_id: str, points: dict[str, list[tuple[int, float]]]) -> dict[str, Series]:
        with self._lock:
            job = self._series.setdefault(job_id, {})
            for key, new in points.items():
                job[key] = job.get(key, Series()).extend(new, self.max_points)
            return dict(job)


def build_models(settings: Settings) -> dict[str, type[Model]]:
    """The metrics table's model: one item per (job, key)."""
    from pynamodb.attributes import NumberAttribute, UnicodeAttribute
    from pynamodb.models import Model

    class MetricModel(Model):
        class Meta(table_meta(settings)):
            table_name = settings.metrics_table

        job_id = UnicodeAttribute(hash_key=True)
        key = UnicodeAttribute(range_key=True)
        series = UnicodeAttribute()  # JSON Series.to_dict(): at most MAX_POINTS points (about 25 KB)
        last_seq = NumberAttribute()  # the guard of the next write: a concurrent reader's write wins once

    return {"metrics": MetricModel}


class DynamoMetricsStore(DynamoStore, MetricsStore):
    WRITE_TRIES = 3

    def __init__(self, settings: Settings, max_points: int = MAX_POINTS) -> None:
        share_botocore_loader()
        self.models = build_models(settings)
        self.Metric = self.models["metrics"]
        self.max_points = max_points

    def series(self, job_id: str) -> dict[str, Series]:
        # One Query (a page holds about 40 full series; a job has at most 64 keys).
        return {
            item.key: Series.from_dict(json.loads(item.series))
            for item in self.Metric.query(job_id, consistent_read=True)
        }

    def append(self, job_id: str, points: dict[str, list[tuple[int, float]]]) -> dict[str, Series]:
        if not points:
            return self.series(job_id)
        current = self.series(job_id)
        for key, new in points.items():
            current[key] = self._append_key(job_id, key, new, current.get(key))
        return current

    def _append_key(self, job_id: str, key: str, new: list[tuple[int, float]], series: Series | None) -> Series:
        M = self.Metric
        for _ in range(self.WRITE_TRIES):
            base = series or Series()
            updated = base.extend(new, self.max_points)
            if updated == base:
                return base  # every point was there already
            condition = M.job_id.does_not_exist() if series is None else (M.last_seq == base.last_seq)
            item = M(job_id, key, series=json.dumps(updated.to_dict()), last_seq=updated.last_seq)
            try:
                with dynamo_errors():
                    item.save(condition=condition)
                return updated
            except ConditionFailedError:
                # Another reader wrote this key meanwhile: start again from what it wrote.
                with dynamo_errors():
                    found = list(M.query(job_id, M.key == key, consistent_read=True))
                series = Series.from_dict(json.loads(found[0].series)) if found else None
        return series or Series()
