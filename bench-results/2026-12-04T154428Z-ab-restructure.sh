#!/bin/bash
# The script behind 2026-12-04T154428Z-ab-restructure-quiet.md: alternating e2e rounds of
# A = a1469ba (built in a clean copy: `git archive a1469ba | tar -x -C /tmp/before`, then
# `cargo build --release --bins` there) and B = the restructured tunfwd, each beside the same e2e,
# tunload and simpletun (built from this tree). Rounds 1-3 ran with SECONDS_PER=3, 4-7 with 5:
#   ROUNDS="1 2 3" SECONDS_PER=3 bench-results/2026-12-04T154428Z-ab-restructure.sh
#   ROUNDS="4 5 6 7" SECONDS_PER=5 KEEP=1 bench-results/2026-12-04T154428Z-ab-restructure.sh
set -u
cd "$(dirname "$0")/.."
if [ -z "${KEEP:-}" ]; then
  rm -rf /tmp/abA /tmp/abB /tmp/about; mkdir -p /tmp/abA /tmp/abB /tmp/about
  for d in A B; do cp target/release/e2e target/release/tunload target/release/simpletun /tmp/ab$d/; done
  cp /tmp/before/target/release/tunfwd /tmp/abA/tunfwd
  cp target/release/tunfwd /tmp/abB/tunfwd
fi
for round in ${ROUNDS:-1 2 3}; do
  for d in A B; do
    echo "== round $round system $d $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    BENCH_ROUNDS=1 BENCH_SECONDS=${SECONDS_PER:-3} BENCH_SYSTEMS=tunfwd-default \
      BENCH_SCENARIOS=iperf-tcp1,iperf-tcp4,iperf-udp64-1,ping-loaded \
      BENCH_OUT=/tmp/about/$d$round timeout 300 /tmp/ab$d/e2e 2>&1 | grep -E "^\|" | head -20
  done
done
