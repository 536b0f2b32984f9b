#!/bin/bash
# Chunk-size experiment behind ARCHITECTURE.md "Chunk sizes and zstd level": for each average chunk size,
# cold publish of generated release 2 (1 GiB) and publish of release 3 (qserv rebuilt), zstd level 1.
# Run: benches/chunk-sizes.sh   (needs ~2 GiB free under $QPACK_BENCH_DIR, default /tmp/qpack-chunk-sizes)
cd "$(dirname "$0")/.." && cargo build --release --examples -q
Q=$PWD/target/release/qpack; MT=$PWD/target/release/examples/make-tree
D=${QPACK_BENCH_DIR:-/tmp/qpack-chunk-sizes}; rm -rf $D; mkdir -p $D
for kib in 16 32 64 128; do
  rm -rf $D/tree $D/repo
  $MT $D/tree --release 2 --size 1G >/dev/null
  $Q init --repo $D/repo --chunk-kib $kib >/dev/null
  a=$($Q publish $D/tree --repo $D/repo --release r2 --prefix /qserv/stack --level 1 --json)
  $MT $D/tree --release 3 --size 1G >/dev/null
  b=$($Q publish $D/tree --repo $D/repo --release r3 --prefix /qserv/stack --level 1 --json)
  python3 -c "
import json,sys
a=json.loads('''$a'''); b=json.loads('''$b''')
print('avg %3d KiB: cold %.2fs stored %.1f MiB chunks %d | next %.2fs new %.1f MiB stored, %d new chunks' % ($kib, a['seconds'], a['bytes_stored']/2**20, a['chunks_new'], b['seconds'], b['bytes_stored']/2**20, b['chunks_new']))"
done
