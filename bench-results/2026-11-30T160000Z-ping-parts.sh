#!/bin/bash
# Round trips through tunfwd, part by part (issue 11, item 4). Run as root from the repository after
# `cargo build --release`. One pair of namespaces, relays at their defaults (B pinned from the last
# CPU down, as the bench's testbed does), iputils ping every 10 ms for up to 5 s, optionally under one
# iperf3 TCP stream. Prints ping's avg/p50/p99, the stream's rate, and the relays' CPU during the ping.
#   IDLE=1        no iperf3 stream
#   MODE=vxlan    the kernel's VXLAN instead of tunfwd
#   ARGS_A/ARGS_B extra tunfwd options (e.g. "--queues 1 --busy-poll 10000")
#   CPUS_A/CPUS_B the relays' --cpus (B: 1,0 unless given); PING_CPU, CLIENT_CPU, SERVER_CPU pin
#                 ping and the iperf3 client (on A) and server (on B) with taskset -c
#   CC=cubic      the endpoints' TCP congestion control (default: the host's)
#   CHRT=-f       move both relays to SCHED_FIFO priority 1 once they run (chrt -a -f -p 1 PID)
set -u
B=${B:-target/release}
OUT=$(mktemp -d)
ARGS_A=${ARGS_A:-}; ARGS_B=${ARGS_B:-}
PA=; PB=; PS=; PC=
cleanup() { kill $PC $PS $PA $PB 2>/dev/null; sleep 0.5; ip netns del pp-a 2>/dev/null; ip netns del pp-b 2>/dev/null; rm -rf "$OUT"; }
trap cleanup EXIT
ip netns add pp-a; ip netns add pp-b
ip link add pp-va type veth peer name pp-vb
ip link set pp-va netns pp-a; ip link set pp-vb netns pp-b
ip -n pp-a addr add 198.18.9.1/24 dev pp-va; ip -n pp-b addr add 198.18.9.2/24 dev pp-vb
for n in a b; do ip -n pp-$n link set pp-v$n up; ip -n pp-$n link set lo up; done
[ -n "${CC:-}" ] && for n in a b; do ip netns exec pp-$n sysctl -qw net.ipv4.tcp_congestion_control=$CC; done
if [ "${MODE:-}" = vxlan ]; then
  ip -n pp-a link add vx0 type vxlan id 42 remote 198.18.9.2 local 198.18.9.1 dstport 4789 dev pp-va
  ip -n pp-b link add vx0 type vxlan id 42 remote 198.18.9.1 local 198.18.9.2 dstport 4789 dev pp-vb
  for n in a b; do ip -n pp-$n link set vx0 mtu 1420 up; done
  ip -n pp-a addr add 198.19.9.1/24 dev vx0; ip -n pp-b addr add 198.19.9.2/24 dev vx0
else
  ip netns exec pp-a $B/tunfwd --peer 198.18.9.2:55555 --mtu 1420 --address 198.19.9.1/24 ${CPUS_A:+--cpus $CPUS_A} $ARGS_A >/dev/null 2>"$OUT/a.err" & PA=$!
  ip netns exec pp-b $B/tunfwd --peer 198.18.9.1:55555 --mtu 1420 --address 198.19.9.2/24 --cpus ${CPUS_B:-1,0} $ARGS_B >/dev/null 2>"$OUT/b.err" & PB=$!
fi
sleep 1.5
if [ -n "${CHRT:-}" ]; then chrt -a $CHRT -p 1 $PA; chrt -a $CHRT -p 1 $PB; fi
echo '{"end":{"sum_received":{"bits_per_second":0}}}' > "$OUT/tcp.json"
if [ -z "${IDLE:-}" ]; then
  ip netns exec pp-b ${SERVER_CPU:+taskset -c $SERVER_CPU} timeout 20 iperf3 -s -1 -B 198.19.9.2 >/dev/null 2>&1 & PS=$!
  sleep 0.5
  ip netns exec pp-a ${CLIENT_CPU:+taskset -c $CLIENT_CPU} timeout 15 iperf3 -c 198.19.9.2 -t 5 --json > "$OUT/tcp.json" & PC=$!
  sleep 0.7
  # The stream's window and round trip, from the sender, 2 s into the ping.
  ( sleep 2; ip netns exec pp-a ss -tin dst 198.19.9.2 > "$OUT/ss.txt" ) &
fi
cpu() { local t=0; for p in $PA $PB; do [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
C0=$(cpu); S0=$(date +%s.%N)
ip netns exec pp-a ${PING_CPU:+taskset -c $PING_CPU} timeout 10 ping -i 0.01 -c 300 -w 5 198.19.9.2 > "$OUT/ping.txt"
C1=$(cpu); S1=$(date +%s.%N)
[ -n "$PC" ] && wait $PC
[ -s "$OUT/ss.txt" ] && grep -o "cwnd:[0-9]*\|unacked:[0-9]*\|rtt:[0-9.]*/[0-9.]*\|minrtt:[0-9.]*" "$OUT/ss.txt" | tr '\n' ' ' && echo
OUT="$OUT" C0=$C0 C1=$C1 S0=$S0 S1=$S1 HZ=$(getconf CLK_TCK) python3 - <<'PY'
import json, os, re
out = os.environ["OUT"]
t = sorted(float(m.group(1)) * 1000 for m in re.finditer(r"time=([\d.]+) ms", open(f"{out}/ping.txt").read()))
gbit = json.load(open(f"{out}/tcp.json"))["end"]["sum_received"]["bits_per_second"] / 1e9
cpu = (int(os.environ["C1"]) - int(os.environ["C0"])) / int(os.environ["HZ"]) / (float(os.environ["S1"]) - float(os.environ["S0"])) * 100 / 2
if t:
    print(f"ping n={len(t)} avg={sum(t)/len(t):.0f} p50={t[len(t)//2]:.0f} p99={t[int(len(t)*0.99)-1]:.0f} us; "
          f"tcp {gbit:.2f} Gbit/s; relays' CPU during the ping {cpu:.1f}% of a core each")
else:
    print("no replies")
PY
