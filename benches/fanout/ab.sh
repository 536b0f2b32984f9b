#!/bin/bash
# A/B runs of the fan-out lab: qpack alone, arms alternating (A B A B …), so that a change is compared with
# what it replaces in the same hours of this shared machine (run to run, ±3 s at 50 nodes and 5 Mbit/s; a
# gain smaller than that needs several pairs). One line per run, then each arm's runs side by side.
#
# Usage: benches/fanout/ab.sh [--pairs K] [--nodes N] [--rate RATE] [--out FILE] ARM ARM [ARM...]
#   ARM    the environment of one arm: space-separated VAR=VALUE words, e.g. QPACK=/tmp/qpack-before to run
#          another build (run.sh takes the binary from $QPACK), or a switch a build under test reads;
#          "-" for none
#   K      rounds (default 2; at most 20), N nodes (default 50), RATE per link (default 5mbit)
#   FILE   where each run's summary goes, one JSON object a line (default ab-<time>.jsonl in the current
#          directory): the arm, and `fanout.py summary` of the run (deploy seconds, CPU, what the build host
#          served and sent and the GetChunks it turned away, QUIC's losses, a node's ACK frames and
#          announcement bytes, the span from the first node's chunk list to the last node's last chunk, the
#          chunks asked by kind, the links' drops)
#
# The agents log at info, with the swarm's cohort lines at debug (QPACK_AGENT_LOG, unless an arm sets it);
# each run's work directory is removed once summarized. Needs root, as run.sh does: without it, one
# "skipped" line. Build every binary first: a compile during a run takes the cores the lab measures.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
PAIRS=2 NODES=50 RATE=5mbit OUT=""
ARMS=()
while (($#)); do
  case "$1" in
    --pairs) PAIRS=${2:?--pairs K}; shift 2 ;;
    --nodes) NODES=${2:?--nodes N}; shift 2 ;;
    --rate) RATE=${2:?--rate RATE}; shift 2 ;;
    --out) OUT=${2:?--out FILE}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) [ "$1" = - ] && { ARMS+=("$1"); shift; continue; }
        echo "ab.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) ARMS+=("$1"); shift ;;
  esac
done
[[ "$PAIRS" =~ ^[0-9]+$ ]] && ((PAIRS >= 1 && PAIRS <= 20)) || { echo "ab.sh: --pairs K (1 to 20)" >&2; exit 2; }
((${#ARMS[@]} >= 2)) || { echo "ab.sh: give at least two arms" >&2; usage >&2; exit 2; }
for arm in "${ARMS[@]}"; do
  [ "$arm" = - ] && continue
  for word in $arm; do
    [[ "$word" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || { echo "ab.sh: arm '$arm': '$word' is not VAR=VALUE" >&2; exit 2; }
  done
done
if [ "$(id -u)" != 0 ]; then
  echo "ab.sh: skipped: needs root (network namespaces, veth, tc); run it as root"
  exit 0
fi

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-ab-$(date +%Y%m%d-%H%M%S).jsonl}
LOG=$(mktemp /tmp/ab-run.XXXXXX)
trap 'rm -f "$LOG"' EXIT
say() { echo "ab: $*" >&2; }

for ((r = 1; r <= PAIRS; r++)); do
  for arm in "${ARMS[@]}"; do
    words=()
    [ "$arm" != - ] && read -ra words <<<"$arm"
    say "round $r/$PAIRS, arm '$arm'"
    rc=0
    env QPACK_AGENT_LOG="${QPACK_AGENT_LOG:-info,qpack::net::swarm=debug}" "${words[@]}" \
      "$HERE/run.sh" --nodes "$NODES" --rate "$RATE" --methods qpack --no-install --keep >/dev/null 2>"$LOG" || rc=$?
    w=$(sed -n 's/^fanout: kept //p' "$LOG" | tail -1)
    if ((rc == 0)) && [ -n "$w" ] && [ -f "$w/results.jsonl" ]; then
      python3 "$HERE/fanout.py" summary "$w" "$arm" | tee -a "$OUT" || say "the summary of this run failed; its rows: $(cat "$w/results.jsonl")"
    else
      say "arm '$arm' failed (exit $rc): $(tail -3 "$LOG" | tr '\n' ' ')"
      echo "{\"arm\": \"$arm\", \"failed\": $rc}" >>"$OUT"
    fi
    # Only what run.sh said it kept, and only a fan-out work directory.
    if [ -n "$w" ] && [[ "$(basename "$w")" == fanout-qf* ]]; then rm -rf "$w"; fi
  done
done

python3 - "$OUT" "${ARMS[@]}" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for arm in dict.fromkeys(sys.argv[2:]):
    runs = [r for r in rows if r.get("arm") == arm and "seconds" in r]
    secs = sorted(r["seconds"] for r in runs)
    seed = [r["seed_served_x_release"] for r in runs if r.get("seed_served_x_release")]
    cpu = [r["agents_cpu_seconds"] for r in runs if r.get("agents_cpu_seconds")]
    print(f"{arm:40s} runs {len(runs)}  seconds {' '.join(f'{s:.1f}' for s in secs) or '-'}  "
          f"seed x release {' '.join(f'{s:.3f}' for s in seed) or '-'}  agents CPU-s {' '.join(f'{c:.0f}' for c in cpu) or '-'}")
PY
