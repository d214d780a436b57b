#!/bin/bash
# One sitting: raw tunfwd, tunfwd --wireguard, upstream wireguard-go, alternating, ROUNDS rounds.
# Each: ping idle (20 x 50 ms), iperf3 TCP 1 stream 5 s, 4 streams 5 s (A -> B), in namespaces
# m20a/m20b over veth. Kills only the PIDs it started.
cd /tmp/m20
T=/work/wt-m20/target/release/tunfwd
G=/work/shared/peers/wireguard-go
ROUNDS=${ROUNDS:-2}
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill $p 2>/dev/null; done; for p in "${PIDS[@]}"; do wait $p 2>/dev/null; done; PIDS=(); ip netns del m20a 2>/dev/null; ip netns del m20b 2>/dev/null; }
trap stop_all EXIT
up() {
  ./setup.sh
  case $1 in
  raw)
    ip netns exec m20a $T --peer 198.18.20.2:55555 --address 198.19.20.1/24 > r-a.log 2>&1 & PIDS+=($!)
    ip netns exec m20b $T --peer 198.18.20.1:55555 --address 198.19.20.2/24 --cpus 1,0 > r-b.log 2>&1 & PIDS+=($!) ;;
  wg)
    ip netns exec m20a $T --wireguard --dev m20t --config a.conf --address 198.19.20.1/24 > w-a.log 2>&1 & PIDS+=($!)
    ip netns exec m20b $T --wireguard --dev m20u --config b.conf --address 198.19.20.2/24 --cpus 1,0 > w-b.log 2>&1 & PIDS+=($!) ;;
  wggo)
    ip netns exec m20a $G -f m20g > g-a.log 2>&1 & PIDS+=($!)
    ip netns exec m20b $G -f m20h > g-b.log 2>&1 & PIDS+=($!)
    sleep 1
    ip netns exec m20a wg setconf m20g a.conf; ip netns exec m20b wg setconf m20h b.conf
    ip -n m20a addr add 198.19.20.1/24 dev m20g; ip -n m20a link set m20g mtu 1420 up
    ip -n m20b addr add 198.19.20.2/24 dev m20h; ip -n m20b link set m20h mtu 1420 up ;;
  esac
  sleep 1.5
  for i in $(seq 20); do ip netns exec m20a ping -c1 -W1 198.19.20.2 >/dev/null 2>&1 && break; sleep 0.2; done
}
tcp() {
  ip netns exec m20b iperf3 -s -1 -D -p 5211 --pidfile /tmp/m20/iperf.pid >/dev/null 2>&1; sleep 0.3
  ip netns exec m20a timeout 30 iperf3 -c 198.19.20.2 -p 5211 -t 5 -P $1 -J 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' 2>/dev/null || echo fail
  [ -f /tmp/m20/iperf.pid ] && kill $(cat /tmp/m20/iperf.pid) 2>/dev/null; rm -f /tmp/m20/iperf.pid
}
echo "# load average before: $(cat /proc/loadavg)"
echo "round system ping_idle_avg_ms tcp1_gbps tcp4_gbps cpu_s_per_gb_tcp1"
for r in $(seq $ROUNDS); do
  for sys in raw wg wggo; do
    up $sys
    p=$(ip netns exec m20a ping -c 20 -i 0.05 -W 1 198.19.20.2 | awk -F/ '/rtt/ {print $5}')
    c0=$(awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat)
    t1=$(tcp 1)
    c1=$(awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat)
    t4=$(tcp 4)
    cpu=$(python3 -c "t=float('$t1') if '$t1'!='fail' else 0; print('%.2f' % (((int('$c1')-int('$c0'))/100)/(t*5/8) if t else 0))")
    echo "$r $sys $p $t1 $t4 $cpu"
    stop_all
  done
done
echo "# load average after: $(cat /proc/loadavg)"
