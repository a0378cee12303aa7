"""load_settings time: the example config, and a config with a 10 000-meter ledger.

Run on demand: ``.venv/bin/python tests/bench/bench_config_load.py [--repeat 5]``.
Prints the best and median time of each; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from collector.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "amic.example.toml"

BIG = """\
[collector]
id = "bench"
data_dir = "data"

[[bus]]
name = "b1"
type = "tcp"
host = "127.0.0.1"
port = 8899

[meters]
ledger = "meters.csv"

[schedule.fast]
interval = "15m"
quantities = ["energy", "voltage"]
meters = ["area:A1", "bus:b1", "role:customer"]
"""


def _time(path: Path, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        load_settings(path)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--meters", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for f in EXAMPLE.parent.iterdir():
            if f.is_file():
                shutil.copy(f, d / f.name)
        if (EXAMPLE.parent / "profiles").is_dir():
            shutil.copytree(EXAMPLE.parent / "profiles", d / "profiles")
        (d / "data").mkdir()
        rows = ["meter_id,address,bus,area,role"]
        rows += [f"M{i:06d},{i + 1:012d},b1,A{i % 50 + 1},customer"
                 for i in range(args.meters)]
        (d / "meters.csv").write_text("\n".join(rows) + "\n")
        (d / "big.toml").write_text(BIG)
        for label, path in (("example config", d / EXAMPLE.name),
                            (f"{args.meters}-meter ledger", d / "big.toml")):
            t = _time(path, args.repeat)
            print(f"{label:24s} best {min(t) * 1000:8.1f} ms  median "
                  f"{statistics.median(t) * 1000:8.1f} ms  ({args.repeat} runs)")


if __name__ == "__main__":
    main()
