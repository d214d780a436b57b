#!/bin/bash
# ./demo's layout (nothing pinned, default queues): old (main 8063389, --aqm off by default)
# against new with --aqm codel, alternating, 3 rounds, under /tmp/tunfwd-net.lock.
cd /work/wt-q4
S=${STAMP:?}
OUT=bench-results/$S-F-demo.txt
for r in 1 2 3; do
  order="old new"; [ $(( r % 2 )) = 0 ] && order="new old"
  for b in $order; do
    if [ $b = old ]; then d=/tmp/aqm-old; a=""; else d=target/release; a="--aqm codel"; fi
    echo "### round $r $b ($d/tunfwd-demo, TUNFWD_ARGS='$a') $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT
    TUNFWD_ARGS="$a" timeout 120 $d/tunfwd-demo 2>&1 | grep -E 'ping|bulk|CPU|drops|queue' >> $OUT
  done
done
