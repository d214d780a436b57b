#!/bin/bash
# Idle CPU of two relays with nothing flowing (issue 21: "idle CPU stays where it is"), old build
# against new, alternating. Run as root from the repository: each round starts both relays of one
# build in a fresh pair of namespaces (one queue each, pinned to CPU 1, as the bottleneck scenario
# runs them), waits 2 s, then reads their CPU ticks over SECS seconds. Prints one line per round.
#   OLD / NEW  directories holding a tunfwd binary (default /tmp/tunfwd-base/target/release and
#              target/release); ROUNDS (3); SECS (10)
set -u
OLD=${OLD:-/tmp/tunfwd-base/target/release}; NEW=${NEW:-target/release}
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-10}
N=ic$$; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 0.5
            ip netns del ${N}a 2>/dev/null; ip netns del ${N}b 2>/dev/null; }
trap cleanup EXIT
ip netns add ${N}a; ip netns add ${N}b
ip link add ${N}va netns ${N}a type veth peer name ${N}vb netns ${N}b
ip -n ${N}a addr add 198.18.23.1/24 dev ${N}va; ip -n ${N}b addr add 198.18.23.2/24 dev ${N}vb
for s in a b; do ip -n ${N}$s link set ${N}v$s up; ip -n ${N}$s link set lo up; done
ticks() { local t=0; for p in "$@"; do [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
for r in $(seq $ROUNDS); do
  for build in old new; do
    dir=$OLD; [ $build = new ] && dir=$NEW
    ip netns exec ${N}a timeout $((SECS + 20)) $dir/tunfwd --peer 198.18.23.2:55555 --dev tia \
        --address 198.19.23.1/24 --queues 1 --cpus 1 --mtu 1420 >/dev/null 2>&1 & pa=$!
    ip netns exec ${N}b timeout $((SECS + 20)) $dir/tunfwd --peer 198.18.23.1:55555 --dev tib \
        --address 198.19.23.2/24 --queues 1 --cpus 1 --mtu 1420 >/dev/null 2>&1 & pb=$!
    PIDS+=($pa $pb)
    sleep 2
    ka=$(pgrep -P $pa); kb=$(pgrep -P $pb)
    t0=$(ticks $ka $kb); s0=$(date +%s.%N); sleep $SECS; t1=$(ticks $ka $kb); s1=$(date +%s.%N)
    kill $pa $pb; wait $pa $pb 2>/dev/null
    echo "round $r $build: $(echo "($t1 - $t0) / $(getconf CLK_TCK) / ($s1 - $s0) * 100 / 2" | bc -l | cut -c1-6)% of a core per relay; load $(cut -d' ' -f1-3 /proc/loadavg)"
  done
done
