#!/usr/bin/env python3
"""Markdown tables for BENCHMARKS.md from bench/results.json (python3 bench/tables.py)."""
import json
import os
import sys

r = json.load(open(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results.json")))
m = r["machine"]
print(f"Machine: {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, {m['openssl']}, {m['nginx']}. "
      f"Every figure is the median of {r['runs']} runs, interleaved.\n")
print("### 1. Handshake cost of the cache (one process, memory BIOs)\n")
print("| protocol | OpenSSL internal | shmsesscache | no cache (full) | shmsesscache / internal | shmsesscache / no cache |")
print("|---|---:|---:|---:|---:|---:|")
for p in ("TLS 1.2", "TLS 1.3"):
    v = {x["mode"]: x["median_per_s"] for x in r["handshake"]["handshakes"] if x["protocol"] == p}
    print(f"| {p} | {v['internal']:.0f}/s | {v['shmsesscache']:.0f}/s | {v['none']:.0f}/s | "
          f"**{v['shmsesscache'] / v['internal']:.3f}** | {v['shmsesscache'] / v['none']:.1f}x |")
print("\n### 2. Cache operations: store+lookup pairs per second\n")
print("| data | processes | sharded (ours) | one lock (shmcb/nginx design) | ratio | lock wait per pair, sharded | one lock |")
print("|---|---:|---:|---:|---:|---:|---:|")
for codec in ("copy", "der"):
    for procs in (1, 2, 4):
        v = {x["locking"]: x for x in r["ops"]["ops"] if x["codec"] == codec and x["procs"] == procs}
        s, o = v["sharded"], v["one_lock"]
        print(f"| {'raw copy' if codec == 'copy' else 'i2d/d2i'} | {procs} | {s['median_pairs_per_s'] / 1e3:.0f}k | "
              f"{o['median_pairs_per_s'] / 1e3:.0f}k | **{s['median_pairs_per_s'] / o['median_pairs_per_s']:.2f}** | "
              f"{s['median_wait_ns_per_pair']:.0f} ns | {o['median_wait_ns_per_pair']:.0f} ns |")
print("\n### 3. End to end over loopback\n")
print(f"{r['clients']} client processes (bench/loadgen.c), each reconnecting with its saved session.\n")
print("| workers | protocol | shmsesscache (example server) | nginx shared:SSL:10m | OpenSSL per-process | ours / nginx |")
print("|---:|---|---:|---:|---:|---:|")
for w in (2, 4):
    for p in ("TLS 1.2", "TLS 1.3"):
        v = {x["server"]: x for x in r["end_to_end"] if x["workers"] == w and x["protocol"] == p}
        f = lambda k: f"{v[k]['median_handshakes_per_s']:.0f}/s ({100 * v[k]['median_resumed_fraction']:.1f}% resumed)" if k in v else "-"
        ratio = (f"{v['shmsesscache']['median_handshakes_per_s'] / v['nginx-shared']['median_handshakes_per_s']:.2f}"
                 if "nginx-shared" in v else "-")
        print(f"| {w} | {p} | {f('shmsesscache')} | {f('nginx-shared')} | {f('openssl-per-process')} | **{ratio}** |")
print("\n### 4. Density (sessions held per MiB when the segment is full)\n")
print("| session | DER bytes | slots | shmsesscache | nginx (documented) | shmcb (documented) |")
print("|---|---:|---:|---:|---:|---:|")
for d in r["handshake"]["density"]:
    cc = d["client_cert"]
    print(f"| {d['protocol']}{' + client certificate' if cc else ''} | {d['der_bytes']} | {d['slots']} | **{d['per_mib']:.0f}** | "
          f"{'~2,700' if not cc else 'n/a'} | {'~4,650' if not cc else 'n/a'} |")
print("\n### 5. Lookup cost as the cache fills and grows\n")
print("| | lookup | memory floor (one random 200-byte read) | hits |")
print("|---|---:|---:|---:|")
for x in r["ops"]["fill"]:
    print(f"| 64 MiB, {x['fill_pct']}% full ({x['entries']} sessions) | {x['median_lookup_ns']:.0f} ns | "
          f"{x['median_memory_floor_ns']:.0f} ns | {100 * x['hit_fraction']:.1f}% |")
for x in r["ops"]["size"]:
    print(f"| {x['sessions']:,} sessions ({x['segment_bytes'] / 2**20:.0f} MiB) | {x['median_lookup_ns']:.0f} ns | "
          f"{x['median_memory_floor_ns']:.0f} ns | {100 * x['hit_fraction']:.1f}% |")
if r.get("apache"):
    print("\n### 6. Apache httpd: SSLSessionCache shmsess vs shmcb\n")
    print(f"The same httpd (mpm_prefork, {r['apache'][0]['workers']} children, MaxConnectionsPerChild 0), the same "
          f"load ({r['clients']} loadgen processes), both caches 8 MiB; `none` is mod_ssl without a cache.\n")
    print("| protocol | shmsess | shmcb | none | shmsess / shmcb |")
    print("|---|---:|---:|---:|---:|")
    for p in ("TLS 1.2", "TLS 1.3"):
        v = {x["cache"]: x for x in r["apache"] if x["protocol"] == p}
        f = lambda k: f"{v[k]['median_handshakes_per_s']:.0f}/s ({100 * v[k]['median_resumed_fraction']:.1f}% resumed)"
        print(f"| {p} | {f('shmsess')} | {f('shmcb')} | {f('none')} | "
              f"**{v['shmsess']['median_handshakes_per_s'] / v['shmcb']['median_handshakes_per_s']:.2f}** |")
if r.get("tiers", {}).get("lookup"):
    t = r["tiers"]["lookup"]
    print("\n### 7. Several hosts: the Redis tier\n")
    print(f"Cost of one lookup or store per tier ({t['session_bytes']}-byte session, one process, Redis on "
          "loopback on the same 2 cores; d2i/i2d left out, they are the same on every path):\n")
    print("| operation | ns (median) | vs local hit |")
    print("|---|---:|---:|")
    names = {"local_hit": "local hit (shared memory)", "remote_hit": "remote hit (local miss, GET, unseal, copy in)",
             "miss": "miss in both tiers (local miss, GET nil)",
             "local_store": "local store (shared memory, replacing an entry)"}
    base = t["local_hit"]["median_ns"]
    for k, label in names.items():
        print(f"| {label} | {t[k]['median_ns']:,.0f} | {t[k]['median_ns'] / base:,.0f}x |")
    if "new_session_async" in t:
        print("\nWhat the new-session callback costs (shared-memory store, plus the tier's work on the\n"
              "handshake path), measured alike on warm entries in bursts of 256:\n")
        print("| new-session callback | ns (median) | vs no tier |")
        print("|---|---:|---:|")
        nb = t["new_session_local"]["median_ns"]
        for k, label in (("new_session_local", "no tier (shared memory only)"),
                         ("new_session_async", "tier, write queued for the worker's writer thread (now)"),
                         ("new_session_sync", "tier, seal + `SET` awaited on the handshake (before)")):
            print(f"| {label} | {t[k]['median_ns']:,.0f} | {t[k]['median_ns'] / nb:.2f}x |")
    print(f"\nTwo hosts (example servers, 2 workers each, own segments), {r['clients']} loadgen processes "
          "picking a host at random for every connection:\n")
    print("| protocol | with the tier | without | with / without |")
    print("|---|---:|---:|---:|")
    for p in ("TLS 1.2", "TLS 1.3"):
        v = {x["mode"]: x for x in r["tiers"]["two_hosts"] if x["protocol"] == p}
        f = lambda k: f"{v[k]['median_handshakes_per_s']:.0f}/s ({100 * v[k]['median_resumed_fraction']:.1f}% resumed)"
        print(f"| {p} | {f('tier')} | {f('no tier')} | "
              f"**{v['tier']['median_handshakes_per_s'] / v['no tier']['median_handshakes_per_s']:.2f}** |")
def nginx_table(rows, what, baseline):
    """Handshakes, resumptions and server CPU per cache of one nginx block, and the ratios of
    shmsess to `baseline` (nginx's own shared cache there)."""
    print(f"The same nginx binary ({r['machine']['nginx']}), {rows[0]['workers']} workers, "
          f"`ssl_session_tickets off`, the same load ({r['clients']} loadgen processes); `off` is "
          f"`ssl_session_cache off` (full handshakes only). {what + ' ' if what else ''}CPU: user+system of master and workers "
          "(/proc/PID/stat) over the run.\n")
    print("| protocol | cache | handshakes/s (resumed) | resumed/s | full/s | CPU ms per 1,000 resumed | per run |")
    print("|---|---|---:|---:|---:|---:|---|")
    for x in rows:
        cpu = x["median_cpu_ms_per_1000_resumed"]
        print(f"| {x['protocol']} | {x['cache']} | {x['median_handshakes_per_s']:.0f} "
              f"({100 * x['median_resumed_fraction']:.1f}%) | {x['median_resumed_per_s']:.0f} | "
              f"{x['median_full_per_s']:.0f} | {'-' if cpu is None else f'{cpu:.0f}'} | "
              f"{', '.join(f'{c:.0f}' for c in x.get('cpu_ms_per_1000_resumed_runs', [])) or '-'} |")
    print(f"\n| protocol | shmsess / {baseline}, resumed/s | shmsess / {baseline}, CPU per resumed |")
    print("|---|---:|---:|")
    for p in ("TLS 1.2", "TLS 1.3"):
        v = {x["cache"]: x for x in rows if x["protocol"] == p}
        a, b = v["shmsess"], v[baseline]
        print(f"| {p} | **{a['median_resumed_per_s'] / b['median_resumed_per_s']:.2f}** | "
              f"**{a['median_cpu_ms_per_1000_resumed'] / b['median_cpu_ms_per_1000_resumed']:.2f}** |")


if r.get("nginx"):
    print("\n### 8. nginx: shmsess_session_cache vs ssl_session_cache shared:SSL\n")
    nginx_table(r["nginx"], "", "shared:SSL")

if r.get("threads"):
    t = r["threads"]
    print("\n### 9. Threads of one process\n")
    print(f"Lookups per second through `shmsess_cache_lookup` from N threads of one process ({t['cores']} cores), "
          "and the same with every call behind one process-wide mutex (what the handle check cost before it was "
          "made lock-free). Ratios against 1 thread of the same variant, same run.\n")
    print("| threads | lock-free handle check | ratio vs 1 | behind one mutex | ratio vs 1 | lock-free / mutex |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in t["rows"]:
        print(f"| {row['threads']} | {row['lookups_per_s']:,.0f} | {row['ratio_vs_1']:.2f} | "
              f"{row['with_global_mutex_per_s']:,.0f} | {row['global_mutex_ratio_vs_1']:.2f} | "
              f"**{row['lookups_per_s'] / row['with_global_mutex_per_s']:.2f}** |")

if r.get("nginx_stream"):
    print("\n### 10. nginx stream: shmsess_session_cache vs ssl_session_cache shared:STREAM\n")
    nginx_table(r["nginx_stream"], "The stream server answers and closes (no backend); "
                f"{r.get('nginx_stream_command', r['commands'])}.", "shared:STREAM")

if r.get("capacity"):
    servers = ["nginx shared:SSL", "Apache shmcb", "nginx shmsess", "Apache shmsess"]
    modes = {"1.2": "TLS 1.2", "1.3": "TLS 1.3 (clients)", "1.2+cert": "TLS 1.2 + P-256 client cert"}
    print("\n### 13. Capacity: sessions kept in the same memory (real servers)\n")
    print("K full handshakes on a fresh server, then each kept session offered once by a client that reads the "
          "ServerHello and drops (bench/capacity.c), tickets off. Per MiB: sessions (TLS 1.3: clients) that still "
          "resume after overfilling; in brackets the largest K (2.5% grid) with >= 99% resumed.\n")
    print("| session | size | " + " | ".join(servers) + " |")
    print("|---|---:|" + "---:|" * len(servers))
    for mode, label in modes.items():
        for mib in sorted({x["mib"] for x in r["capacity"]}):
            v = {x["server"]: x for x in r["capacity"] if x["mode"] == mode and x["mib"] == mib}
            if not v:
                continue
            cell = (lambda x: f"{x['per_mib']:,.0f}" + (f" ({x['point_99']:,})" if "point_99" in x else "")
                    if x else "-")
            print(f"| {label} | {mib} MiB | " + " | ".join(cell(v.get(s)) for s in servers) + " |")
