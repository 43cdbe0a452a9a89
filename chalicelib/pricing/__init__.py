"""The price catalog: hourly prices per provider, region and SKU, each with the date it was read."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from chalicelib.errors import ValidationError
from chalicelib.pricing.tables import DATA_DIR, Row, Table, read_table

if TYPE_CHECKING:
    from chalicelib.config import Settings

PROVIDERS = ("ec2", "sagemaker", "gce", "vertex", "local")
PURCHASES = ("on_demand", "spot")
LOCAL_PRICE_SETTING = "JOBPLANE_LOCAL_PRICE_PER_HOUR"


def _money(usd: float) -> str:
    return f"${usd:,.2f}"


def _rate(usd: float) -> str:
    # Hourly prices need more digits than totals (ml.m5.large is $0.115/h), but never fewer than 2.
    text = f"{usd:,.4f}".rstrip("0")
    return "$" + (text + "0" * (2 - len(text.split(".")[1])) if "." in text else text + ".00")


def money(usd: float) -> str:
    """'$1,234.57': a total, as every cost is shown."""
    return _money(usd)


def rate(usd: float) -> str:
    """'$0.115': a price per hour, with the digits it needs."""
    return _rate(usd)


@dataclass(frozen=True)
class Cost:
    """An amount of money, or an explicit unknown (`usd` None, with the reason), and its price date.

    Adding costs keeps the oldest price date, and anything plus an unknown is unknown: a total that
    silently left out a part would read as a real figure.
    """

    usd: float | None
    read_at: date | None
    reason: str = ""

    @property
    def known(self) -> bool:
        return self.usd is not None

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        if self.usd is None or other.usd is None:
            return Cost(None, None, "; ".join(c.reason for c in (self, other) if c.usd is None))
        dates = [d for d in (self.read_at, other.read_at) if d]  # $0 for nothing run has no price date
        return Cost(self.usd + other.usd, min(dates) if dates else None)

    def format(self) -> str:
        """'$1.23 (prices of 2026-01-15)', or 'unknown (why)'."""
        if self.usd is None:
            return f"unknown ({self.reason})"
        if self.read_at is None:  # nothing ran, so no price was used
            return _money(self.usd)
        return f"{_money(self.usd)} (prices of {self.read_at.isoformat()})"

    __str__ = format


@dataclass(frozen=True)
class Price:
    """A known hourly price: USD per hour, the date it was read and where it came from."""

    usd_per_hour: float
    read_at: date
    source: str

    def cost(self, hours: float) -> Cost:
        if hours < 0:
            raise ValidationError("hours must be at least 0", [{"field": "hours", "message": f"got {hours}"}])
        return Cost(self.usd_per_hour * hours, self.read_at)

    def __add__(self, other: Price | Unknown) -> Price | Unknown:
        """A VM's price from its parts (machine + accelerators): the oldest date, every source."""
        if isinstance(other, Unknown):
            return other
        if not isinstance(other, Price):
            return NotImplemented
        sources = self.source if other.source == self.source else f"{self.source}; {other.source}"
        return Price(self.usd_per_hour + other.usd_per_hour, min(self.read_at, other.read_at), sources)

    def times(self, n: int) -> Price:
        return Price(self.usd_per_hour * n, self.read_at, self.source)

    def format(self) -> str:
        """'$1.408/h (prices of 2026-09-24)'."""
        return f"{_rate(self.usd_per_hour)}/h (prices of {self.read_at.isoformat()})"

    __str__ = format


@dataclass(frozen=True)
class Unknown:
    """No price: falsy like None, but it says why, so a caller can show it instead of $0."""

    reason: str
    usd_per_hour = None
    read_at = None

    def __bool__(self) -> bool:
        return False

    def cost(self, hours: float) -> Cost:  # noqa: ARG002 - an unknown rate makes any duration unknown
        return Cost(None, None, self.reason)

    def __add__(self, other: Price | Unknown) -> Unknown:
        if isinstance(other, Unknown):
            return Unknown(f"{self.reason}; {other.reason}")
        return self

    def times(self, n: int) -> Unknown:  # noqa: ARG002
        return self

    def format(self) -> str:
        return f"unknown ({self.reason})"

    __str__ = format


Quote = Price | Unknown

_tables: dict[tuple[Path, str], Table] = {}
_lock = threading.Lock()


def _load(data_dir: Path, provider: str) -> Table:
    # Loaded on first use and kept per container: a cold Lambda pays only for the tables it reads.
    key = (data_dir, provider)
    with _lock:
        if key not in _tables:
            _tables[key] = read_table(data_dir / f"{provider}.json")
        return _tables[key]


def _check(name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValidationError(
            f"{name} must be one of {', '.join(valid)}, got {value!r}",
            [{"field": name, "message": f"must be one of {', '.join(valid)}"}],
        )
    return value


class Catalog:
    """Lookups over one catalog directory (the packaged one unless told otherwise).

    Provider notes:
    - `ec2`: instance types, on-demand and spot. Spot is the lowest price among the region's zones
      when the snapshot was taken, not a forecast: AWS changes it by zone and by hour.
    - `sagemaker`: training instance types (`ml.*`). There is no spot column: managed spot training
      bills the on-demand rate for `BillableTimeInSeconds` (AWS reports the saving as
      1 - BillableTimeInSeconds / TrainingTimeInSeconds), so `spot` answers the on-demand rate and
      the saving comes from the billable seconds the caller multiplies it by.
    - `gce`: machine types and accelerators are priced apart (a2/a3/g2 machine rows exclude their
      bundled GPUs); a VM is `vm_price()` = machine + N accelerators.
    - `vertex`: custom training bills the Compute Engine machine and accelerators plus a Vertex
      premium. No authoritative table of that premium was found, so the Vertex table is empty and
      every Vertex answer is Unknown, never the Compute Engine price passed off as Vertex's.
    - `local`: the price per hour is the JOBPLANE_LOCAL_PRICE_PER_HOUR setting (default 0); build
      the catalog with `for_settings()` to get it.
    """

    def __init__(self, data_dir: Path | None = None, *, local_price_per_hour: float | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
        self.local_price_per_hour = local_price_per_hour

    def table(self, provider: str) -> Table:
        _check("provider", provider, PROVIDERS[:-1])
        return _load(self.data_dir, provider)

    def price(self, provider: str, region: str, sku: str, purchase: str = "on_demand") -> Quote:
        """The hourly price of one SKU (for GCE/Vertex accelerators: of one GPU), or Unknown with why."""
        _check("provider", provider, PROVIDERS)
        _check("purchase", purchase, PURCHASES)
        if provider == "local":
            return self._local()
        if provider in ("gce", "vertex"):
            return self._gpu_or_machine(provider, region, sku, purchase)
        table = self.table(provider)
        row = self._find(table, region, sku)
        if row is None:
            return Unknown(f"{provider} has no price for {sku} in {region} in the catalog of {table.read_at}")
        if provider == "sagemaker" and purchase == "spot":
            quote = self._quote(table, row, "on_demand")
            if isinstance(quote, Price):
                note = "managed spot bills this on-demand rate for BillableTimeInSeconds"
                return Price(quote.usd_per_hour, quote.read_at, f"{quote.source} ({note})")
            return quote
        return self._quote(table, row, purchase)

    def vm_price(
        self,
        provider: str,
        region: str,
        machine_type: str,
        purchase: str = "on_demand",
        accelerator: str | None = None,
        accelerator_count: int | None = None,
    ) -> Quote:
        """A GCE (or Vertex) VM per hour: the machine plus its accelerators.

        Without `accelerator`, a machine that bundles GPUs (a2, a3, g2) is priced with them; an
        accelerator on such a machine must be the bundled one. N1 machines take T4 or V100.
        """
        _check("provider", provider, ("gce", "vertex"))
        _check("purchase", purchase, PURCHASES)
        table = self.table(provider)
        if not table.rows:
            return Unknown(table.notes)
        machine = self._find(table, region, machine_type, kind="machine")
        if machine is None:
            return Unknown(
                f"{provider} has no price for machine {machine_type} in {region} (catalog of {table.read_at})"
            )
        if machine.accelerator and accelerator and accelerator != machine.accelerator:
            raise ValidationError(
                f"{machine_type} comes with {machine.accelerator}, not {accelerator}",
                [{"field": "accelerator", "message": f"{machine_type} takes only {machine.accelerator}"}],
            )
        accelerator = accelerator or machine.accelerator
        count = accelerator_count if accelerator_count is not None else (machine.count or (1 if accelerator else 0))
        if accelerator and count < 1:
            raise ValidationError(
                f"accelerator_count must be at least 1 with an accelerator, got {count}",
                [{"field": "accelerator_count", "message": "must be at least 1"}],
            )
        if count and not accelerator:
            raise ValidationError(
                f"{machine_type} has no accelerator to count; name one",
                [{"field": "accelerator", "message": "required when accelerator_count is set"}],
            )
        total = self._quote(table, machine, purchase)
        if accelerator and count:
            total = total + self._accelerators(table, region, accelerator, count, purchase)
        return total

    # --- internals ------------------------------------------------------------------------
    def _local(self) -> Quote:
        if self.local_price_per_hour is None:
            return Unknown(f"the local price is the {LOCAL_PRICE_SETTING} setting: use pricing.for_settings(settings)")
        return Price(self.local_price_per_hour, date.today(), f"{LOCAL_PRICE_SETTING} setting")

    @staticmethod
    def _find(table: Table, region: str, sku: str, kind: str | None = None, count: int | None = None) -> Row | None:
        region, sku = region.strip().lower(), sku.strip().lower()
        for row in table.rows:
            if row.sku == sku and row.region == region and (kind is None or row.kind == kind):
                if count is None or row.count == count:
                    return row
        return None

    @staticmethod
    def _quote(table: Table, row: Row, purchase: str) -> Quote:
        read_at = row.read_at or table.read_at
        where = f"{table.provider} {row.sku} in {row.region}"
        if row.suspect:
            return Unknown(f"{where}: the catalog's number is suspect ({row.suspect})")
        usd = row.on_demand if purchase == "on_demand" else row.spot
        if usd is None:
            return Unknown(f"no {purchase.replace('_', '-')} price for {where} in the catalog of {read_at}")
        return Price(usd, read_at, row.source or table.sources.get(purchase, ""))

    def _gpu_or_machine(self, provider: str, region: str, sku: str, purchase: str) -> Quote:
        table = self.table(provider)
        if not table.rows:
            return Unknown(table.notes)
        machine = self._find(table, region, sku, kind="machine")
        if machine is not None:
            return self._quote(table, machine, purchase)
        return self._accelerators(table, region, sku, 1, purchase)

    def _accelerators(self, table: Table, region: str, accelerator: str, count: int, purchase: str) -> Quote:
        exact = self._find(table, region, accelerator, kind="accelerator", count=count)
        if exact is not None:
            return self._quote(table, exact, purchase)
        single = self._find(table, region, accelerator, kind="accelerator", count=1)
        if single is not None:
            return self._quote(table, single, purchase).times(count)
        return Unknown(
            f"{table.provider} has no price for {count} x {accelerator} in {region} (catalog of {table.read_at})"
        )


_default = Catalog()


def price(provider: str, region: str, sku: str, purchase: str = "on_demand") -> Quote:
    """The packaged catalog's hourly price, or Unknown with the reason (see `Catalog`)."""
    return _default.price(provider, region, sku, purchase)


def vm_price(
    provider: str,
    region: str,
    machine_type: str,
    purchase: str = "on_demand",
    accelerator: str | None = None,
    accelerator_count: int | None = None,
) -> Quote:
    """The packaged catalog's GCE/Vertex machine + accelerators per hour (see `Catalog.vm_price`)."""
    return _default.vm_price(provider, region, machine_type, purchase, accelerator, accelerator_count)


def for_settings(settings: Settings) -> Catalog:
    """The packaged catalog with the deployment's own `local` price."""
    return Catalog(local_price_per_hour=settings.local_price_per_hour)
