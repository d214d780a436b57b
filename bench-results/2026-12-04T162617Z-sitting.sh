#!/bin/bash
# One sitting for issue 21's measurements, under /tmp/tunfwd-net.lock (taken by the caller).
set -u
cd /work/wt-m21
S=${STAMP:?}
R=bench-results/$S
OLD=/tmp/q-old/target/release
log() { echo "== $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $*" | tee -a $R-sitting.log; }
export NICE=-20 SECS=6 ROUNDS=3 SAMPLE=1
log "start"
log "A: bottleneck, iperf3, cubic+bbr, 1+4 streams, Not-ECT endpoints: old / codel / off"
VARIANTS="old=@$OLD;codel=--aqm codel;off=--aqm off" TOOLS=iperf3 CCS="cubic bbr" STREAMS="1 4" \
  OUT=$R-A-iperf3 python3 scripts/loaded-latency > $R-A.out 2>&1
log "B: bottleneck, tunload cubic 1+4"
VARIANTS="old=@$OLD;codel=--aqm codel;off=--aqm off" TOOLS=tunload CCS="cubic" STREAMS="1 4" \
  OUT=$R-B-tunload python3 scripts/loaded-latency > $R-B.out 2>&1
log "C: bottleneck, iperf3 cubic 1+4, ECN endpoints"
ECN=1 VARIANTS="old=@$OLD;codel=--aqm codel;off=--aqm off" TOOLS=iperf3 CCS="cubic" STREAMS="1 4" \
  OUT=$R-C-ecn python3 scripts/loaded-latency > $R-C.out 2>&1
log "H: idle ping floor in the bottleneck layout (TOOLS=none)"
VARIANTS="old=@$OLD;codel=--aqm codel;off=--aqm off" TOOLS=none CCS="cubic" STREAMS="1" \
  OUT=$R-H-idle-ping python3 scripts/loaded-latency > $R-H.out 2>&1
log "D: step 3 variants, iperf3 cubic 1, Not-ECT"
VARIANTS="codel=--aqm codel;codel-txq32=--aqm codel --tx-queue-len 32;codel-sock512k=--aqm codel --socket-buffer 512K;off-txq32=--aqm off --tx-queue-len 32" \
  TOOLS=iperf3 CCS="cubic" STREAMS="1" OUT=$R-D-variants python3 scripts/loaded-latency > $R-D.out 2>&1
log "F: ./demo default layout, old / new alternating, 3 rounds"
for r in 1 2 3; do
  order="old new"; [ $(( r % 2 )) = 0 ] && order="new old"
  for b in $order; do
    if [ $b = old ]; then d=/tmp/q-old-demo; else d=target/release; fi
    echo "### round $r $b ($d) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $R-F-demo.txt
    timeout 120 $d/tunfwd-demo 2>&1 | grep -E 'ping|bulk|CPU:|drops:|queue (tun|udp)' >> $R-F-demo.txt
  done
done
log "G: idle CPU"
OLD=$OLD NEW=target/release ROUNDS=3 SECS=10 bash bench-results/2026-12-04T160000Z-idle-cpu.sh > $R-G-idle.txt 2>&1
log "done"
