"""A real VictoriaMetrics (single node) for tests: own data dir, a free loopback port.

    from victoria import VictoriaMetrics
    with VictoriaMetrics(tmp_path) as vm: vm.url  ->  "http://127.0.0.1:PORT"

It accepts InfluxDB line protocol on ``/api/v2/write`` (what influxdb-client writes
to).  ``-dedup.minScrapeInterval=1ms`` makes it keep one sample per series and
millisecond, so a batch the forwarder replays after a crash or an outage is stored
once.  ``stop()``/``start()``/``restart()`` keep the port and the data, for outage tests.
``export(match)`` reads series back through ``/api/v1/export`` (JSON lines).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from conftest import free_port

VM_BIN = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"


class VictoriaMetrics:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.data = self.dir / "vmdata"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = self.dir / "victoria-metrics.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [VM_BIN, f"-storageDataPath={self.data}",
                 f"-httpListenAddr=127.0.0.1:{self.port}", "-dedup.minScrapeInterval=1ms",
                 "-retentionPeriod=100y", "-search.disableCache",
                 "-loggerLevel=WARN"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=0.5) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"victoria-metrics failed to start:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _get(self, path: str, params: dict[str, Any] | None = None) -> bytes:
        q = f"?{urllib.parse.urlencode(params, doseq=True)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{q}", timeout=30) as r:
            return bytes(r.read())

    def flush(self) -> None:
        """Make what was just written searchable (it is buffered for ~1 s otherwise)."""
        self._get("/internal/force_flush")

    def export(self, match: str = '{__name__!=""}', *, start: str = "0",
               flush: bool = True) -> list[dict[str, Any]]:
        """Series matching ``match``: ``{"metric": {...}, "values": [...],
        "timestamps": [ms, ...]}`` each (deduplicated)."""
        if flush:
            self.flush()
        # end: VictoriaMetrics' default is "now", which misses samples of the last moment.
        end = str(int(time.time()) + 86_400)
        body = self._get("/api/v1/export", {"match[]": match, "start": start, "end": end})
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def __enter__(self) -> VictoriaMetrics:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
