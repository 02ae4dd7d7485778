"""Load: one publisher at a sustained version rate and N receivers following it, each its own
`dws pull --follow` process, on one machine, for a bounded time; through a directory store and through
a real SeaweedFS S3 server (tests/s3/weed_fixture.py).

    .venv/bin/python bench/load.py build/dws [--seconds 120] [--receivers 16] [--rate 0] [--stores dir,s3]
        [--json bench/results/load.json] [--check]

The publisher publishes trajectory-small's steps back and forth (0,1,..,6,5,..,0,1,..: every version a
real one-step delta), as fast as it can (--rate 0) or at --rate versions/s. Each receiver polls
(--poll 0.2 s). Afterwards, for each store:
  - no version lost: the store holds versions 0..V, each committed by the publisher, in order;
  - no receiver diverges: every version a receiver reports reaching has the state digest the store's
    manifest gives it, its versions only go up, and its final checkpoint is bit-identical to version V;
  - memory flat: each receiver's RSS over the last quarter of the run vs. the first quarter.
Figures: versions/s sustained, publish seconds (median), receiver lag (commit -> receiver reports the
version; median, p95, max over receivers x versions), pulls per receiver (a pull applies every version
published since the last one, in order), RSS. --check exits 1 when an invariant fails (the ctest `load.short` runs it briefly).
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "s3"))
TRAJECTORY = os.path.join(ROOT, "..", "shared", "data", "trajectory-small")
LINE = re.compile(r" at version (\d+) .*; state ([0-9a-f]{32})")


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def same_tensors(a, b):
    """Same tensor names, dtypes, shapes and bytes (the files' layout may differ); read raw, as numpy
    has no bfloat16."""
    def tensors(path):
        with open(path, "rb") as f:
            blob = f.read()
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + n])
        header.pop("__metadata__", None)
        return {k: (v["dtype"], v["shape"], blob[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in header.items()}
    return tensors(a) == tensors(b)


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else None


class Receiver:
    def __init__(self, dws, uri, local, env, poll):
        self.local, self.seen, self.rss = local, [], []  # seen: (version, state, monotonic time)
        self.proc = subprocess.Popen([dws, "--threads", "1", "pull", uri, local, "--follow", "--poll-interval", str(poll),
                                      "--progress", "off"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.other = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            m = LINE.search(line)
            if m:
                self.seen.append((int(m.group(1)), m.group(2), time.monotonic()))
            elif line.strip():
                self.other.append(line.strip())

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.thread.join(5)


def run_store(args, kind, work, env):
    steps = [os.path.join(TRAJECTORY, f"step{s:03d}.safetensors") for s in range(7)]
    order = list(range(7)) + list(range(5, 0, -1))  # 0..6..1, then again
    if kind == "dir":
        uri = os.path.join(work, "store")
    else:
        uri = f"s3://{env['DWS_S3_BUCKET']}/load-{os.getpid()}-{int(time.time())}"
    snap = os.path.join(work, f"snap-{kind}")
    dws = args.dws
    # Version 0 first, so receivers start from an anchor rather than an empty store.
    subprocess.run([dws, "-q", "publish", uri, steps[0], "--snapshot", snap, "--anchor-every", "32"], check=True, env=env)
    commits = {0: (time.monotonic(), 0)}  # version -> (commit time, trajectory step)
    receivers = [Receiver(dws, uri, os.path.join(work, f"r{kind}{i}.safetensors"), env, args.poll) for i in range(args.receivers)]
    publish_seconds = []
    t0 = time.monotonic()
    next_at = t0
    v, k = 0, 1
    last_sample = 0.0
    while time.monotonic() - t0 < args.seconds:
        now = time.monotonic()
        if now - last_sample >= 1.0:
            for r in receivers:
                r.rss.append((now - t0, rss_kib(r.proc.pid)))
            last_sample = now
        if args.rate > 0 and now < next_at:
            time.sleep(min(next_at - now, 0.05))
            continue
        step = order[k % len(order)]
        a = time.monotonic()
        p = subprocess.run([dws, "-q", "--threads", "1", "publish", uri, steps[step], "--snapshot", snap, "--anchor-every", "32"],
                           env=env, capture_output=True, text=True)
        b = time.monotonic()
        if p.returncode != 0:
            raise SystemExit(f"load: publish of version {v + 1} failed: {p.stderr.strip()}")
        v += 1
        k += 1
        commits[v] = (b, step)
        publish_seconds.append(b - a)
        next_at = max(next_at + 1.0 / args.rate, b) if args.rate > 0 else b
    elapsed = time.monotonic() - t0
    last = v
    # Let the receivers catch up to the last version (bounded).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(not r.seen or r.seen[-1][0] < last for r in receivers):
        time.sleep(0.1)
    for r in receivers:
        r.stop()
    # The store's record of every version.
    log = subprocess.run([dws, "log", uri, "--json"], env=env, capture_output=True, text=True, check=True)
    versions = {row["version"]: row for row in json.loads(log.stdout)["versions"]}
    problems = []
    if sorted(versions) != list(range(last + 1)):
        problems.append(f"{kind}: the store holds versions {sorted(versions)[:5]}..., not 0..{last}")
    for ver in commits:
        if ver not in versions:
            problems.append(f"{kind}: version {ver} lost")
    lags, pulls, rss_growth = [], [], []  # pulls: reports (pulls that reached a new version) per receiver
    final_state = versions.get(last, {}).get("state_digest")
    for i, r in enumerate(receivers):
        vs = [s[0] for s in r.seen]
        if vs != sorted(set(vs)):
            problems.append(f"{kind}: receiver {i} went back or repeated: {vs[:10]}")
        for ver, state, t in r.seen:
            if versions.get(ver, {}).get("state_digest") != state:
                problems.append(f"{kind}: receiver {i} reports version {ver} at state {state}, the store says "
                                f"{versions.get(ver, {}).get('state_digest')}")
            if ver in commits and ver > 0:
                lags.append(t - commits[ver][0])
        if not vs or vs[-1] != last:
            problems.append(f"{kind}: receiver {i} ended at {vs[-1] if vs else None}, not {last}: {r.other[-3:]}")
        pulls.append(len(vs))
        same = subprocess.run([dws, "-q", "verify", r.local], capture_output=True, text=True)
        if same.returncode != 0:
            problems.append(f"{kind}: receiver {i}'s checkpoint fails verify: {same.stderr.strip()}")
        samples = [x for _, x in r.rss if x]
        if len(samples) >= 8:
            q = len(samples) // 4
            first, end = statistics.median(samples[:q]), statistics.median(samples[-q:])
            rss_growth.append(end / first)
    # Bit-identical: every receiver's final checkpoint against the step the last version published.
    last_step = steps[commits[last][1]]
    for i, r in enumerate(receivers):
        if subprocess.run(["cmp", "-s", r.local, last_step]).returncode != 0 and not same_tensors(r.local, last_step):
            problems.append(f"{kind}: receiver {i} is not bit-identical to version {last}")
    rss_all = [x for r in receivers for _, x in r.rss if x]
    return {
        "store": kind,
        "seconds": round(elapsed, 1),
        "receivers": args.receivers,
        "versions_published": last,
        "versions_per_second": round(last / elapsed, 3),
        "publish_seconds_median": round(statistics.median(publish_seconds), 3) if publish_seconds else None,
        "lag_seconds": {"median": round(pct(lags, 50), 3), "p95": round(pct(lags, 95), 3), "max": round(max(lags), 3)} if lags else None,
        "pulls_per_receiver_median": statistics.median(pulls) if pulls else None,
        "versions_per_pull": round(last / statistics.median(pulls), 2) if pulls and statistics.median(pulls) else None,
        "receiver_rss_mib": {"median": round(statistics.median(rss_all) / 1024, 1), "max": round(max(rss_all) / 1024, 1)} if rss_all else None,
        "receiver_rss_last_over_first_quarter": {"median": round(statistics.median(rss_growth), 3), "max": round(max(rss_growth), 3)} if rss_growth else None,
        "final_state_digest": final_state,
        "problems": problems,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dws")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--receivers", type=int, default=16)
    ap.add_argument("--rate", type=float, default=0, help="versions/s to publish at (0: as fast as one publisher can)")
    ap.add_argument("--poll", type=float, default=0.2)
    ap.add_argument("--stores", default="dir,s3")
    ap.add_argument("--json", default="")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="dws-load-") as work:
        for kind in args.stores.split(","):
            env = dict(os.environ)
            if kind == "s3":
                import weed_fixture
                fixture = os.path.join(work, "weed")
                weed_fixture.start(fixture)
                with open(os.path.join(fixture, "env")) as f:
                    env.update(dict(line.strip().split("=", 1) for line in f if "=" in line))
                try:
                    results.append(run_store(args, kind, work, env))
                finally:
                    weed_fixture.stop(fixture)
            else:
                results.append(run_store(args, kind, work, env))
            r = results[-1]
            print(f"load {r['store']}: {r['versions_published']} versions in {r['seconds']} s = {r['versions_per_second']}/s "
                  f"(publish {r['publish_seconds_median']} s median), {r['receivers']} receivers: lag {r['lag_seconds']}, "
                  f"{r['pulls_per_receiver_median']} pulls each ({r['versions_per_pull']} versions per pull), RSS {r['receiver_rss_mib']} MiB, "
                  f"last/first quarter {r['receiver_rss_last_over_first_quarter']}; problems: {len(r['problems'])}")
            for p in r["problems"][:20]:
                print("  problem:", p)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"results": results, "cores": os.cpu_count()}, f, indent=1)
    if args.check and any(r["problems"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
