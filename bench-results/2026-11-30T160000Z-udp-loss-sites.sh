#!/bin/bash
# UDP 64 B, one flow, iperf3 through tunfwd at its defaults (issue 11, item 3): where the datagrams
# are lost. Run as root from the repository after `cargo build --release`. B is pinned from the last
# CPU down, as in the bench's testbed. RATE is iperf3's --bitrate (0: as fast as it can send).
# Prints iperf3's figures, the drops on relay A's TUN (ip -s link, TX dropped), every UDP socket's
# drop count in B's namespace (ss -uam, skmem d) 3 s into the run, and the relays' drop counters.
# MODE=vxlan: the kernel's VXLAN instead of tunfwd.
# ARGS: extra tunfwd options for both relays (e.g. "--tx-queue-len 4000").
set -u
B=${B:-target/release}
OUT=$(mktemp -d)
PA=; PB=; PS=; PC=
cleanup() { kill $PC $PS $PA $PB 2>/dev/null; sleep 0.5; ip netns del ul-a 2>/dev/null; ip netns del ul-b 2>/dev/null; rm -rf "$OUT"; }
trap cleanup EXIT
ip netns add ul-a; ip netns add ul-b
ip link add ul-va type veth peer name ul-vb
ip link set ul-va netns ul-a; ip link set ul-vb netns ul-b
ip -n ul-a addr add 198.18.9.1/24 dev ul-va; ip -n ul-b addr add 198.18.9.2/24 dev ul-vb
for n in a b; do ip -n ul-$n link set ul-v$n up; ip -n ul-$n link set lo up; done
if [ "${MODE:-}" = vxlan ]; then
  ip -n ul-a link add vx0 type vxlan id 42 remote 198.18.9.2 local 198.18.9.1 dstport 4789 dev ul-va
  ip -n ul-b link add vx0 type vxlan id 42 remote 198.18.9.1 local 198.18.9.2 dstport 4789 dev ul-vb
  for n in a b; do ip -n ul-$n link set vx0 mtu 1420 up; done
  ip -n ul-a addr add 198.19.9.1/24 dev vx0; ip -n ul-b addr add 198.19.9.2/24 dev vx0
else
  ip netns exec ul-a $B/tunfwd --peer 198.18.9.2:55555 --mtu 1420 --address 198.19.9.1/24 --stats-json "$OUT/a.json" ${ARGS:-} >/dev/null 2>&1 & PA=$!
  ip netns exec ul-b $B/tunfwd --peer 198.18.9.1:55555 --mtu 1420 --address 198.19.9.2/24 --stats-json "$OUT/b.json" --cpus 1,0 ${ARGS:-} >/dev/null 2>&1 & PB=$!
fi
sleep 1.5
ip netns exec ul-b timeout 20 iperf3 -s -1 -B 198.19.9.2 >/dev/null 2>&1 & PS=$!
sleep 0.5
( sleep 3; ip netns exec ul-b ss -uanm > "$OUT/ss.txt" ) &
ip netns exec ul-a timeout 15 iperf3 -c 198.19.9.2 -u -l 64 -b "${RATE:-0}" -t 4 --json > "$OUT/iperf.json" & PC=$!
# CPU of each process from 1 s to 3 s into the run (utime + stime, /proc/PID/stat), in % of one CPU.
ticks() { [ -n "${1:-}" ] && awk '{print $14+$15}' /proc/$1/stat 2>/dev/null || echo 0; }
sleep 1
SENDER=$(pgrep -P $PC iperf3); RECEIVER=$(pgrep -P $PS iperf3)
declare -A T0; for p in $SENDER $RECEIVER $PA $PB; do T0[$p]=$(ticks $p); done
sleep 2
HZ=$(getconf CLK_TCK); share() { if [ -n "${1:-}" ]; then echo $(( ($(ticks $1) - ${T0[$1]}) * 100 / HZ / 2 )); else echo -; fi; }
echo "CPU from 1 s to 3 s, % of one CPU: sender $(share $SENDER), relay A $(share $PA), relay B $(share $PB), receiver $(share $RECEIVER)"
wait $PC
wait $PS
[ -n "$PA" ] && echo "relay A's TUN, transmit: $(ip -n ul-a -s link show tunfwd0 | awk '/TX:/{getline; print $2" packets, "$4" dropped"}')"
echo "UDP sockets in B (local address, drops): $(awk '/^UNCONN|^ESTAB/{a=$4} /skmem/{match($0,/d[0-9]+\)/); print a" "substr($0,RSTART+1,RLENGTH-2)}' "$OUT/ss.txt" | tr '\n' ';')"
[ -n "$PA" ] && { kill -TERM $PA $PB; wait $PA $PB 2>/dev/null; }
OUT="$OUT" python3 - <<'PY'
import json, os
out = os.environ["OUT"]
e = json.load(open(f"{out}/iperf.json"))["end"]
s = e["sum"]
print(f"iperf3: sent {e['sum_sent'].get('packets', s.get('packets'))}, lost {s['lost_packets']} ({s['lost_percent']:.1f}%), "
      f"received {e['sum_received']['bytes'] / 64 / e['sum_received']['seconds']:.0f} pps")
for h in ("ab" if os.path.exists(f"{out}/a.json") else ""):
    q = json.load(open(f"{out}/{h}.json"))["queues"]
    tot = lambda k: sum(x.get(k, 0) for x in q)
    drops = sum(sum(x['drops'].values()) for x in q)
    print(f"relay {h.upper()}: tun_rx {tot('tun_rx_packets')} udp_tx {tot('udp_tx_packets')} udp_rx {tot('udp_rx_packets')} "
          f"tun_tx {tot('tun_tx_packets')} drops {drops} kernel_drops {json.load(open(f'{out}/{h}.json')).get('kernel_drops')}")
PY
