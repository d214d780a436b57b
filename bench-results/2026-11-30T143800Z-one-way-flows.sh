#!/bin/bash
# One-way UDP flows at --queues 2: which worker handles the flow at each relay, and the rate.
set -u
B=/work/main/target/release
cleanup() { kill $PA $PB 2>/dev/null; sleep 0.5; ip netns del owa 2>/dev/null; ip netns del owb 2>/dev/null; }
trap cleanup EXIT
ip netns add owa; ip netns add owb
ip link add owva type veth peer name owvb
ip link set owva netns owa; ip link set owvb netns owb
ip -n owa addr add 198.18.9.1/24 dev owva; ip -n owb addr add 198.18.9.2/24 dev owvb
ip -n owa link set owva up; ip -n owb link set owvb up; ip -n owa link set lo up; ip -n owb link set lo up
ip netns exec owa $B/tunfwd --peer 198.18.9.2:55555 --queues 2 --cpus 0,1 --mtu 1420 --address 198.19.9.1/24 --stats-json /tmp/owa.json --stats-interval 1 2>/tmp/owa.err & PA=$!
ip netns exec owb $B/tunfwd --peer 198.18.9.1:55555 --queues 2 --cpus 1,0 --mtu 1420 --address 198.19.9.2/24 --stats-json /tmp/owb.json --stats-interval 1 2>/tmp/owb.err & PB=$!
sleep 1.5
for port in 41001 41002 41003 41004 41005 41006; do
  ip netns exec owb timeout 10 $B/tunload udp-sink --listen 198.19.9.2:7000 --seconds 6 > /tmp/ows.out 2>&1 & PS=$!
  sleep 0.3
  ip netns exec owa timeout 10 $B/tunload udp-flood --to 198.19.9.2:7000 --seconds 3 --from-port $port > /tmp/owf.out 2>&1
  wait $PS
  sleep 1.2
  echo "port $port sink: $(tr '\n' ' ' < /tmp/ows.out | cut -c1-200)"
  python3 -c "
import json
for h in ['owa','owb']:
    r=json.load(open('/tmp/'+h+'.json'))
    print(' ', h, [(q['queue'], q['tun_rx_packets'], q['udp_rx_packets']) for q in r['queues']])
"
done
kill -TERM $PA $PB; wait $PA $PB 2>/dev/null
python3 - <<'PY'
import json
for h in ['owa','owb']:
    r=json.load(open(f'/tmp/{h}.json'))
    print(h, [(q['queue'], q['tun_rx_packets'], q['udp_rx_packets']) for q in r['queues']])
PY
