#!/bin/bash
# iperf3 -P N (TCP, A to B) through tunfwd: where packets are dropped (issue 11, item 2). Run as root
# from the repository after `cargo build --release`. Relays at their defaults plus ARGS (both), B
# pinned from the last CPU down as in the bench. Prints the rate, the sender's retransmissions, and
# each relay's own report of the kernel's drops (TUN queue ring, UDP socket) and its own drops.
#   P=64          parallel streams
#   ARGS=...      extra tunfwd options for both relays (e.g. "--queues 1 --tx-queue-len 500")
set -u
B=${B:-target/release}
OUT=$(mktemp -d)
P=${P:-64}
PA=; PB=; PS=
cleanup() { kill $PS $PA $PB 2>/dev/null; sleep 0.5; ip netns del ms-a 2>/dev/null; ip netns del ms-b 2>/dev/null; rm -rf "$OUT"; }
trap cleanup EXIT
ip netns add ms-a; ip netns add ms-b
ip link add ms-va type veth peer name ms-vb
ip link set ms-va netns ms-a; ip link set ms-vb netns ms-b
ip -n ms-a addr add 198.18.9.1/24 dev ms-va; ip -n ms-b addr add 198.18.9.2/24 dev ms-vb
for n in a b; do ip -n ms-$n link set ms-v$n up; ip -n ms-$n link set lo up; done
ip netns exec ms-a $B/tunfwd --peer 198.18.9.2:55555 --mtu 1420 --address 198.19.9.1/24 --stats-json "$OUT/a.json" ${ARGS:-} >/dev/null 2>&1 & PA=$!
ip netns exec ms-b $B/tunfwd --peer 198.18.9.1:55555 --mtu 1420 --address 198.19.9.2/24 --stats-json "$OUT/b.json" --cpus 1,0 ${ARGS:-} >/dev/null 2>&1 & PB=$!
sleep 1.5
ip netns exec ms-b timeout 20 iperf3 -s -1 -B 198.19.9.2 >/dev/null 2>&1 & PS=$!
sleep 0.5
ip netns exec ms-a nstat -n >/dev/null
ip netns exec ms-a timeout 15 iperf3 -c 198.19.9.2 -P "$P" -t 4 --json > "$OUT/iperf.json"
wait $PS
RETRANS=$(ip netns exec ms-a nstat | awk '/TcpRetransSegs/{print $2}')
kill -TERM $PA $PB; wait $PA $PB 2>/dev/null
OUT="$OUT" P="$P" RETRANS="${RETRANS:-0}" python3 - <<'PY'
import json, os
out = os.environ["OUT"]
gbit = json.load(open(f"{out}/iperf.json"))["end"]["sum_received"]["bits_per_second"] / 1e9
line = f"{os.environ['P']} streams: {gbit:.2f} Gbit/s, sender retransmitted {os.environ['RETRANS']} segments"
for h in "ab":
    r = json.load(open(f"{out}/{h}.json"))
    own = sum(sum(q["drops"].values()) for q in r["queues"])
    line += f"; relay {h.upper()}: kernel drops {r['kernel_drops']}, own drops {own}"
print(line)
PY
