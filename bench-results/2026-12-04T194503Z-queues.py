#!/usr/bin/env python3
"""Summarizes loaded-latency JSONL files: where each variant's queue stood, beside the ping.
Medians [min-max] over rounds. "A ring" is relay A's queue_delay_ns.tun_to_udp (its TUN ring,
timed from drains), "B socket" relay B's queue_delay_ns.udp_to_tun (SO_TIMESTAMPNS); old and
--aqm off do not time them (-). "own" is tunfwd's own time (latency_ns). "B socket KB" is relay
B's receive queue from /proc/PID/net/udp every 100 ms (SAMPLE=1), for every variant. With
TRACE_TUN=1, "traced" is relay A's TUN ring from perf: each packet's wait (net_dev_start_xmit to
skb_copy_datagram_iovec) and the ring's occupancy in packets, for every variant."""
import json, sys
from collections import OrderedDict

def cell(vals, scale=1.0, d=2):
    vals = sorted(v / scale for v in vals if v is not None)
    if not vals:
        return "-"
    med = vals[(len(vals) - 1) // 2]
    return f"{med:.{d}f} [{vals[0]:.{d}f}-{vals[-1]:.{d}f}]"

def g(r, *path):
    for p in path:
        if not isinstance(r, dict) or p not in r:
            return None
        r = r[p]
    return r

groups = OrderedDict()
for path in sys.argv[1:]:
    for line in open(path):
        r = json.loads(line)
        if "ping_ms" not in r:
            continue
        groups.setdefault((r["tool"], r["cc"], r["streams"], r["variant"]), []).append(r)
traced = any("tun_ring_wait_us" in r for rs in groups.values() for r in rs)
head = ["load", "variant", "A ring wait p50 / p99 / max ms", "B socket wait p50 / p99 / max ms",
        "A own p50 / p99 ms", "B own p50 / p99 ms", "B socket KB median / max",
        "AQM drops A / B", "CE marks A / B", "retransmits", "load avg"]
if traced:
    head += ["traced A ring wait p50 / p99 / max us", "traced A ring packets p50 / max"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for (tool, cc, st, var), rs in groups.items():
    def q(side, direction, key, pct):
        return cell([g(r, side, key, direction, pct) for r in rs], 1e6)
    def drops(side):
        return cell([sum(v for k, v in (g(r, side, "drops") or {}).items() if k.startswith("aqm"))
                     for r in rs], 1, 0)
    row = [f"{tool} {cc} x{st}", var,
           " / ".join(q("relay_a", "tun_to_udp", "queue_delay_ns", p) for p in ("p50", "p99", "max")),
           " / ".join(q("relay_b", "udp_to_tun", "queue_delay_ns", p) for p in ("p50", "p99", "max")),
           " / ".join(q("relay_a", "tun_to_udp", "latency_ns", p) for p in ("p50", "p99")),
           " / ".join(q("relay_b", "udp_to_tun", "latency_ns", p) for p in ("p50", "p99")),
           cell([g(r, "samples", "b_socket", "median") for r in rs], 1e3, 0) + " / "
           + cell([g(r, "samples", "b_socket", "max") for r in rs], 1e3, 0),
           drops("relay_a") + " / " + drops("relay_b"),
           cell([g(r, "relay_a", "aqm_marked_tun_ring") for r in rs], 1, 0) + " / "
           + cell([g(r, "relay_b", "aqm_marked_udp_socket") for r in rs], 1, 0),
           cell([r.get("retransmits") for r in rs], 1, 0),
           cell([float(r["loadavg_before"][0]) for r in rs], 1, 1)]
    if traced:
        row += [" / ".join(cell([g(r, "tun_ring_wait_us", p) for r in rs], 1, 0) for p in ("p50", "p99", "max")),
                cell([g(r, "tun_ring_occupancy", "packets_p50") for r in rs], 1, 0) + " / "
                + cell([g(r, "tun_ring_occupancy", "packets_max") for r in rs], 1, 0)]
    print("| " + " | ".join(row) + " |")
