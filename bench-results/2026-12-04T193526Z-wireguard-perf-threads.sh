#!/bin/bash
# Per-thread CPU of both relays (and the machine's idle share) during one 8-s iperf3 TCP run,
# sampled over 4 s from 2 s in; with a third argument, `perf record -g -F 999` of both relays over
# those 4 s too (perf-SYSTEM.data in WORK). The systems, testbed and environment are those of the
# bench script beside it, whose setup it reuses.
#   flock /tmp/tunfwd-net.lock ./2026-12-04T193526Z-wireguard-perf-threads.sh SYSTEM "IPERF ARGS" [perf]
source <(sed -n "/^WORK=/,/^ticks()/p" "$(dirname "$0")/2026-12-04T193526Z-wireguard-perf-bench.sh")
sys=$1; args=$2; doperf=$3
up $sys
ip netns exec wgpb iperf3 -s -1 -D -p 5221 --pidfile $WORK/iperf.pid >/dev/null 2>&1; sleep 0.3
ip netns exec wgpa timeout 40 iperf3 -c 198.19.21.2 -p 5221 -t 8 $args -J > $WORK/iperf-$sys.json 2>/dev/null &
ic=$!
sleep 2
snap() { for p in "${RELAYS[@]}"; do for t in /proc/$p/task/*; do echo "$p $(cat $t/comm) $(awk '{print $14+$15, $39}' $t/stat)"; done; done; awk '/^cpu /{print "idle", $5+$6, "all", $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
snap > $WORK/s0
if [ -n "$doperf" ]; then perf record -g -F 999 -o $WORK/perf-$sys.data -p "${RELAYS[0]},${RELAYS[1]}" -- sleep 4 2>/dev/null >/dev/null; else sleep 4; fi
snap > $WORK/s1
wait $ic
[ -f $WORK/iperf.pid ] && kill $(cat $WORK/iperf.pid) 2>/dev/null; rm -f $WORK/iperf.pid
python3 - <<PY
import json
d=json.load(open('$WORK/iperf-$sys.json'))['end']['sum_received']; print('$sys', '$args', '%.2f Gbit/s' % (d['bits_per_second']/1e9))
a=[l.split() for l in open('$WORK/s0')]; b=[l.split() for l in open('$WORK/s1')]
A={(x[0],x[1]):int(x[2]) for x in a if x[0]!='idle'}; 
for x in b:
    if x[0]=='idle':
        i0=[y for y in a if y[0]=='idle'][0]; print('machine idle %.0f%%' % (100*(int(x[1])-int(i0[1]))/(int(x[3])-int(i0[3]))))
    elif int(x[2])-A.get((x[0],x[1]),0)>0: print(x[0], x[1], 'cpu %.0f%%' % ((int(x[2])-A.get((x[0],x[1]),0))/4), 'on cpu', x[3])
PY
stop_all
