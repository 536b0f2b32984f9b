#!/bin/bash
# One simulated host's side of the baselines of benches/fanout/run.sh (run inside the host's namespace).
#   client.sh http URL OUT SUM DONE   download URL to OUT, check its BLAKE3 (or SHA-256) against SUM, then write
#                                     "ok|bad SECONDS" to DONE (SECONDS: the clock when checked)
#   client.sh bt-hook GID N PATH      aria2c's --on-bt-download-complete hook: check PATH against $FANOUT_SUM,
#                                     write "ok|bad SECONDS" to $FANOUT_DONE
hash() { if command -v b3sum >/dev/null; then b3sum --no-names "$1"; else sha256sum "$1" | cut -d' ' -f1; fi; }
case "$1" in
  http)
    url=$2 out=$3 sum=$4 done=$5
    # A dropped download starts again (at 50 hosts and 5 Mbit/s python's http.server dropped 27 of 50
    # connections and curl without retries gave up; that server ignores ranges, so no resuming).
    if curl -sf --retry 20 --retry-all-errors --retry-delay 1 --max-time "${FANOUT_TIMEOUT:-3600}" \
      -o "$out" "$url" && [ "$(hash "$out")" = "$sum" ]; then
      st=ok; else st=bad; fi
    echo "$st $EPOCHREALTIME" >"$done.tmp" && mv "$done.tmp" "$done" ;;
  bt-hook)
    path=$4
    if [ "$(hash "$path")" = "$FANOUT_SUM" ]; then st=ok; else st=bad; fi
    echo "$st $EPOCHREALTIME" >"$FANOUT_DONE.tmp" && mv "$FANOUT_DONE.tmp" "$FANOUT_DONE" ;;
  *) echo "usage: client.sh http URL OUT SUM DONE | client.sh bt-hook GID N PATH" >&2; exit 2 ;;
esac
