"""The worker consumer's Fetch round in-process: aiokafka's own codec against
``peakroute.streams.fetch_codec`` on one request and one response the size of a worker's (every
partition it owns: 7 input topics × 6 partitions, most with nothing new, a few with a ~500-byte
record batch). No broker: this box's noise does not reach it.

    python benchmarks/micro_fetch_codec.py [--partitions 6] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from io import BytesIO

from aiokafka.protocol.fetch import FetchRequest_v11, FetchResponse_v11

from peakroute.streams import fetch_codec
from peakroute.streams.topics import INVENTORY, RAW_TOPICS, STOCK_OPS, STOCK_REPLIES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=3000, help="codec calls per round")
    args = ap.parse_args()
    topics = [*RAW_TOPICS, INVENTORY, STOCK_OPS, STOCK_REPLIES]
    response = (0, 0, 0, [(t, [(p, 0, 1000, 1000, 0, [], -1, b"x" * 500 if (p + i) % 6 == 0 else b"")
                               for p in range(args.partitions)]) for i, t in enumerate(topics)])
    request = (-1, 500, 1, 52428800, 0, 0, -1,
               [(t, [(p, -1, 1000, -1, 1048576) for p in range(args.partitions)]) for t in topics], [], "")
    wire = FetchResponse_v11.SCHEMA.encode(response)
    assert fetch_codec.decode_fetch_response(wire) == FetchResponse_v11.SCHEMA.decode(BytesIO(wire))
    assert fetch_codec.encode_fetch_request(request) == FetchRequest_v11.SCHEMA.encode(request)

    def per_call(fn, arg) -> float:  # noqa: ANN001
        t = time.perf_counter()
        for _ in range(args.n):
            fn(arg)
        return (time.perf_counter() - t) / args.n * 1e6

    rows = {k: [] for k in ("decode aiokafka", "decode fast", "encode aiokafka", "encode fast")}
    for _ in range(args.rounds):  # interleaved, medians reported
        rows["decode aiokafka"].append(per_call(lambda w: FetchResponse_v11.SCHEMA.decode(BytesIO(w)), wire))
        rows["decode fast"].append(per_call(lambda w: fetch_codec.decode_fetch_response(BytesIO(w)), wire))
        rows["encode aiokafka"].append(per_call(FetchRequest_v11.SCHEMA.encode, request))
        rows["encode fast"].append(per_call(fetch_codec.encode_fetch_request, request))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{len(topics)} topics × {args.partitions} partitions; response {len(wire)} bytes; "
          f"median of {args.rounds} rounds of {args.n} calls, µs per call")
    for what in ("decode", "encode"):
        a, b = med[f"{what} aiokafka"], med[f"{what} fast"]
        print(f"  {what}: aiokafka {a:7.1f}   fast {b:6.1f}   ratio {b / a:.3f}")
    both_a, both_b = med["decode aiokafka"] + med["encode aiokafka"], med["decode fast"] + med["encode fast"]
    print(f"  one fetch round: aiokafka {both_a:.0f} µs, fast {both_b:.0f} µs (×{both_b / both_a:.3f}); at 200 "
          f"fetches/s that is {both_a * 200 / 1e4:.1f}% → {both_b * 200 / 1e4:.1f}% of a core")


if __name__ == "__main__":
    main()
