#!/bin/bash
# Fan-out benchmark (issue 5): one release to N simulated hosts, each a network namespace with its own link
# shaped to RATE both ways (tc tbf), joined by a bridge in a namespace of its own. In one run, on the same
# generated release:
#   qpack  `qpack deploy` (operator in the build host's namespace) to N agents + the seed agent on the build host
#   http   every node downloads the release exported as one .tar.zst at once from the build host (python3
#          http.server) and checks its BLAKE3 (b3sum; sha256sum if b3sum is missing)
#   aria2  a BitTorrent swarm of that .tar.zst: opentracker and the seeding aria2c on the build host, aria2c on
#          every node (each checks the file like http once done, and keeps seeding until all are done)
#   bound  the release's compressed bytes (what a qpack node must receive) / RATE
# and prints: method, N, rate, seconds (until the last node has it), ratio to the bound, the most bytes any one
# host sent on its link (wire bytes, headers included), and the machine's CPU use during the method (mean/peak,
# 100% = every core busy). --json prints the rows as a JSON list instead.
#
# Usage: benches/fanout/run.sh --nodes N [--rate RATE] [--size SIZE] [--mtu MTU] [--json] [--check]
#                               [--methods qpack,http,aria2] [--scenarios LIST|all] [--dir DIR] [--keep]
#                               [--slow I:RATE]
#   RATE   per-host link rate, each way: 25mbit, 100mbit, 1gbit (a bare number is mbit). Default 25mbit: on
#          2 cores, the rate at which 10 hosts leave the CPU half idle (at 50 hosts every rate is CPU-bound
#          here: the table's CPU column says so)
#   SIZE   uncompressed size of the generated EUPS tree (default 100M: ~44 MB of compressed chunks, a
#          ~36 MB .tar.zst; the http row takes N x that / RATE)
#   MTU    of every link (default 1500, plain Ethernet; 9000 for jumbo frames as on some data-centre LANs:
#          less CPU per byte, but the shapers' queues then hold few packets and losses come in storms)
#   LIST   qpack scenarios after the first deploy: update (release 2, qserv rebuilt), kill (10% of the agents
#          killed half way, then restarted), seed-kill (the seed killed once every chunk left it), liar (a host
#          corrupts what it serves)
#   --check exit 1 unless every qpack run and scenario succeeded (for CI)
#   --slow  node I's link (1..N) shaped to RATE instead (a degraded node); the others' times are in the logs
#   --dir  where the stores go (default /dev/shm when it and the memory have room, else /var/tmp)
#   --keep keep the work directory (logs, JSON) instead of removing it
#
# Needs root (namespaces, veth, tc); without it prints a "skipped" line and exits 0. Uses only addresses in
# 10.77.0.0/16 inside its own namespaces (named qf<PID>…); no traffic leaves them. One kernel setting is
# changed for the run and restored at exit: the ARP table's size (net.ipv4.neigh.default.gc_thresh1-3), which
# is shared by all namespaces and too small (1024 entries) for N hosts that each talk to N others. A trap removes
# exactly what it made (its namespaces by name, its processes by PID/process group) on exit, failure or
# interrupt. Every wait is bounded. Packages (Debian): iproute2, curl, python3; for the aria2 row aria2,
# mktorrent, opentracker; b3sum optional. Missing ones are installed with apt-get once (the only network use;
# --no-install to forbid it); a row whose tools cannot be had is printed as skipped, with the reason.
#
# Diagnostics (environment): QPACK_AGENT_LOG the agents' log filter (default info; e.g.
# info,qpack::net::swarm=trace for the cohort changes and a line every 250 ms about the last 5% of the chunks;
# with --keep the logs stay in hosts/*/agent.log), FANOUT_TIMELINE=FILE the links' use every 0.5 s during the
# deploy, FANOUT_PERF=FILE a whole-machine perf profile of it.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

NODES="" RATE=25mbit SIZE=100M MTU=1500 JSON=0 SCENARIOS="" CHECK=0 METHODS="qpack,http,aria2" DIR="" KEEP=0 INSTALL=1
SLOW=""
while (($#)); do
  case "$1" in
    --nodes) NODES=${2:?--nodes N}; shift 2 ;;
    --rate) RATE=${2:?--rate RATE}; shift 2 ;;
    --size) SIZE=${2:?--size SIZE}; shift 2 ;;
    --mtu) MTU=${2:?--mtu MTU}; shift 2 ;;
    --scenarios) SCENARIOS=${2:?--scenarios LIST}; shift 2 ;;
    --json) JSON=1; shift ;;
    --methods) METHODS=${2:?--methods LIST}; shift 2 ;;
    --dir) DIR=${2:?--dir DIR}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --check) CHECK=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    --slow) SLOW=${2:?--slow I:RATE}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$NODES" =~ ^[0-9]+$ ]] && ((NODES >= 1 && NODES <= 200)) || { echo "run.sh: --nodes N (1 to 200) is required" >&2; exit 2; }
[ -n "$RATE" ] || { echo "run.sh: --rate RATE must not be empty (e.g. 25mbit)" >&2; exit 2; }
[[ "$MTU" =~ ^[0-9]+$ ]] && ((MTU >= 1280 && MTU <= 9000)) || { echo "run.sh: --mtu MTU (1280 to 9000)" >&2; exit 2; }
if [ -n "$SLOW" ]; then
  [[ "$SLOW" =~ ^([0-9]+):(.+)$ ]] && ((BASH_REMATCH[1] >= 1 && BASH_REMATCH[1] <= NODES)) \
    || { echo "run.sh: --slow I:RATE, I a node (1 to $NODES), RATE like 2500kbit" >&2; exit 2; }
fi
for m in ${METHODS//,/ }; do
  case $m in qpack|http|aria2) ;; *) echo "run.sh: --methods: unknown method $m (qpack, http, aria2)" >&2; exit 2 ;; esac
done
has_method() { [[ ",$METHODS," == *",$1,"* ]]; }
[ "$SCENARIOS" = all ] && SCENARIOS="update,kill,seed-kill,liar"
for m in ${SCENARIOS//,/ }; do
  case $m in update|kill|seed-kill|liar) ;; *) echo "run.sh: --scenarios: unknown scenario $m (update, kill, seed-kill, liar, all)" >&2; exit 2 ;; esac
done
has_scenario() { [[ ",$SCENARIOS," == *",$1,"* ]]; }

if [ "$(id -u)" -ne 0 ]; then
  echo "fanout: skipped: needs root (network namespaces, veth, tc); run it as root"
  exit 0
fi
if ! ip netns add "qfprobe$$" 2>/dev/null; then
  echo "fanout: skipped: cannot make network namespaces here (ip netns add failed)"
  exit 0
fi
ip netns del "qfprobe$$"

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PYH="python3 $HERE/fanout.py"
say() { echo "fanout: $*" >&2; }
die() { echo "fanout: error: $*" >&2; exit 1; }

for t in ip tc python3 curl; do command -v $t >/dev/null || die "$t is missing (apt-get install iproute2 curl python3)"; done
PY=$(command -v /usr/bin/python3 || command -v python3)

# --- binaries -----------------------------------------------------------------------------------------------
Q=${QPACK:-$ROOT/target/release/qpack}
MT=${MAKE_TREE:-$ROOT/target/release/examples/make-tree}
if [ ! -x "$Q" ] || [ ! -x "$MT" ]; then
  say "building target/release/qpack and the make-tree example (cargo build --release)"
  (cd "$ROOT" && cargo build --release -q --bin qpack --example make-tree) || die "cargo build --release failed"
fi

# --- packages for the baselines (installed once; the run itself needs no network) ----------------------------
SKIP_ARIA2=""
if has_method aria2; then
  missing=()
  command -v aria2c >/dev/null || missing+=(aria2)
  command -v mktorrent >/dev/null || missing+=(mktorrent)
  command -v opentracker >/dev/null || missing+=(opentracker)
  command -v b3sum >/dev/null || missing+=(b3sum)
  if ((${#missing[@]})) && ((INSTALL)) && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || { timeout 300 apt-get update -qq >/dev/null 2>&1 && timeout 300 apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; } \
      || say "apt-get install ${missing[*]} failed"
  fi
  for t in aria2c mktorrent opentracker; do
    command -v $t >/dev/null || { SKIP_ARIA2="$t not installed (apt-get install aria2 mktorrent opentracker)"; break; }
  done
fi
if command -v b3sum >/dev/null; then HASH="b3sum --no-names"; else HASH="sha256sum"; fi
hashfile() { $HASH "$1" | cut -d' ' -f1; }

# --- parameters ---------------------------------------------------------------------------------------------
read -r BPS TCRATE < <($PYH rate "$RATE")
SLOW_NODE="" SLOW_TC=""   # --slow: that node's link rate, in tc's words
if [ -n "$SLOW" ]; then
  SLOW_NODE=${SLOW%%:*}
  read -r _ SLOW_TC < <($PYH rate "${SLOW#*:}") || true
  [ -n "$SLOW_TC" ] || exit 2
fi
SIZE_BYTES=$($PYH size "$SIZE")
RATE_LABEL="$(awk -v b="$BPS" 'BEGIN { if (b >= 1e9 && b % 1e9 == 0) printf "%dgbit", b/1e9; else if (b >= 1e6) printf "%gmbit", b/1e6; else printf "%gkbit", b/1e3 }')"
BURST=$(( BPS / 8 / 100 ))            # 10 ms at RATE
((BURST < 16384)) && BURST=16384
((BURST < 4 * MTU)) && BURST=$((4 * MTU))
# Each shaper queues 100 ms at RATE, and never fewer than 16 full frames (a switch port's buffer): at low rates
# a 100 ms queue holds two jumbo frames, and every burst is dropped.
QLIMIT=$(( BPS / 8 / 10 ))
((QLIMIT < 16 * MTU)) && QLIMIT=$((16 * MTU))
ID="qf$$"                              # namespace names: ${ID}br (the bridge), ${ID}h0 (build), ${ID}h1..hN
BRNS="${ID}br"
ns() { echo "${ID}h$1"; }
addr() { echo "10.77.$(( $1 / 250 )).$(( $1 % 250 + 1 ))"; }
if ((NODES < 100)); then name() { if (($1 == 0)); then echo build; else printf 'node%02d' "$1"; fi; }
else name() { if (($1 == 0)); then echo build; else printf 'node%03d' "$1"; fi; }; fi
ip netns list | grep -q "^${ID}" && die "namespaces named ${ID}* already exist"

# Work directory: tmpfs when it (and the memory behind it) has room for N installs + repos and the baselines.
NEED=$(( (NODES + 2) * SIZE_BYTES * 17 / 10 + (1 << 30) ))
if [ -z "$DIR" ]; then
  shm_avail=$(df -B1 --output=avail /dev/shm 2>/dev/null | tail -1 || echo 0)
  mem_avail=$(( $(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo) * 1024 ))
  if ((shm_avail > NEED && mem_avail > NEED + (2 << 30))); then DIR=/dev/shm; else DIR=/var/tmp; fi
fi
W="$DIR/fanout-$ID"
mkdir -p "$DIR" && mkdir "$W" || die "cannot make $W"
[ "$(df -B1 --output=avail "$W" | tail -1)" -gt "$NEED" ] || say "warning: $W may be too small (need ~$((NEED >> 20)) MiB)"

# --- cleanup: only what this run made ----------------------------------------------------------------------
PIDS=()      # process-group leaders (every background process is started with setsid)
MADE_NS=()
stop_pids() {  # stop_pids PID...: TERM their process groups, wait up to 5 s, then KILL
  local p k alive
  (($#)) || return 0
  for p in "$@"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  for ((k = 0; k < 50; k++)); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "$@"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
NEIGH_SAVED=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  set +e
  stop_pids "${PIDS[@]}"
  for n in "${MADE_NS[@]}"; do ip netns del "$n" 2>/dev/null; done
  if [ -n "$NEIGH_SAVED" ]; then
    read -r g1 g2 g3 <<<"$NEIGH_SAVED"
    sysctl -qw net.ipv4.neigh.default.gc_thresh3="$g3" net.ipv4.neigh.default.gc_thresh2="$g2" \
      net.ipv4.neigh.default.gc_thresh1="$g1"
  fi
  if ((KEEP)); then say "kept $W"; else rm -rf "$W"; fi
  exit $rc
}
trap cleanup EXIT
trap 'say interrupted; exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
bg() {  # bg LOG CMD...: start CMD in its own process group, remember it; the PID is in $BG
  setsid "${@:2}" >"$1" 2>&1 </dev/null &
  BG=$!
  PIDS+=("$BG")
}
forget() {  # forget PID...: stop them and drop them from PIDS
  local p q keep=()
  stop_pids "$@"
  for q in "${PIDS[@]}"; do
    for p in "$@"; do [ "$p" = "$q" ] && continue 2; done
    keep+=("$q")
  done
  PIDS=("${keep[@]}")
}

# --- CPU sampler: /proc/stat every 0.5 s, bounded to 4 hours ------------------------------------------------
bg "$W/cpu.log" bash -c 'for ((i = 0; i < 28800; i++)); do read -r l </proc/stat; echo "$EPOCHREALTIME $l"; sleep 0.5; done'
CPU_PID=$BG
cpu_of() { $PYH cpu "$W/cpu.log" "$1" "$2"; }   # JSON {cpu, cpu_peak, cpu_seconds}
sample_wait() { sleep 0.6; }                   # let the sampler pass the end of a phase

# --- the network ----------------------------------------------------------------------------------------------
# The ARP table is one for all namespaces: (N+1) hosts with N neighbours each must fit, or some hosts cannot
# reach others ("neighbor table overflow").
NEIGH_NEED=$(( (NODES + 1) * (NODES + 1) * 2 + 256 ))
NEIGH_NOW=$(sysctl -n net.ipv4.neigh.default.gc_thresh3)
if ((NEIGH_NOW < NEIGH_NEED)); then
  NEIGH_SAVED="$(sysctl -n net.ipv4.neigh.default.gc_thresh1) $(sysctl -n net.ipv4.neigh.default.gc_thresh2) $NEIGH_NOW"
  sysctl -qw net.ipv4.neigh.default.gc_thresh3="$NEIGH_NEED" net.ipv4.neigh.default.gc_thresh2="$NEIGH_NEED" \
    net.ipv4.neigh.default.gc_thresh1="$(( NEIGH_NEED / 2 ))" || die "cannot raise the ARP table size (sysctl)"
fi
say "$((NODES + 1)) hosts (build + $NODES nodes), links $RATE_LABEL each way, MTU $MTU, namespaces ${ID}*, work dir $W"
ip netns add "$BRNS"; MADE_NS+=("$BRNS")
ip netns exec "$BRNS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$BRNS" link set lo up
# bridged frames skip iptables (br_netfilter costs CPU per packet; nothing here filters)
ip netns exec "$BRNS" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 \
  net.bridge.bridge-nf-call-arptables=0 2>/dev/null || true
ip -n "$BRNS" link add br0 type bridge
ip -n "$BRNS" link set br0 up
for ((i = 0; i <= NODES; i++)); do
  n=$(ns $i)
  ip netns add "$n"; MADE_NS+=("$n")
  ip netns exec "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip -n "$n" link set lo up
  ip -n "$BRNS" link add "v$i" mtu "$MTU" type veth peer name eth0 netns "$n" mtu "$MTU"
  ip -n "$BRNS" link set "v$i" master br0 up
  ip -n "$n" addr add "$(addr $i)/16" dev eth0
  ip -n "$n" link set eth0 up
  # upload: the host's egress; download: the bridge port's egress towards the host
  r=$TCRATE; [ "$SLOW_NODE" = "$i" ] && r=$SLOW_TC
  tc -n "$n" qdisc add dev eth0 root tbf rate "$r" burst "$BURST" limit "$QLIMIT"
  tc -n "$BRNS" qdisc add dev "v$i" root tbf rate "$r" burst "$BURST" limit "$QLIMIT"
done
H0=$(ns 0)
links_snap() { ip -n "$BRNS" -s -j link show >"$1"; }
tc_drops() {  # packets dropped so far by the shapers: "down D up U (build host up S of P)" (D, U: all hosts)
  local i d=0 u=0 x s=""
  for ((i = 0; i <= NODES; i++)); do
    x=$(tc -n "$BRNS" -s qdisc show dev "v$i" | awk '/dropped/ { gsub(",", ""); print $7; exit }'); d=$((d + ${x:-0}))
    x=$(tc -n "$(ns $i)" -s qdisc show dev eth0 | awk '/dropped/ { gsub(",", ""); print $7, $4 + $7; exit }')
    x=${x:-0 0}; u=$((u + ${x%% *}))
    ((i == 0)) && s=" (build host up ${x%% *} of ${x##* })"
  done
  echo "down $d up $u$s"
}
in_ns() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }
# every host reaches the build host (bounded: 50 tries of 0.2 s each)
for ((i = 1; i <= NODES; i++)); do
  for ((k = 0; k < 50; k++)); do
    in_ns $i timeout 1 bash -c "exec 3<>/dev/tcp/$(addr 0)/9" >/dev/null 2>&1 || true  # makes it ARP
    ip -n "$(ns $i)" neigh show "$(addr 0)" | grep -q lladdr && break
    sleep 0.2
  done
  ((k < 50)) || die "host $i cannot reach the build host"
done

# --- the release ----------------------------------------------------------------------------------------------
REL=fanout-1
mkdir -p "$W/keys" "$W/www" "$W/hosts"
say "generating a $SIZE EUPS tree, publishing it signed (--no-prefix), exporting it as .tar.zst"
"$MT" "$W/tree" --release 1 --size "$SIZE" >/dev/null
"$Q" keys ca --out "$W/keys" >/dev/null 2>&1
PUBLINE=$("$Q" keys publisher --out "$W/keys/publisher.key" 2>/dev/null | grep '^qpack-publisher ')
"$Q" publish "$W/tree" --repo "$W/repo" --release "$REL" --key "$W/keys/publisher.key" --no-prefix --json >"$W/publish.json"
"$Q" export "$REL" --repo "$W/repo" -o "$W/www/$REL.tar.zst" >/dev/null 2>&1
has_scenario update || rm -rf "$W/tree"
STORED=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_stored"])' "$W/publish.json")
RAW=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes"])' "$W/publish.json")
TARZST=$(stat -c %s "$W/www/$REL.tar.zst")
SUM=$(hashfile "$W/www/$REL.tar.zst")
BOUND=$(awk -v b="$STORED" -v r="$BPS" 'BEGIN { printf "%.3f", b * 8 / r }')
say "release: $((RAW >> 20)) MiB in files, $((STORED >> 20)) MiB compressed chunks (what a qpack node receives), .tar.zst $((TARZST >> 20)) MiB"
say "bound: $((STORED >> 20)) MiB / $RATE_LABEL = ${BOUND} s"
RESULTS="$W/results.jsonl"
: >"$RESULTS"
secs_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
ratio() { awk -v s="$1" -v b="$BOUND" 'BEGIN { printf "%.3f", s / b }'; }
own_ratio() { awk -v s="$1" -v b="$2" -v r="$BPS" 'BEGIN { printf "%.3f", s / (b * 8 / r) }'; }   # vs its own bytes
timeout_for() { awk -v x="$1" -v b="$BOUND" 'BEGIN { printf "%d", 120 + x * b }'; }   # 120 s + x bounds
max_of() { $PY -c 'import json,sys; print(max(json.load(open(sys.argv[1]))[sys.argv[2]]))' "$1" "$2"; }
seed_of() { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]][0])' "$1" "$2"; }  # the build host's
node_range() { $PY -c 'import json,sys; d=json.load(open(sys.argv[1]))[sys.argv[2]][1:]; print(min(d), max(d))' "$1" "$2"; }
skip_row() { $PYH row method="$1" nodes="$NODES" rate="$RATE_LABEL" seconds=null ratio_to_bound=null max_upload_bytes=null cpu=null note="skipped: $2" >>"$RESULTS"; }

# --- 1. qpack -----------------------------------------------------------------------------------------------------
Q_READY=0
declare -a AGENT_PID=()
qpack_files() {  # keys, the cluster file and every agent's config (once)
  local i nm
  ((Q_READY)) && return 0
  "$Q" keys issue operator --role operator --ca "$W/keys" --out "$W/keys" >/dev/null 2>&1
  {
    echo 'ca = "keys/ca.pem"'
    echo "publisher_keys = [\"$PUBLINE\"]"
    echo
    echo '[operator]'
    echo 'cert = "keys/operator.pem"'
    echo 'key = "keys/operator.key"'
    for ((i = 0; i <= NODES; i++)); do
      echo
      echo '[[node]]'
      echo "name = \"$(name $i)\""
      echo "address = \"$(addr $i):7401\""
      if ((i == 0)); then echo 'seed = true'; else echo 'groups = ["nodes"]'; fi
    done
  } >"$W/cluster.toml"
  for ((i = 0; i <= NODES; i++)); do
    nm=$(name $i)
    "$Q" keys issue "$nm" --role node --ca "$W/keys" --out "$W/keys" >/dev/null 2>&1
    mkdir -p "$W/hosts/$nm"
  done
  Q_READY=1
}
agent_config() {  # agent_config I [FAULTS_TOML]: (re)writes host I's agent.toml
  local i=$1 nm; nm=$(name "$1")
  {
    echo "name = \"$nm\""
    echo "listen = \"$(addr $i):7401\""
    echo 'cluster = "../../cluster.toml"'
    echo "cert = \"../../keys/$nm.pem\""
    echo "key = \"../../keys/$nm.key\""
    if ((i == 0)); then echo 'repo = "../../repo"'; else echo 'node = "node"'; echo 'prefix = "stack"'; fi
    if [ -n "${2:-}" ]; then echo; echo '[faults]'; echo "$2"; fi
  } >"$W/hosts/$nm/agent.toml"
}
start_agent() {  # start_agent I: host I's agent, in its namespace; its PID in AGENT_PID[I]
  local i=$1 nm; nm=$(name "$1")
  # One thread per pool and agent: N+1 agents share this machine's cores, and idle threads waking each other
  # cost more than they give (on a real node tokio and rayon take one thread per core).
  RUST_LOG=${QPACK_AGENT_LOG:-info} TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-1} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1} \
    bg "$W/hosts/$nm/agent.log" ip netns exec "$(ns $i)" "$Q" agent --config "$W/hosts/$nm/agent.toml"
  AGENT_PID[i]=$BG
}
wait_agents() {  # every agent answers status (bounded: 120 tries, each at most 10 s)
  local k p
  for ((k = 0; k < 120; k++)); do
    if in_ns 0 timeout 10 "$Q" status --cluster "$W/cluster.toml" --json >"$W/status0.json" 2>/dev/null \
      && $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if len(d)==int(sys.argv[2]) and all(r.get("reachable") for r in d) else 1)' "$W/status0.json" $((NODES + 1)); then
      return 0
    fi
    for p in "${AGENT_PID[@]}"; do kill -0 "$p" 2>/dev/null || die "an agent exited at start: see $W/hosts/*/agent.log"; done
    sleep 0.5
  done
  die "agents not all answering status after 120 tries"
}
start_cluster() {  # start_cluster [LIAR_FAULTS]: fresh node roots, every agent up (host 1 lies if given)
  local i
  qpack_files
  rm -rf "$W"/hosts/*/node "$W"/hosts/*/stack
  for ((i = 0; i <= NODES; i++)); do
    if ((i == 1)); then agent_config "$i" "${1:-}"; else agent_config "$i"; fi
    start_agent "$i"
  done
  wait_agents
}
stop_cluster() {
  forget "${AGENT_PID[@]}"
  AGENT_PID=()
}
status_to() { in_ns 0 timeout 30 "$Q" status --cluster "$W/cluster.toml" --json >"$1" 2>/dev/null; }
qstatus() { status_to "$1" || true; }
# status_secs: the slowest of 3 `qpack status` of the whole cluster (issue: under a second for 50 nodes)
status_secs() {
  local k t0 worst=0
  for ((k = 0; k < 3; k++)); do
    t0=$EPOCHREALTIME
    status_to /dev/null || { echo null; return; }
    worst=$(awk -v a="$t0" -v b="$EPOCHREALTIME" -v w="$worst" 'BEGIN { d = b - a; printf "%.3f", (d > w ? d : w) }')
  done
  echo "$worst"
}
# deploy_timed TAG RELEASE [NODES]: qpack deploy with link counters, CPU and (FANOUT_PERF, FANOUT_TIMELINE)
# a profile and a timeline around it; sets DEPLOY_RC, T0, T1; leaves $W/TAG-*.json
deploy_timed() {
  local tag=$1 rel=$2 sel=${3:-} perf_pid="" tl_pid="" args=()
  [ -n "$sel" ] && args=(--nodes "$sel")
  links_snap "$W/$tag-links0.json"
  if [ -n "${FANOUT_PERF:-}" ]; then   # a whole-machine profile of the deploy (perf from linux-perf)
    bg "$W/perf.log" perf record -a -g -F 499 -o "$FANOUT_PERF" -- sleep 3600
    perf_pid=$BG
    sleep 1
  fi
  if [ -n "${FANOUT_TIMELINE:-}" ]; then   # link counters every 0.5 s during the deploy (fanout.py timeline)
    bg "$W/timeline.log" bash -c "for ((i = 0; i < 7200; i++)); do echo \"T \$EPOCHREALTIME\"; ip -n $BRNS -s -j link show; sleep 0.5; done"
    tl_pid=$BG
  fi
  T0=$EPOCHREALTIME
  DEPLOY_RC=0
  in_ns 0 timeout "$(timeout_for 20)" "$Q" deploy "$rel" --cluster "$W/cluster.toml" "${args[@]}" --json \
    >"$W/$tag-deploy.json" 2>"$W/$tag-deploy.log" || DEPLOY_RC=$?
  T1=$EPOCHREALTIME
  links_snap "$W/$tag-links1.json"
  tc_drops >"$W/$tag-drops.txt"
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" 2>/dev/null; sleep 2; forget "$perf_pid"; fi
  if [ -n "$tl_pid" ]; then forget "$tl_pid"; $PYH timeline "$W/timeline.log" "$NODES" "$BPS" "$T0" >"$FANOUT_TIMELINE"; fi
  sample_wait
  qstatus "$W/$tag-status.json"
  $PYH links "$W/$tag-links0.json" "$W/$tag-links1.json" "$NODES" >"$W/$tag-links.json"
  cpu_of "$T0" "$T1" >"$W/$tag-cpu.json"
}
field() { $PY -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print("null" if v is None else v)' "$1" "$2"; }

run_qpack() {
  local secs rmin rmax
  say "qpack: keys, cluster file, $((NODES + 1)) agents"
  start_cluster
  say "qpack: all $((NODES + 1)) agents answer; qpack deploy $REL (timeout $(timeout_for 20) s)"
  deploy_timed q "$REL"
  $PYH rss "${AGENT_PID[@]:1}" >"$W/q-rss.json"
  $PYH rss "${AGENT_PID[0]}" >"$W/q-rss-seed.json"
  if ((DEPLOY_RC != 0)); then
    cat "$W/q-deploy.log" >&2
    say "qpack deploy failed (exit $DEPLOY_RC): logs in $W (--keep keeps them)"
    skip_row qpack "deploy failed (exit $DEPLOY_RC)"
    stop_cluster
    return 0
  fi
  secs=$(secs_between "$T0" "$T1")
  $PYH qpack "$W/q-deploy.json" "$W/q-status.json" >"$W/q-sum.json"
  local st; st=$(status_secs)
  read -r rmin rmax < <(node_range "$W/q-links.json" down)
  $PYH row method=qpack nodes="$NODES" rate="$RATE_LABEL" seconds="$secs" ratio_to_bound="$(ratio "$secs")" \
    ratio_to_own_bytes="$(own_ratio "$secs" "$STORED")" max_upload_bytes="$(max_of "$W/q-links.json" up)" @"$W/q-cpu.json" \
    recv_min_bytes="$rmin" recv_max_bytes="$rmax" \
    max_served_bytes="$(field "$W/q-sum.json" served_max)" seed_served_bytes="$(field "$W/q-sum.json" seed_served)" \
    seed_upload_bytes="$(seed_of "$W/q-links.json" up)" \
    fetched_max_bytes="$(field "$W/q-sum.json" fetched_max)" \
    agent_peak_rss_bytes="$(field "$W/q-rss.json" max)" seed_peak_rss_bytes="$(field "$W/q-rss-seed.json" max)" \
    agents_cpu_seconds="$(field "$W/q-rss.json" cpu_seconds)" agent_written_max_bytes="$(field "$W/q-rss.json" written_max)" seed_cpu_seconds="$(field "$W/q-rss-seed.json" cpu_seconds)" \
    drops="\"$(cat "$W/q-drops.txt")\"" status_seconds="$st" \
    note="peak agent RSS $(( $(field "$W/q-rss.json" max) >> 20 )) MiB; qpack status of all $((NODES + 1)) hosts $st s" >>"$RESULTS"
  say "qpack: $secs s, $(tail -1 "$RESULTS")"
  if has_scenario update; then scenario_update; fi
  stop_cluster
}

# Release 2: qserv rebuilt (the generator's next release of the same tree). Every node fetches the changed chunks
# only: the bytes each received (compressed, as counted by its agent) against what the publish stored anew.
scenario_update() {
  local secs stored2 fmax
  say "update: release 2 (qserv rebuilt), published and deployed to all"
  "$MT" "$W/tree" --release 2 --size "$SIZE" >/dev/null
  "$Q" publish "$W/tree" --repo "$W/repo" --release fanout-2 --key "$W/keys/publisher.key" --no-prefix --json >"$W/publish2.json"
  stored2=$(field "$W/publish2.json" bytes_stored)
  deploy_timed u fanout-2
  ((DEPLOY_RC == 0)) || { cat "$W/u-deploy.log" >&2; skip_row "qpack release 2" "deploy failed (exit $DEPLOY_RC)"; return 0; }
  secs=$(secs_between "$T0" "$T1")
  $PYH qpack "$W/u-deploy.json" "$W/u-status.json" >"$W/u-sum.json"
  fmax=$(field "$W/u-sum.json" fetched_max)
  $PYH row method="qpack release 2" nodes="$NODES" rate="$RATE_LABEL" seconds="$secs" \
    ratio_to_bound="$(awk -v s="$secs" -v b="$stored2" -v r="$BPS" 'BEGIN { printf "%.3f", s / (b * 8 / r) }')" \
    max_upload_bytes="$(max_of "$W/u-links.json" up)" @"$W/u-cpu.json" changed_bytes="$stored2" fetched_max_bytes="$fmax" \
    fetched_over_changed="$(awk -v f="$fmax" -v c="$stored2" 'BEGIN { printf "%.3f", f / c }')" \
    note="changed chunks $((stored2 >> 20)) MiB; most any node fetched: $(awk -v f="$fmax" -v c="$stored2" 'BEGIN { printf "%.2f", f / c }') x that (x bound: of the changed bytes)" >>"$RESULTS"
  say "update: $secs s, $(tail -1 "$RESULTS")"
}

# poll_until SECS PYTHON_CONDITION: polls `qpack status` every 0.5 s until the condition (on the list `d` of
# reports) holds; false if it does not within SECS
poll_until() {
  local k
  for ((k = 0; k < $1 * 2; k++)); do
    local p0=$EPOCHREALTIME
    qstatus "$W/poll.json"
    echo "$p0 $EPOCHREALTIME $(grep -o '"reachable": *true' "$W/poll.json" | wc -l)" >>"$W/polls.log"   # start end reachable
    mkdir -p "$W/polls" && cp "$W/poll.json" "$W/polls/$k.json"
    $PY -c "import json,os,sys
d=json.load(open(sys.argv[1])) if open(sys.argv[1]).read().strip() else []
nodes=[r for r in d if r['name']!='build']
tr=lambda r: ((r.get('status') or {}).get('transfer') or {})
seen=json.load(open(sys.argv[2])) if os.path.exists(sys.argv[2]) else {}
seen.update({r['name']: tr(r) for r in nodes if tr(r)})
json.dump(seen, open(sys.argv[2], 'w'))
sys.exit(0 if ($2) else 1)" "$W/poll.json" "$W/poll-seen.json" && return 0
    sleep 0.5
  done
  return 1
}
deploy_bg() {  # deploy_bg TAG RELEASE: qpack deploy in the background (JSON in TAG-deploy.json); PID in DEPLOY_PID
  T0=$EPOCHREALTIME
  bg "$W/$1-deploy.log" sh -c 'exec ip netns exec "$1" timeout "$2" "$3" deploy "$4" --cluster "$5" --json >"$6"' \
    sh "$H0" "$(timeout_for 30)" "$Q" "$2" "$W/cluster.toml" "$W/$1-deploy.json"
  DEPLOY_PID=$BG
}
wait_deploy() {  # waits for the background deploy; its exit code
  local rc=0
  wait "$DEPLOY_PID" || rc=$?
  T1=$EPOCHREALTIME
  forget "$DEPLOY_PID"
  return $rc
}

# Kill 10% of the agents (kill -9) once the nodes are half way: the others finish; the killed ones, restarted
# (they take their staging up again), finish without fetching again what they had verified.
scenario_kill() {
  local n_kill i k victims=() names=() secs before after total ok=1 note=""
  n_kill=$(( (NODES + 9) / 10 ))
  say "kill: deploy to all, kill -9 $n_kill agents half way, restart them"
  start_cluster
  links_snap "$W/k-links0.json"
  for ((k = 0; k < n_kill; k++)); do
    i=$(( 1 + (k * NODES / n_kill) % NODES ))
    victims+=("$i"); names+=("$(name "$i")")
  done
  deploy_bg k "$REL"
  # half way: every victim answers, is fetching, and has half of its bytes
  local vlist; vlist=$(printf "'%s'," "${names[@]}")
  # (a node busy with its transfer may miss a status poll's deadline: the last progress seen of each counts)
  rm -f "$W/poll-seen.json"
  poll_until "$(timeout_for 2)" "all(seen.get(n,{}).get('phase')=='fetching' and 2*seen[n].get('bytes_done',0) >= seen[n].get('bytes_total',1) > 0 for n in ($vlist))" \
    || { wait_deploy || true; skip_row "qpack 10% killed" "never half way"; stop_cluster; return 0; }
  cp "$W/poll-seen.json" "$W/k-at-kill.json"   # per node, the last transfer seen (a busy node may miss a poll)
  for i in "${victims[@]}"; do kill -KILL "${AGENT_PID[i]}" 2>/dev/null || true; done
  for i in "${victims[@]}"; do wait "${AGENT_PID[i]}" 2>/dev/null || true; done
  say "kill: killed ${names[*]}"
  wait_deploy || true
  # the others staged (a victim may have finished before the kill)
  $PY - "$W/k-deploy.json" "${names[*]}" <<'PY' || ok=0
import json, sys
d = json.load(open(sys.argv[1])); killed = set(sys.argv[2].split())
bad = [o["name"] for o in d if o["name"] not in killed and not o.get("staged")]
if bad:
    print("not staged:", bad, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
  for i in "${victims[@]}"; do
    mv "$W/hosts/$(name "$i")/agent.log" "$W/hosts/$(name "$i")/agent.killed.log"
    forget "${AGENT_PID[i]}"
    start_agent "$i"
  done
  wait_agents
  in_ns 0 timeout "$(timeout_for 20)" "$Q" deploy "$REL" --cluster "$W/cluster.toml" --nodes "$(IFS=,; echo "${names[*]}")" --json \
    >"$W/k-deploy2.json" 2>"$W/k-deploy2.log" || ok=0
  T1=$EPOCHREALTIME
  links_snap "$W/k-links1.json"
  secs=$(secs_between "$T0" "$T1")
  # what each killed node had at the kill, and what its restarted agent still lacked when it took the staging
  # up again: at most what it had not got, plus what arrived in the last commit period (2 s) before the kill
  note=$($PY - "$W/k-at-kill.json" "$W/hosts" "${names[*]}" <<'PY'
import json, re, sys
at = json.load(open(sys.argv[1]))  # name -> the last transfer seen
out, ok = [], True
for n in sys.argv[3].split():
    t = at.get(n, {})
    had, total = t.get("chunks_done", 0), t.get("chunks_total", 0)
    lacked = None
    for line in open(f"{sys.argv[2]}/{n}/agent.log"):
        m = re.search(r"staging \S+: (\d+) of (\d+) chunks to fetch", line)
        if m:
            lacked, total = int(m.group(1)), int(m.group(2)); break
    if lacked is None:
        out.append(f"{n}: had {had}/{total} chunks, installed at restart")
        continue
    ok &= lacked < total and lacked <= total - had + total // 20
    out.append(f"{n}: had {had}/{total} chunks, lacked {lacked} after restart")
print(("" if ok else "REFETCHED; ") + "; ".join(out))
sys.exit(0)
PY
)
  [[ "$note" == REFETCHED* ]] && ok=0
  $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if all(o.get("staged") for o in d) else 1)' "$W/k-deploy2.json" || ok=0
  $PYH links "$W/k-links0.json" "$W/k-links1.json" "$NODES" >"$W/k-links.json"
  $PYH row method="qpack 10% killed" nodes="$NODES" rate="$RATE_LABEL" seconds="$secs" ratio_to_bound="$(ratio "$secs")" \
    max_upload_bytes="$(max_of "$W/k-links.json" up)" cpu=null ok="$([ $ok = 1 ] && echo true || echo false)" \
    note="$([ $ok = 1 ] && echo "others staged; " || echo "FAILED; ")$note" >>"$RESULTS"
  say "kill: $(tail -1 "$RESULTS")"
  stop_cluster
}

# Kill the seed once every chunk has left it at least once (every node reports no chunk that only sources
# have): the swarm finishes without it.
scenario_seed_kill() {
  local secs ok=1 rc=0
  say "seed-kill: deploy to all, kill -9 the seed once every chunk has left it"
  start_cluster
  links_snap "$W/s-links0.json"
  deploy_bg s "$REL"
  rm -f "$W/poll-seen.json"
  poll_until "$(timeout_for 2)" "len(seen)==$NODES and all(v.get('phase') in ('fetching','installing','syncing','staged') and v.get('sources_only',1)==0 for v in seen.values())" \
    || { wait_deploy || true; skip_row "qpack seed killed" "every chunk never left the seed"; stop_cluster; return 0; }
  cp "$W/poll.json" "$W/s-at-kill.json"
  kill -KILL "${AGENT_PID[0]}" 2>/dev/null || true
  wait "${AGENT_PID[0]}" 2>/dev/null || true
  local frac; frac=$($PY -c 'import json,sys; d=[r for r in json.load(open(sys.argv[1])) if r["name"]!="build"]; t=lambda r: (r.get("status") or {}).get("transfer") or {}; print(round(sum(t(r).get("bytes_done",0) for r in d)/max(1,sum(t(r).get("bytes_total",0) for r in d)),2))' "$W/s-at-kill.json")
  say "seed-kill: seed killed with the nodes at $frac of their bytes"
  wait_deploy || { rc=$?; ok=0; }
  links_snap "$W/s-links1.json"
  secs=$(secs_between "$T0" "$T1")
  $PYH links "$W/s-links0.json" "$W/s-links1.json" "$NODES" >"$W/s-links.json"
  $PYH row method="qpack seed killed" nodes="$NODES" rate="$RATE_LABEL" seconds="$secs" ratio_to_bound="$(ratio "$secs")" \
    max_upload_bytes="$(max_of "$W/s-links.json" up)" cpu=null ok="$([ $ok = 1 ] && echo true || echo false)" \
    note="$([ $ok = 1 ] && echo "all staged" || echo "FAILED (exit $rc)"), seed killed with the nodes at $frac of their bytes" >>"$RESULTS"
  say "seed-kill: $(tail -1 "$RESULTS")"
  stop_cluster
}

# One host serves corrupted chunks: every other node still ends with verified bytes, and avoids it.
scenario_liar() {
  local secs ok=1 note
  say "liar: $(name 1) corrupts every chunk it serves; deploy to all"
  start_cluster "corrupt_chunks = true"
  deploy_timed l "$REL"
  ((DEPLOY_RC == 0)) || ok=0
  secs=$(secs_between "$T0" "$T1")
  note=$($PY - "$W/l-deploy.json" "$W/l-status.json" "$(name 1)" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s = json.load(open(sys.argv[2])); liar = sys.argv[3]
staged = sum(1 for o in d if o.get("staged"))
banned = took = 0
for r in s:
    if r["name"] in ("build", liar) or not r.get("status"):
        continue
    p = next((p for p in r["status"]["peers"] if p["name"] == liar), None)
    if p:
        banned += bool(p["banned"]); took += p["chunks_in"]
print(f"{staged}/{len(d)} staged; {banned} nodes banned {liar}; chunks accepted from it: {took}")
PY
)
  # the installed trees of three nodes against the release checked out from the seed's repository
  local chk="$W/l-check" i id bad=0
  id=$("$Q" releases --repo "$W/repo" --json | $PY -c 'import json,sys; print([r["id"] for r in json.load(sys.stdin) if r["name"]==sys.argv[1]][0])' "$REL")
  rm -rf "$chk"; "$Q" checkout "$REL" "$chk" --repo "$W/repo" >/dev/null 2>&1 || bad=1
  for i in 2 $(( (NODES + 1) / 2 )) "$NODES"; do
    ((i >= 2)) || continue
    diff -r --no-dereference "$chk" "$W/hosts/$(name "$i")/node/releases/$id" >/dev/null 2>&1 || bad=$((bad + 1))
  done
  rm -rf "$chk"
  ((bad == 0)) || ok=0
  $PYH row method="qpack with a liar" nodes="$NODES" rate="$RATE_LABEL" seconds="$secs" ratio_to_bound="$(ratio "$secs")" \
    max_upload_bytes="$(max_of "$W/l-links.json" up)" @"$W/l-cpu.json" ok="$([ $ok = 1 ] && echo true || echo false)" \
    note="$note; 3 installed trees $([ $bad = 0 ] && echo "equal the release" || echo "DIFFER ($bad)")" >>"$RESULTS"
  say "liar: $(tail -1 "$RESULTS")"
  stop_cluster
}

# --- 2. central HTTP server ----------------------------------------------------------------------------------
wait_done() {  # wait_done TIMEOUT DIR: until DIR/h1.done..hN.done all exist (bounded); prints the latest time
  local deadline k i missing
  deadline=$(( ${EPOCHREALTIME%.*} + $1 ))
  for ((k = 0; k < $1 * 5 + 10; k++)); do
    missing=0
    for ((i = 1; i <= NODES; i++)); do [ -e "$2/h$i.done" ] || { missing=1; break; }; done
    ((missing)) || break
    ((${EPOCHREALTIME%.*} < deadline)) || break
    sleep 0.2
  done
  ((missing == 0))
}
done_summary() {  # done_summary DIR T0: "SECONDS BAD" from DIR/h*.done
  cat "$1"/h*.done | awk -v t0="$2" '{ if ($1 != "ok") bad++; if ($2 > m) m = $2 } END { printf "%.3f %d\n", m - t0, bad }'
}
run_http() {
  local i k t0 secs bad srv pids=() to port=8080
  to=$(awk -v n="$NODES" -v b="$STORED" -v r="$BPS" 'BEGIN { printf "%d", 120 + 2 * n * b * 8 / r }')
  mkdir -p "$W/http"
  bg "$W/http/server.log" ip netns exec "$H0" "$PY" -m http.server "$port" --bind "$(addr 0)" --directory "$W/www"
  srv=$BG
  for ((k = 0; k < 50; k++)); do
    in_ns 1 curl -sfI -o /dev/null "http://$(addr 0):$port/$REL.tar.zst" && break
    sleep 0.2
  done
  ((k < 50)) || { forget "$srv"; skip_row http "python3 -m http.server did not start"; return 0; }
  say "http: $NODES nodes download $((TARZST >> 20)) MiB at once from the build host (timeout $to s)"
  links_snap "$W/h-links0.json"
  t0=$EPOCHREALTIME
  for ((i = 1; i <= NODES; i++)); do
    mkdir -p "$W/http/h$i"
    FANOUT_TIMEOUT=$to bg "$W/http/h$i.log" ip netns exec "$(ns $i)" "$HERE/client.sh" http \
      "http://$(addr 0):$port/$REL.tar.zst" "$W/http/h$i/$REL.tar.zst" "$SUM" "$W/http/h$i.done"
    pids+=("$BG")
  done
  wait_done "$to" "$W/http" || say "http: not every node finished in $to s"
  links_snap "$W/h-links1.json"
  sample_wait
  forget "${pids[@]}" "$srv"
  rm -rf "$W"/http/h*/
  ls "$W"/http/h*.done >/dev/null 2>&1 || { skip_row http "no node finished"; return 0; }
  read -r secs bad < <(done_summary "$W/http" "$t0")
  $PYH links "$W/h-links0.json" "$W/h-links1.json" "$NODES" >"$W/h-links.json"
  cpu_of "$t0" "$(awk -v a="$t0" -v s="$secs" 'BEGIN { printf "%.3f", a + s }')" >"$W/h-cpu.json"
  read -r rmin rmax < <(node_range "$W/h-links.json" down)
  local done_n; done_n=$(ls "$W"/http/h*.done | wc -l)
  local note=(); ((bad == 0 && done_n == NODES)) || note=(note="$((NODES - done_n)) unfinished, $bad bad")
  $PYH row method=http nodes="$NODES" rate="$RATE_LABEL" seconds="$secs" ratio_to_bound="$(ratio "$secs")" \
    ratio_to_own_bytes="$(own_ratio "$secs" "$TARZST")" max_upload_bytes="$(max_of "$W/h-links.json" up)" @"$W/h-cpu.json" recv_min_bytes="$rmin" recv_max_bytes="$rmax" \
    "${note[@]}" >>"$RESULTS"
  say "http: $secs s, $(tail -1 "$RESULTS")"
}

# --- 3. BitTorrent: aria2c + mktorrent + opentracker ---------------------------------------------------------
run_aria2() {
  local i k t0 secs bad trk seed pids=() to common
  [ -z "$SKIP_ARIA2" ] || { skip_row aria2 "$SKIP_ARIA2"; return 0; }
  to=$(timeout_for 30)
  mkdir -p "$W/bt/tracker"
  mktorrent -l 18 -a "http://$(addr 0):6969/announce" -o "$W/bt/$REL.torrent" "$W/www/$REL.tar.zst" >/dev/null
  # Debian's opentracker is built with a whitelist of info hashes, read after it chroots to -d
  aria2c -S "$W/bt/$REL.torrent" | awk '/^Info Hash:/ { print $3 }' >"$W/bt/tracker/whitelist"
  [ -s "$W/bt/tracker/whitelist" ] || { skip_row aria2 "cannot read the info hash of the torrent"; return 0; }
  bg "$W/bt/tracker.log" ip netns exec "$H0" opentracker -i "$(addr 0)" -p 6969 -P 6969 -d "$W/bt/tracker" -w whitelist
  trk=$BG
  for ((k = 0; k < 50; k++)); do
    in_ns 1 curl -s -o /dev/null "http://$(addr 0):6969/stats" && break
    sleep 0.2
  done
  ((k < 50)) || { forget "$trk"; skip_row aria2 "opentracker did not start (see $W/bt/tracker.log)"; return 0; }
  common=(--enable-dht=false --enable-dht6=false --bt-enable-lpd=false --disable-ipv6=true
    --file-allocation=none --summary-interval=0 --console-log-level=warn --seed-ratio=0.0
    --listen-port=6881 --auto-file-renaming=false --bt-max-peers=0)
  mkdir -p "$W/bt/seed" && cp "$W/www/$REL.tar.zst" "$W/bt/seed/"   # the seed's own copy: aria2c writes where it seeds
  bg "$W/bt/seed.log" ip netns exec "$H0" aria2c "${common[@]}" --dir="$W/bt/seed" --check-integrity=true "$W/bt/$REL.torrent"
  seed=$BG
  for ((k = 0; k < 50; k++)); do
    in_ns 0 ss -ltnH "sport = :6881" | grep -q . && break
    sleep 0.2
  done
  ((k < 50)) || { forget "$trk" "$seed"; skip_row aria2 "the seeding aria2c did not start (see $W/bt/seed.log)"; return 0; }
  sleep 1   # its first announce
  say "aria2: $NODES aria2c + the seed + opentracker (timeout $to s)"
  links_snap "$W/a-links0.json"
  t0=$EPOCHREALTIME
  for ((i = 1; i <= NODES; i++)); do
    mkdir -p "$W/bt/h$i"
    FANOUT_SUM=$SUM FANOUT_DONE="$W/bt/h$i.done" bg "$W/bt/h$i.log" ip netns exec "$(ns $i)" aria2c "${common[@]}" \
      --dir="$W/bt/h$i" --on-bt-download-complete="$HERE/bt-done.sh" "$W/bt/$REL.torrent"
    pids+=("$BG")
  done
  wait_done "$to" "$W/bt" || say "aria2: not every node finished in $to s"
  links_snap "$W/a-links1.json"
  sample_wait
  forget "${pids[@]}" "$seed" "$trk"
  rm -rf "$W"/bt/h*/ "$W/bt/seed"
  ls "$W"/bt/h*.done >/dev/null 2>&1 || { skip_row aria2 "no node finished (see $W/bt/h1.log)"; return 0; }
  read -r secs bad < <(done_summary "$W/bt" "$t0")
  $PYH links "$W/a-links0.json" "$W/a-links1.json" "$NODES" >"$W/a-links.json"
  cpu_of "$t0" "$(awk -v a="$t0" -v s="$secs" 'BEGIN { printf "%.3f", a + s }')" >"$W/a-cpu.json"
  read -r rmin rmax < <(node_range "$W/a-links.json" down)
  local done_n; done_n=$(ls "$W"/bt/h*.done | wc -l)
  local note=(); ((bad == 0 && done_n == NODES)) || note=(note="$((NODES - done_n)) unfinished, $bad bad")
  $PYH row method=aria2 nodes="$NODES" rate="$RATE_LABEL" seconds="$secs" ratio_to_bound="$(ratio "$secs")" \
    ratio_to_own_bytes="$(own_ratio "$secs" "$TARZST")" max_upload_bytes="$(max_of "$W/a-links.json" up)" @"$W/a-cpu.json" recv_min_bytes="$rmin" recv_max_bytes="$rmax" \
    "${note[@]}" >>"$RESULTS"
  say "aria2: $secs s, $(tail -1 "$RESULTS")"
}

if has_method qpack; then run_qpack; fi
if has_method qpack && has_scenario kill; then scenario_kill; fi
if has_method qpack && has_scenario seed-kill; then scenario_seed_kill; fi
if has_method qpack && has_scenario liar; then scenario_liar; fi
if has_method http; then run_http; fi
if has_method aria2; then run_aria2; fi
$PYH row method=bound nodes="$NODES" rate="$RATE_LABEL" seconds="$BOUND" ratio_to_bound=1 \
  max_upload_bytes=null cpu=null note="$((STORED >> 20)) MiB compressed / rate" >>"$RESULTS"
cp "$RESULTS" "$W/results.jsonl.done"
CHECK_FAILED=0
if ((CHECK)); then
  $PY - "$RESULTS" <<'PY' || CHECK_FAILED=1
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bad = [r["method"] for r in rows if r["method"].startswith("qpack") and (r.get("seconds") is None or r.get("ok") is False)]
for m in bad:
    print(f"fanout: check failed: {m}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
fi

if ((JSON)); then
  $PYH table "$RESULTS" --json
else
  echo "release $REL: $((RAW >> 20)) MiB of files, $((STORED >> 20)) MiB compressed chunks, .tar.zst $((TARZST >> 20)) MiB; $NODES nodes, $RATE_LABEL per host each way, MTU $MTU; $(nproc) cores"
  $PYH table "$RESULTS"
  echo "x own bytes: seconds / (the bytes that method moves to a node / rate): qpack its compressed chunks, http and aria2 the .tar.zst"
  echo "seconds: until the last node has it (qpack: staged = fetched, verified, installed; http/aria2: downloaded, BLAKE3 checked)"
  echo "max upload: wire bytes sent by the busiest host on its link; CPU: whole machine, 100% = all cores busy"
fi
((CHECK_FAILED == 0))
