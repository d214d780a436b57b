#!/bin/bash
# WireGuard-mode cost sitting: alternating systems round by round in namespaces wgpa/wgpb over one
# veth (198.18.21.1/24 - .2), overlay 198.19.21.1/24 - .2. Per system and round: 50 idle pings at
# 20 ms; iperf3 TCP A -> B 5 s with 1 stream and with 4; iperf3 UDP 64 B (-b 0) 5 s. For each
# TCP/UDP run: CPU seconds of each relay process (utime+stime, /proc/PID/stat, all threads) over
# the GB moved. Kills only the PIDs it started; deletes its namespaces on exit.
#   flock /tmp/tunfwd-net.lock env ROUNDS=2 SYSTEMS="raw wgold wgnew wggo" ./bench.sh
#   OLD: tunfwd built at main 8063389 (before), NEW: tunfwd built at wg-perf (after),
#   G: upstream wireguard-go; WORK: a directory for keys, configs, logs and stats JSON.
WORK=${WORK:-/tmp/wgp}
mkdir -p "$WORK" && cd "$WORK" || exit 1
OLD=${OLD:-$WORK/tunfwd-old}
NEW=${NEW:-$WORK/tunfwd-new}
# Keys and `wg setconf` files for both ends, made once (mode 600: tunfwd refuses others).
if [ ! -f a.conf ]; then
  umask 077
  for s in a b; do wg genkey > $s.key; wg pubkey < $s.key > $s.pub; done
  printf '[Interface]\nPrivateKey = %s\nListenPort = 51830\n\n[Peer]\nPublicKey = %s\nAllowedIPs = 198.19.21.2/32\nEndpoint = 198.18.21.2:51831\n' "$(cat a.key)" "$(cat b.pub)" > a.conf
  printf '[Interface]\nPrivateKey = %s\nListenPort = 51831\n\n[Peer]\nPublicKey = %s\nAllowedIPs = 198.19.21.1/32\nEndpoint = 198.18.21.1:51830\n' "$(cat b.key)" "$(cat a.pub)" > b.conf
fi
G=${G:-/work/shared/peers/wireguard-go}
ROUNDS=${ROUNDS:-2}
SYSTEMS=${SYSTEMS:-raw wgold wgnew wggo}
SECS=${SECS:-5}
PIDS=()
RELAYS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill $p 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait $p 2>/dev/null; done
  PIDS=(); RELAYS=()
  ip netns del wgpa 2>/dev/null; ip netns del wgpb 2>/dev/null
}
trap stop_all EXIT
setup() {
  ip netns del wgpa 2>/dev/null; ip netns del wgpb 2>/dev/null
  ip netns add wgpa && ip netns add wgpb || return 1
  ip link add wgpva type veth peer name wgpvb || return 1
  ip link set wgpva netns wgpa; ip link set wgpvb netns wgpb
  ip -n wgpa addr add 198.18.21.1/24 dev wgpva; ip -n wgpb addr add 198.18.21.2/24 dev wgpvb
  for n in wgpa wgpb; do ip -n $n link set lo up; ip netns exec $n sysctl -qw net.ipv4.tcp_congestion_control=bbr 2>/dev/null; done
  ip -n wgpa link set wgpva up; ip -n wgpb link set wgpvb up
}
up() {
  setup || return 1
  local sys=$1 extra=${MTU:+--mtu $MTU} xa="" xb="--cpus 1,0"
  # SYSTEM-q1: one queue each, A's worker on CPU 0 and B's on CPU 1.
  case $sys in *-q1) xa="--queues 1 --cpus 0"; xb="--queues 1 --cpus 1"; sys=${sys%-q1};; esac
  case $sys in
  raw*)
    [ $sys = raw1420 ] && extra="--mtu 1420"
    ip netns exec wgpa $NEW --peer 198.18.21.2:55555 --address 198.19.21.1/24 --dev wgpt $xa $extra --stats-json $WORK/$sys-a.json > $WORK/$sys-a.log 2>&1 & PIDS+=($!); RELAYS+=($!)
    ip netns exec wgpb $NEW --peer 198.18.21.1:55555 --address 198.19.21.2/24 --dev wgpu $xb $extra --stats-json $WORK/$sys-b.json > $WORK/$sys-b.log 2>&1 & PIDS+=($!); RELAYS+=($!) ;;
  wgold|wgnew)
    local T=$NEW; [ $sys = wgold ] && T=$OLD
    ip netns exec wgpa $T --wireguard --dev wgpt --config a.conf --address 198.19.21.1/24 $xa $extra --stats-json $WORK/$sys-a.json > $WORK/$sys-a.log 2>&1 & PIDS+=($!); RELAYS+=($!)
    ip netns exec wgpb $T --wireguard --dev wgpu --config b.conf --address 198.19.21.2/24 $xb $extra --stats-json $WORK/$sys-b.json > $WORK/$sys-b.log 2>&1 & PIDS+=($!); RELAYS+=($!) ;;
  wggo)
    ip netns exec wgpa env WG_PROCESS_FOREGROUND=1 $G -f wgpg > $WORK/g-a.log 2>&1 & PIDS+=($!); RELAYS+=($!)
    ip netns exec wgpb env WG_PROCESS_FOREGROUND=1 $G -f wgph > $WORK/g-b.log 2>&1 & PIDS+=($!); RELAYS+=($!)
    sleep 1
    ip netns exec wgpa wg setconf wgpg a.conf; ip netns exec wgpb wg setconf wgph b.conf
    ip -n wgpa addr add 198.19.21.1/24 dev wgpg; ip -n wgpa link set wgpg mtu 1420 up
    ip -n wgpb addr add 198.19.21.2/24 dev wgph; ip -n wgpb link set wgph mtu 1420 up ;;
  esac
  sleep 1.5
  for i in $(seq 20); do ip netns exec wgpa ping -c1 -W1 198.19.21.2 >/dev/null 2>&1 && break; sleep 0.2; done
}
# utime+stime in clock ticks of a process (all its threads).
ticks() { awk '{print $14+$15}' /proc/$1/stat 2>/dev/null || echo 0; }
# iperf3 run: args; prints "bytes seconds" (receiver's) or "0 1".
run_iperf() {
  ip netns exec wgpb iperf3 -s -1 -D -p 5221 --pidfile $WORK/iperf.pid >/dev/null 2>&1; sleep 0.3
  ip netns exec wgpa timeout $((SECS + 20)) iperf3 -c 198.19.21.2 -p 5221 -t $SECS -J "$@" 2>/dev/null \
    | python3 -c 'import json,sys; d=json.load(sys.stdin)["end"]["sum_received"]; print(d["bytes"], d["seconds"])' 2>/dev/null || echo "0 1"
  [ -f $WORK/iperf.pid ] && kill $(cat $WORK/iperf.pid) 2>/dev/null; rm -f $WORK/iperf.pid
}
# One measured run: prints "rate cpuA cpuB" (rate Gbit/s for TCP, pps for UDP 64; cpu s/GB).
measured() {
  local kind=$1; shift
  local a0=$(ticks ${RELAYS[0]}) b0=$(ticks ${RELAYS[1]})
  read bytes secs < <(run_iperf "$@")
  local a1=$(ticks ${RELAYS[0]}) b1=$(ticks ${RELAYS[1]})
  python3 - <<PY
b=$bytes; s=$secs; hz=$(getconf CLK_TCK)
gb=b/1e9
rate = (b*8/s/1e9) if "$kind"=="tcp" else (b/64/s)
fa=(($a1-$a0)/hz/gb) if gb else 0; fb=(($b1-$b0)/hz/gb) if gb else 0
print(("%.2f" if "$kind"=="tcp" else "%.0f") % rate, "%.2f %.2f" % (fa, fb))
PY
}
echo "# $(date -u +%FT%TZ) load average before: $(cat /proc/loadavg)"
echo "round system ping_avg_ms tcp1_gbps cpuA cpuB tcp4_gbps cpuA cpuB udp64_rx_pps cpuA cpuB load1"
for r in $(seq $ROUNDS); do
  for sys in $SYSTEMS; do
    up $sys || { echo "$r $sys setup-failed"; stop_all; continue; }
    p=$(ip netns exec wgpa ping -c 50 -i 0.02 -W 1 198.19.21.2 | awk -F/ '/rtt/ {print $5}')
    t1=$(measured tcp)
    t4=$(measured tcp -P 4)
    u=$([ -n "$NOUDP" ] && echo "- - -" || measured udp -u -l 64 -b 0)
    echo "$r $sys $p $t1 $t4 $u $(cut -d' ' -f1 /proc/loadavg)"
    stop_all
    for s in a b; do [ -f $sys-$s.json ] && mv $sys-$s.json round$r-$sys-$s.json; done
  done
done
echo "# $(date -u +%FT%TZ) load average after: $(cat /proc/loadavg)"
