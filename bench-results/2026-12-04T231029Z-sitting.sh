#!/bin/bash
# One sitting for issue 21 after the TUN ring's figure stopped growing (merge 1d3eb6d, branch
# aqm-drain), under /tmp/tunfwd-net.lock (taken by the caller), run from the checkout's root:
# the build before it (main 6be377f, in /tmp/aqm-old) against this one (/tmp/aqm-new), --aqm off,
# observe and codel, alternating rounds, in the bottleneck layout of scripts/loaded-latency.
set -u
S=${STAMP:?}
R=bench-results/$S
OLD=${OLD:-/tmp/aqm-old} NEW=${NEW:-/tmp/aqm-new}
export BIN=$NEW
V="old-codel=@$OLD --aqm codel;off=@$NEW --aqm off;codel=@$NEW --aqm codel"
log() { echo "== $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $*" | tee -a $R-sitting.log; }
export NICE=-20 SECS=6 ROUNDS=3 SAMPLE=1
log "start"
log "A: iperf3 cubic x1 and x4, Not-ECT endpoints"
VARIANTS="$V" TOOLS=iperf3 CCS=cubic STREAMS="1 4" OUT=$R-A-cubic python3 scripts/loaded-latency > $R-A.out 2>&1
log "B: iperf3 bbr x1"
VARIANTS="$V" TOOLS=iperf3 CCS=bbr STREAMS=1 OUT=$R-B-bbr python3 scripts/loaded-latency > $R-B.out 2>&1
log "T: relay A's TUN ring traced with perf against the relay's own figure (observe), iperf3 cubic x1"
VARIANTS="old-observe=@$OLD --aqm observe;observe=@$NEW --aqm observe" TOOLS=iperf3 CCS=cubic STREAMS=1 ROUNDS=2 TRACE_TUN=1 OUT=$R-T-trace python3 scripts/loaded-latency > $R-T.out 2>&1
log "done"
