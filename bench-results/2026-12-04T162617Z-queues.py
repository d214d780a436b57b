#!/usr/bin/env python3
"""Summarizes loaded-latency JSONL files: where each variant's queue stood (relay A's TUN ring,
relay B's socket, tunfwd's own time), beside the ping and the rate. Medians [min-max] over rounds."""
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
print("| load | variant | A ring wait p50/p99 ms | B socket wait p50/p99 ms | A own tun_to_udp p50/p99 ms | B own udp_to_tun p50/p99 ms | B socket bytes median/max (KB) | AQM drops A+B | CE marks A+B | kernel tun_queue drops | retransmits |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (tool, cc, st, var), rs in groups.items():
    def dsum(r, key):
        t = 0
        for side in ("relay_a", "relay_b"):
            for k, v in (g(r, side, "drops") or {}).items():
                if k.startswith("aqm"):
                    t += v
        return t
    print("| {} {} x{} | {} | {} / {} | {} / {} | {} / {} | {} / {} | {} / {} | {} | {} | {} | {} |".format(
        tool, cc, st, var,
        cell([g(r, "relay_a", "queue_delay_ns", "tun_to_udp", "p50") for r in rs], 1e6),
        cell([g(r, "relay_a", "queue_delay_ns", "tun_to_udp", "p99") for r in rs], 1e6),
        cell([g(r, "relay_b", "queue_delay_ns", "udp_to_tun", "p50") for r in rs], 1e6),
        cell([g(r, "relay_b", "queue_delay_ns", "udp_to_tun", "p99") for r in rs], 1e6),
        cell([g(r, "relay_a", "latency_ns", "tun_to_udp", "p50") for r in rs], 1e6),
        cell([g(r, "relay_a", "latency_ns", "tun_to_udp", "p99") for r in rs], 1e6),
        cell([g(r, "relay_b", "latency_ns", "udp_to_tun", "p50") for r in rs], 1e6),
        cell([g(r, "relay_b", "latency_ns", "udp_to_tun", "p99") for r in rs], 1e6),
        cell([g(r, "samples", "b_socket", "median") for r in rs], 1e3, 0),
        cell([g(r, "samples", "b_socket", "max") for r in rs], 1e3, 0),
        cell([dsum(r, "drops") for r in rs], 1, 0),
        cell([(g(r, "relay_a", "aqm_marked_tun_ring") or 0) + (g(r, "relay_b", "aqm_marked_udp_socket") or 0) for r in rs], 1, 0),
        cell([g(r, "relay_a", "kernel_drops", "tun_queue") for r in rs], 1, 0),
        cell([r.get("retransmits") for r in rs], 1, 0)))
