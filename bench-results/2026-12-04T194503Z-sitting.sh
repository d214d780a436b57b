#!/bin/bash
# One sitting for issue 21 after the TUN ring's wait was measured from drains, under
# /tmp/tunfwd-net.lock (taken by the caller): old (main 8063389) / --aqm off / observe / codel,
# alternating rounds, in the bottleneck layout of scripts/loaded-latency.
set -u
cd /work/wt-q4
S=${STAMP:?}
R=bench-results/$S
OLD=${OLD:-/tmp/aqm-old}
V="old=@$OLD;off=--aqm off;observe=--aqm observe;codel=--aqm codel"
log() { echo "== $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $*" | tee -a $R-sitting.log; }
export NICE=-20 SECS=6 ROUNDS=3 SAMPLE=1
log "start"
log "A: iperf3 cubic x1 and x4, Not-ECT endpoints"
VARIANTS="$V" TOOLS=iperf3 CCS=cubic STREAMS="1 4" OUT=$R-A-cubic python3 scripts/loaded-latency > $R-A.out 2>&1
log "B: iperf3 bbr x1"
VARIANTS="$V" TOOLS=iperf3 CCS=bbr STREAMS=1 OUT=$R-B-bbr python3 scripts/loaded-latency > $R-B.out 2>&1
log "H: the idle floor of the same layout"
VARIANTS="$V" TOOLS=none CCS=cubic STREAMS=1 OUT=$R-H-idle python3 scripts/loaded-latency > $R-H.out 2>&1
log "T: relay A's TUN ring traced with perf (occupancy, every packet's wait), iperf3 cubic x1"
VARIANTS="$V" TOOLS=iperf3 CCS=cubic STREAMS=1 ROUNDS=1 TRACE_TUN=1 OUT=$R-T-trace python3 scripts/loaded-latency > $R-T.out 2>&1
log "done"
