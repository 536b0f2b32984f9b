#!/usr/bin/env python3
"""Helpers of benches/fanout/run.sh: units, CPU and link counters, the result rows and the table.

Subcommands (all print to stdout):
  rate RATE                 -> "BITS_PER_SECOND TC_RATE" (RATE: 25mbit, 100Mbit, 1gbit, 500kbit, 25M, 25 = mbit)
  size SIZE                 -> bytes (64M, 1G, 300M, 1500)
  cpu LOG T0 T1             -> JSON {"cpu": mean %, "cpu_peak": %, "cpu_seconds": s} of the whole machine
                               (100 % = every core busy) between T0 and T1, from /proc/stat samples in LOG
  links BEFORE AFTER N      -> JSON {"up": [bytes sent by host i], "down": [bytes received by host i]} for
                               hosts 0..N, from two `ip -s -j link` dumps of the bridge namespace (port v<i>)
  rss PID...                -> JSON {"max": bytes, "pids": {pid: VmHWM bytes}} (peak RSS of each process)
  qpack DEPLOY STATUS       -> JSON summary of `qpack deploy --json` and `qpack status --json` output
  row K=V... [@FILE...]     -> one JSON object: V parsed as JSON if it can be, else a string; @FILE merges
                               the JSON object in FILE
  timeline LOG N BPS T0     -> per 0.5 s: the build host's upload, the nodes' download (share of the rate)
  table RESULTS [--json]    -> the table (or the JSON list of rows) from RESULTS (one JSON object a line)
  summary DIR [ARM]         -> JSON: the qpack row of a kept work directory (run.sh --keep) and what the agents'
                               logs say: QUIC's counters at the build host and the nodes, the chunks asked by
                               kind, when the manifests were in; labelled "arm": ARM if given (benches/fanout/ab.sh)
"""
import json
import os
import re
import sys
from datetime import datetime


def parse_rate(s):
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmg]?)(?:bit|bps|b)?(?:/s)?\s*", s, re.I)
    if not m:
        raise SystemExit(f"bad rate {s!r}: give e.g. 25mbit, 100mbit, 1gbit, 500kbit")
    num, unit = float(m.group(1)), (m.group(2) or "m").lower()
    bps = num * {"k": 1e3, "m": 1e6, "g": 1e9}[unit]
    if bps < 100e3:
        raise SystemExit(f"rate {s!r} is below 100kbit: too slow to be useful")
    return int(bps), f"{int(bps // 1000)}kbit"


def parse_size(s):
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)i?b?\s*", s, re.I)
    if not m:
        raise SystemExit(f"bad size {s!r}: give e.g. 64M, 300M, 1G")
    return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()])


def cpu(log, t0, t1):
    samples = []
    with open(log) as f:
        for line in f:
            p = line.split()
            if len(p) < 6 or p[1] != "cpu":
                continue
            t = float(p[0])
            v = [int(x) for x in p[2:]]
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            total = sum(v[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
            samples.append((t, total, idle))
    # the samples that bracket [t0, t1]
    before = [s for s in samples if s[0] <= t0]
    inside = [s for s in samples if t0 < s[0] < t1]
    after = [s for s in samples if s[0] >= t1]
    win = before[-1:] + inside + after[:1]
    if len(win) < 2:
        return {"cpu": None, "cpu_peak": None, "cpu_seconds": None}
    dt = win[-1][1] - win[0][1]
    busy = dt - (win[-1][2] - win[0][2])
    peak = 0.0
    for a, b in zip(win, win[1:]):
        d = b[1] - a[1]
        if d > 0:
            peak = max(peak, (d - (b[2] - a[2])) / d)
    import os
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "cpu": round(100.0 * busy / dt, 1) if dt else None,
        "cpu_peak": round(100.0 * peak, 1),
        "cpu_seconds": round(busy / hz, 1),
    }


def links(before, after, n):
    def load(p):
        with open(p) as f:
            return {l["ifname"]: l["stats64"] for l in json.load(f)}

    a, b = load(before), load(after)
    up, down = [], []
    for i in range(n + 1):
        k = f"v{i}"
        # seen from the bridge's port: what it receives is what host i sent
        up.append(b[k]["rx"]["bytes"] - a[k]["rx"]["bytes"])
        down.append(b[k]["tx"]["bytes"] - a[k]["tx"]["bytes"])
    return {"up": up, "down": down}


def rss(pids):
    """Peak RSS, CPU seconds and bytes written (wchar) of the processes `pids`."""
    import os
    hz = os.sysconf("SC_CLK_TCK")
    out, written, cpu = {}, {}, 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                cpu += int(fields[11]) + int(fields[12])  # utime, stime
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        out[p] = int(line.split()[1]) * 1024
            with open(f"/proc/{p}/io") as f:
                for line in f:
                    if line.startswith("wchar:"):
                        written[p] = int(line.split()[1])
        except OSError:
            pass
    return {"max": max(out.values()) if out else None, "cpu_seconds": round(cpu / hz, 1), "pids": out,
            "written_max": max(written.values()) if written else None}


def qpack(deploy, status):
    with open(deploy) as f:
        d = json.load(f)
    with open(status) as f:
        s = json.load(f)
    fetched = [o["staged"]["bytes_fetched"] for o in d if o.get("staged")]
    secs = [o["staged"]["seconds"] for o in d if o.get("staged")]
    errors = {o["name"]: o.get("error") for o in d if o.get("error") or not o.get("staged")}
    served = {r["name"]: r["status"]["bytes_served"] for r in s if r.get("status")}
    seed = [r["name"] for r in s if r.get("status") and r["name"] == "build"]
    return {
        "staged": len(fetched),
        "errors": errors,
        "fetched_min": min(fetched) if fetched else None,
        "fetched_max": max(fetched) if fetched else None,
        "staged_seconds_max": max(secs) if secs else None,
        "served_max": max(served.values()) if served else None,
        "served_max_host": max(served, key=served.get) if served else None,
        "seed_served": served.get("build") if seed else None,
    }


def summary(w, arm=None):
    """The qpack row of work directory W, the release's size, and figures from the agents' logs."""
    with open(f"{w}/results.jsonl") as f:
        row = next(r for r in map(json.loads, f) if r.get("method") == "qpack")
    with open(f"{w}/publish.json") as f:
        stored = json.load(f)["bytes_stored"]
    quic = re.compile(r"sent (\d+) bytes \(UDP payloads\).* of which (\d+) lost \(([\d.]+)%.*chunk bytes served (\d+)")
    asked = re.compile(r"chunks asked: (\d+) own stripe and (\d+) others' from sources, (\d+) from the cohort, "
                       r"(\d+) from sources after, (\d+) again in the end game \((\d+) of these")
    manifests = re.compile(r"manifests fetched and stored in ([\d.]+) s")
    stamp = re.compile(r"^(\S+Z) .*(?:staging \S+: \d+ of \d+ chunks to fetch|(fetched \d+ chunks))", re.M)
    extra = re.compile(r"(\d+) ACK frames sent; (\d+) datagrams received; (\d+) bytes of announcements sent")
    seed_loss, node_loss, node_sent, node_served, kinds, mans = None, [], 0, 0, [0] * 6, []
    asks = re.compile(r"GetChunks (\d+) given a slot, (\d+) turned away at once, (\d+) after")
    node_acks, node_ann, starts, ends, seed_asks = [], [], [], [], None
    for name in sorted(os.listdir(f"{w}/hosts")):
        try:
            with open(f"{w}/hosts/{name}/agent.log", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        m = asks.search(text) if name == "build" else None
        if m:
            seed_asks = [int(v) for v in m.groups()]
        for m in quic.finditer(text):
            if name == "build":
                seed_loss = float(m.group(3))
            else:
                node_loss.append(float(m.group(3)))
                node_sent += int(m.group(1))
                node_served += int(m.group(4))
        if name != "build":
            for m in extra.finditer(text):
                node_acks.append(int(m.group(1)))
                node_ann.append(int(m.group(3)))
        for m in asked.finditer(text):
            kinds = [k + int(v) for k, v in zip(kinds, m.groups())]
        mans += [float(m.group(1)) for m in manifests.finditer(text)]
        for m in stamp.finditer(text):
            (ends if m.group(2) else starts).append(datetime.fromisoformat(m.group(1).replace("Z", "+00:00")))
    seed = row.get("seed_served_bytes")
    return {
        **({"arm": arm} if arm is not None else {}),
        "seconds": row.get("seconds"),
        "cpu": row.get("cpu"),
        "agents_cpu_seconds": row.get("agents_cpu_seconds"),
        "seed_served_x_release": round(seed / stored, 3) if seed else None,
        "seed_link_mb": round(row["seed_upload_bytes"] / 1e6, 1) if row.get("seed_upload_bytes") else None,
        "seed_quic_loss_pct": seed_loss,
        # GetChunks at the build host: given a slot, turned away at once, turned away after waiting in line.
        "seed_asks": seed_asks,
        "nodes_quic_loss_pct": round(sum(node_loss) / len(node_loss), 1) if node_loss else None,
        "nodes_sent_x_served": round(node_sent / node_served, 2) if node_served else None,
        "node_ack_frames": round(sum(node_acks) / len(node_acks)) if node_acks else None,
        "node_announced_mb": round(sum(node_ann) / len(node_ann) / 1e6, 2) if node_ann else None,
        # From the first node's chunk list to the last node's last chunk: the transfer, without the install.
        "fetch_span_seconds": round((max(ends) - min(starts)).total_seconds(), 1) if starts and ends else None,
        "manifests_seconds": [min(mans), max(mans)] if mans else None,
        "chunks_asked": dict(zip(["own_stripe", "others_from_sources", "cohort", "sources_after", "end_game",
                                  "given_back"], kinds)),
        "drops": row.get("drops"),
    }


def timeline(log, n, bps, t0):
    """Per 0.5 s sample: the build host's upload and the nodes' mean/min download, as a share of the rate."""
    samples, cur, buf = [], None, []
    with open(log) as f:
        for line in f:
            if line.startswith("T "):
                if cur is not None and buf:
                    try:
                        samples.append((cur, {l["ifname"]: l["stats64"] for l in json.loads("".join(buf))}))
                    except ValueError:
                        pass
                cur, buf = float(line.split()[1]), []
            else:
                buf.append(line)
    if cur is not None and buf:
        try:
            samples.append((cur, {l["ifname"]: l["stats64"] for l in json.loads("".join(buf))}))
        except ValueError:
            pass
    out = []
    for (ta, a), (tb, b) in zip(samples, samples[1:]):
        dt = tb - ta
        cap = bps / 8 * dt
        seed_up = (b["v0"]["rx"]["bytes"] - a["v0"]["rx"]["bytes"]) / cap
        downs = [(b[f"v{i}"]["tx"]["bytes"] - a[f"v{i}"]["tx"]["bytes"]) / cap for i in range(1, n + 1)]
        ups = [(b[f"v{i}"]["rx"]["bytes"] - a[f"v{i}"]["rx"]["bytes"]) / cap for i in range(1, n + 1)]
        out.append(f"{tb - t0:7.2f}  seed up {seed_up:5.2f}  nodes down mean {sum(downs) / n:5.2f} min {min(downs):5.2f}"
                   f"  nodes up mean {sum(ups) / n:5.2f}")
    return "\n".join(out)


def mib(b):
    return "-" if b is None else f"{b / 1048576:.1f} MiB"


def table(path, as_json):
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    hdr = ["method", "N", "rate", "seconds", "x bound", "x own bytes", "max upload (one host)", "CPU mean/peak", "note"]
    lines = []
    for r in rows:
        cpu_s = "-" if r.get("cpu") is None else f"{r['cpu']:.0f}%/{r.get('cpu_peak', 0):.0f}%"
        lines.append([
            r["method"],
            str(r["nodes"]),
            r["rate"],
            "-" if r.get("seconds") is None else f"{r['seconds']:.1f}",
            "-" if r.get("ratio_to_bound") is None else f"{r['ratio_to_bound']:.2f}",
            "-" if r.get("ratio_to_own_bytes") is None else f"{r['ratio_to_own_bytes']:.2f}",
            mib(r.get("max_upload_bytes")),
            cpu_s,
            r.get("note", ""),
        ])
    w = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(hdr)]
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(hdr)).rstrip())
    for l in lines:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(l)).rstrip())


def main(a):
    if not a:
        raise SystemExit(__doc__)
    cmd = a[0]
    if cmd == "rate":
        bps, tc = parse_rate(a[1])
        print(bps, tc)
    elif cmd == "size":
        print(parse_size(a[1]))
    elif cmd == "cpu":
        print(json.dumps(cpu(a[1], float(a[2]), float(a[3]))))
    elif cmd == "links":
        print(json.dumps(links(a[1], a[2], int(a[3]))))
    elif cmd == "rss":
        print(json.dumps(rss(a[1:])))
    elif cmd == "qpack":
        print(json.dumps(qpack(a[1], a[2])))
    elif cmd == "timeline":
        print(timeline(a[1], int(a[2]), float(a[3]), float(a[4])))
    elif cmd == "row":
        row = {}
        for kv in a[1:]:
            if kv.startswith("@"):
                with open(kv[1:]) as f:
                    row.update(json.load(f))
                continue
            k, _, v = kv.partition("=")
            try:
                row[k] = json.loads(v)
            except ValueError:
                row[k] = v
        print(json.dumps(row))
    elif cmd == "table":
        table(a[1], "--json" in a[2:])
    elif cmd == "summary":
        print(json.dumps(summary(a[1], a[2] if len(a) > 2 else None)))
    else:
        raise SystemExit(f"unknown subcommand {cmd}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv[1:])
