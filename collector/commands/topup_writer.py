"""Top-ups written into meters that keep their own balance, verified by their purchase
count, retried with the same count until the meter shows it, never credited twice.

A DL/T645 cost-control meter accepts a purchase only as its purchase count + 1, with
MACs from the utility's security module (drivers/security.py).  So:

1. the first attempt reads the count ``n`` and fixes the purchase as count ``n + 1``;
   that number is kept (in ``data_dir/topup-writes.json``) with the receipt;
2. after sending, the count is read back: ``n + 1`` is ``confirmed``; still ``n`` is
   ``unconfirmed``: the same purchase (same count) is sent again after
   ``retry_interval``, up to ``attempts`` times, then it is ``failed`` (an alarm);
   a meter refusal (a wrong MAC, another customer) is ``refused`` at once (an alarm);
3. a count found already past the purchase's (an attempt whose answer was lost) is
   ``confirmed``: nothing is sent again.

Every attempt is a command record (kind ``topup_write``) with the counts and balances
read, never a key, MAC or the customer number.  A purchase count that moves with no
top-up written or recorded here is a ``purchase_unknown`` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from collector.polling.rules import SEVERITY
from collector.store.records import CommandRecord, Event, Reading, utcnow
from drivers.device import TopupOrder, TopupResult
from drivers.errors import DriverError

if TYPE_CHECKING:
    from collector.config.settings import MeterSettings
    from collector.polling.scheduler import BusWorker
    from drivers.security import SecurityModule
    from protocols.modbus import Profile

log = logging.getLogger("amic.topup")

STATE_FILE: Final = "topup-writes.json"
ATTEMPTS: Final = 5


@dataclass(slots=True)
class _Write:
    receipt: str
    meter: str
    amount_fen: int
    count: int | None = None  # fixed by the first attempt that read the meter
    attempts: int = 0
    status: str = "pending"  # pending, confirmed, refused, failed
    operator: str = ""


class TopupWriter:
    """Writes recorded top-ups into meters (see the module docstring)."""

    def __init__(self, *, security: SecurityModule,
                 meters: Callable[[], Mapping[str, MeterSettings]],
                 workers: Callable[[], Mapping[str, BusWorker]],
                 profile: Callable[[str], Profile] | None,
                 record: Callable[[CommandRecord], None], event: Callable[[Event], None],
                 data_dir: Path, retry_interval: float = 300.0,
                 attempts: int = ATTEMPTS) -> None:
        self.security = security
        self.meters = meters
        self.workers = workers
        self.profile = profile
        self.record = record
        self.event = event
        self.path = data_dir / STATE_FILE
        self.retry_interval = retry_interval
        self.attempts = attempts
        self.writes: dict[str, _Write] = {}
        self.last_count: dict[str, int] = {}  # meter -> purchase count last seen
        self.known: dict[str, set[int]] = {}  # meter -> counts our writes made
        self._load()

    # ---- state across restarts -------------------------------------------------------

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
            self.writes = {w["receipt"]: _Write(**w) for w in doc.get("writes", [])}
            self.last_count = {str(k): int(v) for k, v in doc.get("counts", {}).items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.error("%s unreadable (%s): pending top-up writes are not retried", self.path,
                      e)
        for w in self.writes.values():
            if w.status == "confirmed" and w.count is not None:
                self.known.setdefault(w.meter, set()).add(w.count)

    def save(self) -> None:
        tmp = self.path.with_name(STATE_FILE + ".tmp")
        doc = {"writes": [asdict(w) for w in self.writes.values()],
               "counts": self.last_count}
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
        except OSError as e:
            log.error("top-up writes not saved to %s: %s", self.path, e)

    # ---- writing -----------------------------------------------------------------------

    def pending(self) -> list[str]:
        return [r for r, w in self.writes.items() if w.status == "pending"]

    async def write(self, meter: str, amount: Decimal, receipt: str, *,
                    operator: str = "") -> dict[str, Any]:
        """One attempt for the purchase ``receipt`` (created on first use); its result."""
        w = self.writes.get(receipt)
        if w is None:
            w = self.writes[receipt] = _Write(receipt, meter, int(amount * 100),
                                              operator=operator)
        if w.status != "pending":
            return {"meter": w.meter, "receipt": receipt, "status": w.status,
                    "count": w.count, "detail": "already done; not sent again"}
        m = self.meters().get(w.meter)
        worker = self.workers().get(m.bus) if m is not None else None
        if m is None or worker is None:
            return self._finish(w, None, f"meter {w.meter}: not configured or its bus is "
                                         "not running", final=True)
        device = worker.device(m, self.profile)
        if not device.capabilities.topup:
            return self._finish(w, None, f"meter {w.meter}: keeps no balance a top-up can "
                                         "be written into", final=True)
        from collector.polling.scheduler import Lane
        order = TopupOrder(w.amount_fen, w.count, m.customer if m.customer.isdigit()
                           and len(m.customer) <= 12 else "", receipt)
        w.attempts += 1

        async def job(_: BusWorker) -> TopupResult:
            return await device.write_topup(order, self.security)

        try:
            result: TopupResult | None = await worker.submit(Lane.COMMAND, job)
            detail = ""
        except DriverError as e:  # no reply, link down: nothing known, try again
            result, detail = None, str(e)
        return self._finish(w, result, detail)

    def _finish(self, w: _Write, result: TopupResult | None, detail: str, *,
                final: bool = False) -> dict[str, Any]:
        now = utcnow()
        if result is not None:
            w.count = result.count
            detail = result.detail
            if result.count_after is not None:
                self.last_count[w.meter] = result.count_after
        status = result.status if result is not None else \
            "refused" if final else "unconfirmed"
        if status == "confirmed":
            w.status = "confirmed"
            assert w.count is not None
            self.known.setdefault(w.meter, set()).add(w.count)
        elif status == "refused":
            w.status = "refused"
        elif w.attempts >= self.attempts:
            w.status = "failed"
        shown = {"receipt": w.receipt, "amount": f"{w.amount_fen / 100:.2f}",
                 "attempt": w.attempts, "status": status,
                 **({k: v for k, v in result.as_dict().items() if k != "status"}
                    if result is not None else {"detail": detail})}
        self.record(CommandRecord(f"{w.receipt}/{w.meter}/write{w.attempts}", w.meter,
                                  "topup_write", now, operator=w.operator or "prepaid",
                                  status=status, detail=json.dumps(shown)))
        if w.status == "confirmed":
            self.event(Event("topup_written", now, meter=w.meter,
                             severity=SEVERITY["topup_written"],
                             value=result.balance_after if result is not None else None,
                             detail=f"purchase {w.count} ({w.amount_fen / 100:.2f} yuan, "
                                    f"{w.receipt}) written and confirmed"))
        elif w.status in ("refused", "failed"):
            self.event(Event("topup_not_written", now, meter=w.meter,
                             severity=SEVERITY["topup_not_written"],
                             detail=f"{w.receipt}: {w.status} after {w.attempts} "
                                    f"attempt(s): {detail}"[:500]))
        self.save()
        log.info("top-up %s of meter %s: %s (attempt %d)%s", w.receipt, w.meter, status,
                 w.attempts, f": {detail}" if detail else "")
        return {"meter": w.meter, "receipt": w.receipt, "status": status,
                "final": w.status, "count": w.count, "attempt": w.attempts,
                **({"count_before": result.count_before, "count_after": result.count_after,
                    "balance_before": result.balance_before,
                    "balance_after": result.balance_after} if result is not None else {}),
                "detail": detail}

    async def retry_loop(self) -> None:
        """Pending purchases again every ``retry_interval`` (same count)."""
        while True:
            await asyncio.sleep(self.retry_interval)
            for receipt in self.pending():
                w = self.writes[receipt]
                try:
                    await self.write(w.meter, Decimal(w.amount_fen) / 100, receipt)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("top-up %s: retry failed", receipt)

    # ---- purchase counts seen in polls ---------------------------------------------------

    def observe(self, meter: str, readings: list[Reading], *, expected: int = 0) -> int:
        """A purchase count in ``readings`` that moved past what our writes (and
        ``expected`` purchases recorded here, written by others) explain is a
        ``purchase_unknown`` event.  Returns how many of ``expected`` it used up."""
        count = next((int(r.value) for r in readings if r.quantity == "purchase_count"
                      and isinstance(r.value, (int, float))), None)
        if count is None:
            return 0
        before = self.last_count.get(meter)
        self.last_count[meter] = count
        if before is None or count <= before:
            return 0
        ours = {c for c in self.known.get(meter, set()) if before < c <= count}
        unexplained = count - before - len(ours)
        used = min(unexplained, expected)
        unexplained -= used
        if unexplained > 0:
            self.event(Event("purchase_unknown", utcnow(), meter=meter,
                             severity=SEVERITY["purchase_unknown"],
                             value=float(count),
                             detail=f"purchase count {before} -> {count}: {unexplained} "
                                    "purchase(s) not written nor recorded by this "
                                    "collector"))
        self.save()
        return used


__all__ = ["ATTEMPTS", "STATE_FILE", "TopupWriter"]
