"""Benchmark the device layer, each figure beside its baseline measured in the same run:

- MT-SICS readings per second from a simulator paced at 9600 baud over a real pty, beside
  the line-rate limit for that reply length (target >= 90 %);
- 100 Modbus tags polled per cycle (block reads), beside one single-register round trip.

The reading-to-browser latency through the gateway and Socket.IO needs the gateway, which
does not exist yet; it is reported as not measured.

    python -m tests.bench.devices [--seconds 5] [--baud 9600] [--tags 100] [--cycles 50]
"""

from __future__ import annotations

import argparse
import json

from tests.bench.devices_modbus import measure_modbus_cycle
from tests.bench.devices_scale import measure_mtsics_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="none", help="unused: the device layer touches no database")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--tags", type=int, default=100)
    ap.add_argument("--cycles", type=int, default=50)
    args = ap.parse_args()
    print(json.dumps({
        "benchmark": "devices", "db": args.db,
        "mtsics": measure_mtsics_rate(args.seconds, args.baud),
        "modbus": measure_modbus_cycle(args.tags, args.cycles),
        "gateway_to_browser_latency": "not measured: the gateway is not built yet",
    }, default=str))


if __name__ == "__main__":
    main()
