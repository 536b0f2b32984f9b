#!/bin/bash
# aria2c's --on-bt-download-complete hook for benches/fanout/run.sh (aria2c calls it with GID, file count, path).
exec "$(dirname "$0")/client.sh" bt-hook "$@"
