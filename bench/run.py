#!/usr/bin/env python3
"""Strata benchmarks: run Strata and its peer side by side in one run and print ratios.

    cargo build --release && python3 bench/run.py [fio|snapshots|deep|cluster|pause|resync|migrate|slowreader|all] [--size 2G] [--runtime 20]

Each section starts its own `strata server` (release build) on loopback ports in a temporary
directory on the filesystem holding --dir (default: bench/results/tmp), and tears it down after.

- fio: fio's nbd engine against Strata and against `qemu-nbd -f raw --shared=8
  --cache=writeback --aio=threads` exporting a raw file on the same filesystem. Both are first
  preconditioned by a full sequential write. Jobs: sequential write and read 1 MiB QD16, random
  write and read 4 KiB QD32. Prints IOPS, MB/s, p99 latency and the Strata/qemu-nbd ratio, and
  the Strata server's peak RSS (VmHWM) over the run.
- snapshots: snapshot-create latency (p50, p99 of 100 API calls, measured by the client) on a
  1 GiB volume with 256 MiB written and a 32 GiB volume with 8 GiB written (the fill ends with
  a FLUSH). For scale, the same client's latency for `GET /healthz` is printed too.
- deep: random-read 4 KiB QD32 IOPS on a preconditioned volume with 0 snapshots, then again with
  64 snapshots in the stack (each layer holding 4 MiB of scattered 4 KiB writes).
- cluster: the fio jobs on a 3-server cluster (three `strata server` processes, one `default`
  cluster; the client talks to the first server) with a replicas=1 and a replicas=2 volume, next to
  qemu-nbd on one raw file and a single-server Strata, all in one run.
  Also prints the CPU time per I/O of the servers and of fio. With --pin, fio, the first
  server, the single server and qemu-nbd run on CPU 0 and the other two servers on CPU 1, as if
  those were other machines.
- pause: the write latency a client sees while snapshots are taken: fio random write 4 KiB QD4
  on a replicas=2 volume of the 3-server cluster for a fixed time, once alone and once while 100
  snapshots are taken; max and p99 completion latency of both runs.
- resync: a replicas=2 volume of the 3-server cluster, fully written, loses its third server
  (SIGKILL) for 30 s while fio writes at a fixed rate; then the server returns. Prints the chunks
  written during the outage (missed-chunk marks), the chunk-layers the resync copied (from the
  servers' `strata_resync_chunk_layers_total`), and the time until the volume is healthy again,
  for two volume sizes.
- slowreader: the slow-reader attack of issue 10 item 8 on one server with a 1 GiB volume written
  in full: N raw NBD connections (NBD_OPT_GO, simple replies, a 4 KiB SO_RCVBUF) each send 2,000
  READs of 32 MiB and never read a reply, and hold for --runtime seconds (longer while the
  probes still wait). Prints the server's RSS before, its peak (VmHWM, reset before the attack
  where the kernel allows it, and the highest VmRSS sampled every 0.1 s), whether a new client is still served during the attack (a 4 KiB
  READ over a new connection and `qemu-io -c 'read 0 1M'`, with their latency), and whether the
  server answers NBD and /healthz after the attackers hang up. Runs with 2 connections (the
  issue's case), with 8 (more than the server-wide budget holds), and with 8 against a server
  started with `--nbd-idle-timeout 5s`.
Machines here are noisy: compare the ratios, not the absolute numbers.
"""
import argparse, json, os, re, resource, shutil, signal, socket, statistics, struct, subprocess, sys, tempfile, threading, time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATA = os.environ.get("STRATA_BIN") or os.path.join(ROOT, "target", "release", "strata")


def pinned(args, cpus):
    """`args` run on the CPUs `cpus` (a taskset list such as "0" or "0,1"); as is when None."""
    return ["taskset", "-c", cpus, *args] if cpus else list(args)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Strata:
    def __init__(self, base, join=None, name=None, cpus=None, flags=()):
        self.dir = tempfile.mkdtemp(prefix="strata-", dir=base)
        self.cpus = cpus
        self.flags = list(flags)  # more `strata server` flags
        self.api_port, self.nbd_port, self.peer_port = free_port(), free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.join = join
        self.name = name
        self.start()

    def start(self):
        args = [STRATA, "server", "--data-dir", os.path.join(self.dir, "data"),
                "--api", f"127.0.0.1:{self.api_port}", "--nbd", f"127.0.0.1:{self.nbd_port}",
                "--peer", f"127.0.0.1:{self.peer_port}"]
        if self.name:
            args += ["--name", self.name]
        args += ["--join", self.join] if self.join else ["--bootstrap"]
        args += self.flags
        self.proc = subprocess.Popen(
            pinned(args, self.cpus), stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "server.log"), "a"),
            env={"RUST_LOG": "warn", **os.environ})
        wait_port(self.api_port)
        wait_port(self.nbd_port)
        # A joining server answers on its API before its join completes, a bootstrapping one
        # before its `default` cluster exists (a volume created then gets a 404).
        ready = "/v1/clusters/default" if not self.join else "/v1/servers/self"
        end = time.time() + 60
        while time.time() < end:
            try:
                self.call("GET", ready)
                break
            except Exception:
                time.sleep(0.1)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def metric(self, name):
        with urllib.request.urlopen(self.api + "/metrics") as r:
            total = 0.0
            for line in r.read().decode().splitlines():
                if line.startswith(name):
                    total += float(line.split()[-1])
            return total

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req) as r:
            text = r.read()
            return json.loads(text) if text else None

    def create(self, name, size, replicas=1):
        self.call("POST", "/v1/volumes", {"name": name, "size": size, "replicas": replicas})
        return f"nbd://127.0.0.1:{self.nbd_port}/{name}"

    def snapshot(self, volume, name):
        t = time.perf_counter()
        self.call("POST", f"/v1/volumes/{volume}/snapshots", {"name": name})
        return time.perf_counter() - t

    def timed_get(self, path):
        t = time.perf_counter()
        with urllib.request.urlopen(self.api + path) as r:
            r.read()
        return time.perf_counter() - t

    def peak_rss_mib(self):
        return self.status_mib("VmHWM")

    def status_mib(self, field):
        """A memory field of /proc/PID/status (VmHWM, VmRSS, ...) in MiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def reset_peak_rss(self):
        """Resets VmHWM to the current RSS (`5` to /proc/PID/clear_refs); False if refused."""
        try:
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if os.environ.get("BENCH_KEEP"):  # keep the data and server.log for a look
            return
        shutil.rmtree(self.dir, ignore_errors=True)


class QemuNbd:
    def __init__(self, base, size, cpus=None):
        self.dir = tempfile.mkdtemp(prefix="qemu-nbd-", dir=base)
        self.file = os.path.join(self.dir, "disk.raw")
        subprocess.run(["qemu-img", "create", "-f", "raw", self.file, str(size)], check=True,
                       stdout=subprocess.DEVNULL)
        self.port = free_port()
        self.proc = subprocess.Popen(
            pinned(["qemu-nbd", "-f", "raw", "--shared=8", "--cache=writeback", "--aio=threads",
                    "--persistent", "-b", "127.0.0.1", "-p", str(self.port), "-x", "bench",
                    self.file], cpus))
        wait_port(self.port)
        self.uri = f"nbd://127.0.0.1:{self.port}/bench"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def pct(sorted_values, p):
    """Nearest-rank percentile: the smallest value with at least p% of the values <= it."""
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[rank - 1]


def fio(uri, name, rw, bs, depth, size, runtime=None, extra=(), cpus=None):
    args = ["fio", f"--name={name}", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
            f"--iodepth={depth}", f"--size={size}", "--output-format=json", "--randrepeat=0",
            "--norandommap", *extra]
    if runtime:
        args += ["--time_based", f"--runtime={runtime}"]
    out = subprocess.run(pinned(args, cpus), check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    side = job["write"] if "write" in rw else job["read"]
    p99 = side["clat_ns"]["percentile"].get("99.000000", 0) / 1000
    return {"iops": side["iops"], "mbs": side["bw_bytes"] / 1e6, "p99_us": p99,
            "ios": side["total_ios"]}


def cpu_seconds(pids):
    """User + system CPU seconds each of `pids` has used so far (from /proc/PID/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out.append((int(fields[11]) + int(fields[12])) / tick)
    return out


def children_cpu_seconds():
    """User + system CPU seconds used by this script's finished children (the fio runs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine_busy():
    """(busy, total) CPU ticks of the whole machine so far (from /proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


def fio_cpu(pids, *args, **kwargs):
    """Runs `fio(*args)` and adds what it cost in CPU: `server_us` (per I/O, for each of the
    server processes `pids`), `fio_us` (per I/O, the client) and `busy` (the machine's busy
    fraction during the run)."""
    servers, client, machine = cpu_seconds(pids), children_cpu_seconds(), machine_busy()
    r = fio(*args, **kwargs)
    servers = [b - a for a, b in zip(servers, cpu_seconds(pids))]
    client = children_cpu_seconds() - client
    busy, total = (b - a for a, b in zip(machine, machine_busy()))
    ios = max(r["ios"], 1)
    r.update(server_us=[s * 1e6 / ios for s in servers], fio_us=client * 1e6 / ios,
             busy=busy / max(total, 1))
    return r


JOBS = [("seq write 1M QD16", "write", "1M", 16), ("seq read 1M QD16", "read", "1M", 16),
        ("rand write 4K QD32", "randwrite", "4k", 32), ("rand read 4K QD32", "randread", "4k", 32)]


def bench_fio(base, size, runtime):
    print(f"## fio over NBD: Strata vs qemu-nbd ({size >> 20} MiB target, {runtime}s per job)\n")
    strata = Strata(base)
    qemu = QemuNbd(base, size)
    try:
        targets = {"strata": strata.create("bench", size), "qemu-nbd": qemu.uri}
        for uri in targets.values():  # precondition: one full sequential write
            fio(uri, "precondition", "write", "1M", 16, size)
        rows = []
        for label, rw, bs, depth in JOBS:
            r = {k: fio(uri, label.replace(" ", "-"), rw, bs, depth, size, runtime)
                 for k, uri in targets.items()}
            rows.append((label, r))
        print("| job | Strata IOPS | Strata MB/s | Strata p99 µs | qemu-nbd IOPS | qemu-nbd MB/s | qemu-nbd p99 µs | ratio (IOPS) |")
        print("|---|---|---|---|---|---|---|---|")
        for label, r in rows:
            s, q = r["strata"], r["qemu-nbd"]
            print(f"| {label} | {s['iops']:.0f} | {s['mbs']:.0f} | {s['p99_us']:.0f} | {q['iops']:.0f} | "
                  f"{q['mbs']:.0f} | {q['p99_us']:.0f} | {s['iops'] / q['iops']:.2f} |")
        print(f"\nStrata server peak RSS (VmHWM) over the run: {strata.peak_rss_mib():.0f} MiB\n")
    finally:
        strata.stop()
        qemu.stop()


def bench_snapshots(base, count=100):
    print(f"## Snapshot create latency ({count} snapshots, client-measured API call)\n")
    print("| volume | written | p50 ms | p99 ms | max ms | same client, GET /healthz p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for size, written in [(1 << 30, 256 << 20), (32 << 30, 8 << 30)]:
        strata = Strata(base)
        try:
            uri = strata.create("snap", size)
            # The fill ends with a FLUSH, as a client that wrote its data would: the snapshots
            # then measure what a snapshot costs, not the writeback of GiBs of page cache.
            fio(uri, "fill", "write", "1M", 16, written, extra=["--end_fsync=1"])
            times = sorted(strata.snapshot("snap", f"s{i}") * 1000 for i in range(count))
            probe = sorted(strata.timed_get("/healthz") * 1000 for _ in range(count))
            print(f"| {size >> 30} GiB | {written >> 20} MiB | {statistics.median(times):.2f} | "
                  f"{pct(times, 99):.2f} | {times[-1]:.2f} | "
                  f"{statistics.median(probe):.2f} / {pct(probe, 99):.2f} |")
        finally:
            strata.stop()
    print()


def bench_deep(base, size, runtime, rounds=3):
    print(f"## Random-read 4K QD32 with 0 and 64 snapshots ({size >> 20} MiB volumes, {runtime}s, "
          f"{rounds} interleaved rounds, median)\n")
    strata = Strata(base)
    try:
        # Two volumes on one server, both preconditioned: `flat` keeps 0 snapshots, `deep` gets
        # 64. Their random reads are then measured alternately and the medians compared, so a
        # noisy minute on the machine does not land on one side only.
        flat_uri = strata.create("flat", size)
        deep_uri = strata.create("deep", size)
        for uri in (flat_uri, deep_uri):
            fio(uri, "fill", "write", "1M", 16, size, extra=["--end_fsync=1"])
        for i in range(64):
            fio(deep_uri, f"layer{i}", "randwrite", "4k", 32, size, extra=["--io_size=4M"])
            strata.snapshot("deep", f"l{i}")
        runs = {"flat": [], "deep": []}
        for r in range(rounds):
            for k, uri in (("flat", flat_uri), ("deep", deep_uri)):
                runs[k].append(fio(uri, f"{k}-{r}", "randread", "4k", 32, size, runtime))
        med = {k: statistics.median(x["iops"] for x in v) for k, v in runs.items()}
        print("| snapshots | median IOPS | IOPS per round | p99 µs per round |\n|---|---|---|---|")
        for k, n in (("flat", 0), ("deep", 64)):
            iops = ", ".join(f"{x['iops']:.0f}" for x in runs[k])
            p99 = ", ".join(f"{x['p99_us']:.0f}" for x in runs[k])
            print(f"| {n} | {med[k]:.0f} | {iops} | {p99} |")
        per_round = ", ".join(f"{d['iops'] / f['iops']:.2f}" for f, d in zip(runs["flat"], runs["deep"]))
        print(f"\nratio 64/0 (medians): {med['deep'] / med['flat']:.2f} (per round: {per_round})\n")
    finally:
        strata.stop()


class Cluster:
    """`n` (default 3) `strata server` processes in one group and one `default` cluster."""

    def __init__(self, base, n=3, cpus=None):
        cpus = cpus or [None] * n
        first = Strata(base, name="b1", cpus=cpus[0])
        self.servers = [first] + [Strata(base, join=first.api, name=f"b{i}", cpus=cpus[i - 1])
                                  for i in range(2, n + 1)]
        for s in self.servers[1:]:
            first.call("POST", "/v1/clusters/default/servers", {"server": s.name})
        self.api = first

    def stop(self):
        for s in reversed(self.servers):
            s.stop()

    def wait_status(self, volume, prefix, timeout=600):
        end = time.time() + timeout
        while time.time() < end:
            try:
                v = self.api.call("GET", f"/v1/volumes/{volume}")
                if v["status"].startswith(prefix):
                    return v
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"volume {volume} never became {prefix}")


def bench_cluster(base, size, runtime, pin=False):
    print(f"## fio on a 3-server cluster vs qemu-nbd and single-server Strata "
          f"({size >> 20} MiB, {runtime}s per job; client on the first server)\n")
    # Pinned: the client's side (fio, the server it talks to, and the single server and
    # qemu-nbd it is compared with) gets CPU 0 alone; the two other servers share CPU 1, as if
    # they ran on other machines.
    near = "0" if pin else None
    if pin:
        print("Pinned: fio, the first server, the single server and qemu-nbd on CPU 0; the other "
              "two servers on CPU 1.\n")
    cluster = Cluster(base, cpus=[near, "1", "1"] if pin else None)
    single, qemu = Strata(base, cpus=near), QemuNbd(base, size, cpus=near)
    try:
        targets = {"r1": cluster.api.create("r1", size, 1), "r2": cluster.api.create("r2", size, 2),
                   "single": single.create("bench", size), "qemu": qemu.uri}
        for uri in targets.values():
            fio(uri, "precondition", "write", "1M", 16, size, cpus=near)
        print("| job | 3 servers r=1 IOPS | 3 servers r=2 IOPS | 1 server IOPS | qemu-nbd IOPS | "
              "r=2 / qemu-nbd | r=1 / 1 server |")
        print("|---|---|---|---|---|---|---|")
        pids = {"r1": [s.proc.pid for s in cluster.servers], "single": [single.proc.pid],
                "qemu": [qemu.proc.pid]}
        pids["r2"] = pids["r1"]
        cpu = []
        for label, rw, bs, depth in JOBS:
            r = {k: fio_cpu(pids[k], uri, label.replace(" ", "-"), rw, bs, depth, size, runtime,
                            cpus=near)
                 for k, uri in targets.items()}
            cpu.append((label, r))
            print(f"| {label} | {r['r1']['iops']:.0f} | {r['r2']['iops']:.0f} | "
                  f"{r['single']['iops']:.0f} | {r['qemu']['iops']:.0f} | "
                  f"{r['r2']['iops'] / r['qemu']['iops']:.2f} | "
                  f"{r['r1']['iops'] / r['single']['iops']:.2f} |")
        # Where the CPU went: all of these share the machine's cores, so a setup that spends
        # more CPU per I/O gets fewer I/Os once the machine is busy.
        print("\nCPU time per I/O in µs (gateway = the server the client talks to; others = the "
              "other two servers; busy = the machine's busy share during the job):\n")
        print("| job | r=1 gateway | r=1 others | r=1 fio | r=1 busy | 1 server | 1 server fio | "
              "1 server busy | r=1 total / 1 server total |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, r in cpu:
            r1, one = r["r1"], r["single"]
            r1_total = sum(r1["server_us"]) + r1["fio_us"]
            one_total = one["server_us"][0] + one["fio_us"]
            print(f"| {label} | {r1['server_us'][0]:.1f} | {sum(r1['server_us'][1:]):.1f} | "
                  f"{r1['fio_us']:.1f} | {r1['busy']:.0%} | {one['server_us'][0]:.1f} | "
                  f"{one['fio_us']:.1f} | {one['busy']:.0%} | {r1_total / one_total:.2f} |")
        print()
    finally:
        cluster.stop()
        single.stop()
        qemu.stop()


def fio_lat(uri, name, runtime):
    """Random 4K writes QD4 for `runtime` s: p99 and max completion latency in ms, and IOPS."""
    args = ["fio", f"--name={name}", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
            "--bs=4k", "--iodepth=4", "--size=256M", "--time_based", f"--runtime={runtime}",
            "--output-format=json", "--randrepeat=0", "--norandommap", "--end_fsync=1"]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    w = json.loads(out[out.index("{"):])["jobs"][0]["write"]
    return {"p99": w["clat_ns"]["percentile"]["99.000000"] / 1e6,
            "max": w["clat_ns"]["max"] / 1e6, "iops": w["iops"]}


def bench_pause(base, runtime=20, count=100):
    print(f"## Write latency while snapshots are taken (3 servers, replicas=2, fio randwrite 4K "
          f"QD4, {runtime}s; {count} snapshots in the second run)\n")
    cluster = Cluster(base)
    try:
        uri = cluster.api.create("pause", 1 << 30, 2)
        fio(uri, "fill", "write", "1M", 16, 256 << 20, extra=["--end_fsync=1"])
        alone = fio_lat(uri, "alone", runtime)
        import threading
        took = []

        def snapshots():
            time.sleep(1)
            gap = (runtime - 2) / count
            for i in range(count):
                took.append(cluster.api.snapshot("pause", f"p{i}") * 1000)
                time.sleep(max(0, gap - took[-1] / 1000))

        t = threading.Thread(target=snapshots)
        t.start()
        during = fio_lat(uri, "during", runtime)
        t.join()
        took.sort()
        print("| run | IOPS | p99 write ms | max write ms |\n|---|---|---|---|")
        print(f"| no snapshots | {alone['iops']:.0f} | {alone['p99']:.2f} | {alone['max']:.2f} |")
        print(f"| {len(took)} snapshots | {during['iops']:.0f} | {during['p99']:.2f} | {during['max']:.2f} |")
        print(f"\np99 ratio (during / alone): {during['p99'] / alone['p99']:.2f}; snapshot create "
              f"p50 {statistics.median(took):.1f} ms, p99 {pct(took, 99):.1f} ms\n")
    finally:
        cluster.stop()


def bench_resync(base, sizes=(1 << 30, 4 << 30), outage=30, rate="2m"):
    print(f"## Resync after a {outage}s outage of one of 3 servers (replicas=2, fio randwrite 4K "
          f"at {rate}/s into the first 64 MiB during the outage)\n")
    print("| volume | chunks written in outage (marks) | chunk-layers copied | copied / marks | "
          "resync time s |\n|---|---|---|---|---|")
    for size in sizes:
        cluster = Cluster(base)
        try:
            uri = cluster.api.create("rs", size, 2)
            vid = cluster.api.call("GET", "/v1/volumes/rs")["id"]
            fio(uri, "fill", "write", "1M", 16, size, extra=["--end_fsync=1"])
            victim = cluster.servers[2]
            victim.kill()
            # The outage writes stay in the first 64 MiB whatever the volume size.
            fio(uri, "outage", "randwrite", "4k", 4, 64 << 20, outage, extra=[f"--rate={rate}"])
            marks = 0
            for s in cluster.servers[:2]:
                for m in s.call("GET", f"/internal/v1/volumes/{vid}/missed"):
                    marks += m["remaining"]
            before = sum(s.metric("strata_resync_chunk_layers_total") for s in cluster.servers[:2])
            t = time.perf_counter()
            victim.start()
            cluster.wait_status("rs", "healthy")
            took = time.perf_counter() - t
            after = sum(s.metric("strata_resync_chunk_layers_total") for s in cluster.servers[:2])
            copied = after - before
            print(f"| {size >> 30} GiB | {marks} | {copied:.0f} | {copied / max(marks, 1):.2f} | {took:.1f} |")
        finally:
            cluster.stop()
    print()


def bench_migrate(base, sizes=(512 << 20, 2 << 30), runtime=30):
    print(f"## Removing a server: its data moves to the others while a client writes (4 servers, "
          f"replicas=2, volume written in full first; fio randwrite 4K QD4 over 256 MiB for "
          f"{runtime}s around the move)\n")
    print("| volume | chunks on the leaving server | chunk-layers copied | copied / chunks | "
          "move time s | MiB/s | write p99 ms | write max ms | write p99 ms, no move |\n"
          "|---|---|---|---|---|---|---|---|---|")
    chunk = 4 << 20
    for size in sizes:
        cluster = Cluster(base, n=4)
        try:
            uri = cluster.api.create("mv", size, 2)
            vid = cluster.api.call("GET", "/v1/volumes/mv")["id"]
            fio(uri, "fill", "write", "1M", 16, size, extra=["--end_fsync=1"])
            quiet = fio_lat(uri, "no-move", 10)
            leaving = cluster.servers[3]
            held = leaving.call("GET", f"/internal/v1/volumes/{vid}/local")["used_bytes"] // chunk
            before = sum(s.metric("strata_resync_chunk_layers_total") for s in cluster.servers[:3])
            during = {}
            writer = threading.Thread(target=lambda: during.update(fio_lat(uri, "move", runtime)))
            writer.start()
            time.sleep(2)
            t = time.perf_counter()
            cluster.api.call("DELETE", f"/v1/clusters/default/servers/{leaving.name}")
            while leaving.name in cluster.api.call("GET", "/v1/clusters/default")["servers"]:
                time.sleep(0.05)
            took = time.perf_counter() - t
            writer.join()
            after = sum(s.metric("strata_resync_chunk_layers_total") for s in cluster.servers[:3])
            copied = after - before
            print(f"| {size >> 20} MiB | {held} | {copied:.0f} | {copied / max(held, 1):.2f} | "
                  f"{took:.1f} | {held * chunk / (1 << 20) / took:.0f} | {during['p99']:.2f} | "
                  f"{during['max']:.1f} | {quiet['p99']:.2f} |")
        finally:
            cluster.stop()
    print()


NBD_OPT_GO, NBD_REP_ACK, NBD_REP_INFO, NBD_INFO_EXPORT = 7, 1, 3, 0
NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC, NBD_CMD_READ = 0x25609513, 0x67446698, 0


def recv_exact(sock, n):
    out = bytearray()
    while len(out) < n:
        got = sock.recv(n - len(out))
        if not got:
            raise ConnectionError("the server closed the connection")
        out += got
    return bytes(out)


def nbd_connect(port, export, rcvbuf=None, timeout=30):
    """A raw NBD connection in transmission (fixed newstyle, NBD_OPT_GO, simple replies):
    (socket, export size)."""
    sock = socket.socket()
    if rcvbuf:  # before connect, so the advertised window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    hello = recv_exact(sock, 18)
    if hello[:16] != b"NBDMAGICIHAVEOPT":
        raise RuntimeError(f"not an NBD newstyle server: {hello!r}")
    sock.sendall(struct.pack(">I", 1 | 2))  # FIXED_NEWSTYLE | NO_ZEROES
    name = export.encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    sock.sendall(b"IHAVEOPT" + struct.pack(">II", NBD_OPT_GO, len(data)) + data)
    size = None
    while True:
        _magic, _opt, kind, length = struct.unpack(">QIII", recv_exact(sock, 20))
        body = recv_exact(sock, length)
        if kind & 0x80000000:
            raise RuntimeError(f"NBD_OPT_GO refused: {kind:#x} {body!r}")
        if kind == NBD_REP_INFO and struct.unpack(">H", body[:2])[0] == NBD_INFO_EXPORT:
            size = struct.unpack(">Q", body[2:10])[0]
        if kind == NBD_REP_ACK:
            return sock, size


def nbd_read_request(cookie, offset, length):
    return struct.pack(">IHHQQI", NBD_REQUEST_MAGIC, 0, NBD_CMD_READ, cookie, offset, length)


def probe_read(port, export, length=4096):
    """Seconds for a new connection's handshake and one READ of `length` bytes, or the error."""
    t = time.perf_counter()
    try:
        sock, _ = nbd_connect(port, export, timeout=30)
        with sock:
            sock.sendall(nbd_read_request(1, 0, length))
            magic, error, cookie = struct.unpack(">IIQ", recv_exact(sock, 16))
            if magic != NBD_SIMPLE_REPLY_MAGIC or error or cookie != 1:
                return f"bad reply {magic:#x} error {error}"
            recv_exact(sock, length)
        return time.perf_counter() - t
    except Exception as e:  # a timeout or a refusal is the result, not a failure of the run
        return f"{type(e).__name__}: {e}"


def probe_qemu_io(uri):
    """Seconds for `qemu-io -r -c 'read 0 1M'`, or why it failed (30 s at most)."""
    t = time.perf_counter()
    try:
        r = subprocess.run(["qemu-io", "-f", "raw", "-r", "-c", "read 0 1M", uri],
                           capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "timed out after 30 s"
    if r.returncode != 0 or "read 1048576/1048576" not in r.stdout:
        return f"failed: {(r.stdout + r.stderr).strip()[:200]}"
    return time.perf_counter() - t


def shown(probe):
    return f"{probe * 1000:.0f} ms" if isinstance(probe, float) else probe


def bench_slowreader(base, hold, requests=2000, length=32 << 20, size=1 << 30):
    print(f"## Slow-reader attack: {requests} × {length >> 20} MiB READs per connection, never "
          f"read, held {hold}s or until the probes end (1 GiB volume written in full, one "
          f"server)\n")
    print("Probes start 2 s into the attack and give up after 30 s.\n")
    print("| connections | server flags | RSS before MiB | peak VmHWM MiB | peak VmRSS sampled MiB | "
          "RSS at end MiB | new client 4K READ | qemu-io read 1M | served after | /healthz |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    # 2 connections: the case. 8: more than the server-wide budget (512 MiB) holds at
    # 128 MiB each, so new clients wait for it; with an idle timeout the stuck ones are closed.
    for n, flags in ((2, ()), (8, ()), (8, ("--nbd-idle-timeout", "5s"))):
        strata = Strata(base, flags=flags)
        try:
            uri = strata.create("victim", size)
            fio(uri, "fill", "write", "1M", 16, size, extra=["--end_fsync=1"])
            time.sleep(2)  # let the fill's buffers go back before measuring
            before = strata.status_mib("VmRSS")
            reset = strata.reset_peak_rss()
            socks = [nbd_connect(strata.nbd_port, "victim", rcvbuf=4096)[0] for _ in range(n)]

            def attack(sock):
                burst = b"".join(nbd_read_request(i, (i * length) % size, length)
                                 for i in range(requests))
                try:
                    sock.sendall(burst)
                except OSError:
                    pass  # the server may stop reading or close; the attack is what got through

            senders = [threading.Thread(target=attack, args=(s,), daemon=True) for s in socks]
            for t in senders:
                t.start()
            peak_sampled, probes, probing = 0.0, {}, []
            started = time.time()
            # Sample until the hold is over and both probes have their answer.
            while time.time() < started + hold or len(probes) < len(probing) or not probing:
                peak_sampled = max(peak_sampled, strata.status_mib("VmRSS"))
                if not probing and time.time() > started + 2:
                    # Probes run in threads so the sampling goes on while they wait.
                    probing = [
                        threading.Thread(target=lambda: probes.update(
                            nbd=probe_read(strata.nbd_port, "victim")), daemon=True),
                        threading.Thread(target=lambda: probes.update(
                            qemu=probe_qemu_io(uri)), daemon=True)]
                    for t in probing:
                        t.start()
                time.sleep(0.1)
            peak_hwm = strata.peak_rss_mib()
            at_end = strata.status_mib("VmRSS")
            for s in socks:
                s.close()
            alive = strata.proc.poll() is None
            after = probe_read(strata.nbd_port, "victim") if alive else "server exited"
            served = f"yes, {shown(after)}" if isinstance(after, float) else after
            health = shown(strata.timed_get("/healthz")) if alive else "server exited"
            hwm = f"{peak_hwm:.0f}" if reset else f"{peak_hwm:.0f} (not reset: includes the fill)"
            print(f"| {n} | {' '.join(flags) or 'defaults'} | {before:.0f} | {hwm} | "
                  f"{peak_sampled:.0f} | {at_end:.0f} | {shown(probes['nbd'])} | "
                  f"{shown(probes['qemu'])} | {served} | {health} |")
        finally:
            strata.stop()
    print()

def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", nargs="?", default="all",
                   choices=["fio", "snapshots", "deep", "cluster", "pause", "resync", "migrate",
                            "slowreader", "all"])
    p.add_argument("--size", default="2G", help="volume size for fio and deep (e.g. 2G)")
    p.add_argument("--runtime", type=int, default=20,
                   help="seconds per fio job; slowreader: seconds the attack is held")
    p.add_argument("--pin", action="store_true",
                   help="cluster: fio, the first server, the single server and qemu-nbd on CPU 0, "
                        "the other two servers on CPU 1")
    p.add_argument("--dir", default=os.path.join(ROOT, "bench", "results", "tmp"))
    a = p.parse_args()
    size = int(re.match(r"(\d+)", a.size).group(1)) << {"M": 20, "G": 30}[a.size[-1]]
    os.makedirs(a.dir, exist_ok=True)
    if not os.path.exists(STRATA):
        sys.exit("build first: cargo build --release")
    print(f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {os.cpu_count()} cores, "
          f"{os.uname().release}; fio {subprocess.run(['fio', '--version'], capture_output=True, text=True).stdout.strip()}\n")
    if a.what in ("fio", "all"):
        bench_fio(a.dir, size, a.runtime)
    if a.what in ("snapshots", "all"):
        bench_snapshots(a.dir)
    if a.what in ("deep", "all"):
        bench_deep(a.dir, size, min(a.runtime, 15))
    if a.what in ("cluster", "all"):
        bench_cluster(a.dir, size, a.runtime, a.pin)
    if a.what in ("pause", "all"):
        bench_pause(a.dir, a.runtime)
    if a.what in ("resync", "all"):
        bench_resync(a.dir)
    if a.what in ("migrate", "all"):
        bench_migrate(a.dir)
    if a.what in ("slowreader", "all"):
        bench_slowreader(a.dir, a.runtime)


if __name__ == "__main__":
    main()
