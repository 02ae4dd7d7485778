"""Fault tests of the S3 driver against a real SeaweedFS that is killed (SIGKILL) and restarted in the
middle of transfers, plus a proxy that loses the answer to a commit. Exits non-zero on the first failure.

Its own SeaweedFS (not the shared ctest fixture, which other tests use) serves a 76 MiB simulated model
(`dws simulate --params 40M`), uploaded and downloaded in 5 MiB parts, 4 at a time.

1. publish, server killed at a random moment and restarted after 1 s (DWS_S3_RETRY_SECONDS=30): the
   publish completes after retries, or fails cleanly; either way no partial version is visible, the store
   verifies, and a rerun with the same --step completes the version exactly once.
2. publish, server killed and kept down past DWS_S3_RETRY_SECONDS=2: exit 8 (E_UNAVAILABLE), no version.
3. pull, server killed and restarted mid-download: the pull completes bit-identical, or fails with the
   local checkpoint still at the version it had (its sidecar's state digest is the bytes' own).
4. pull, server kept down: exit 8, local checkpoint untouched and valid.
5. The commit's answer lost (a proxy closes the connection after the server wrote the manifest): the
   retry sees 412, finds its own manifest, and publish succeeds instead of reporting E_EXISTS.

Usage: fault_test.py PATH_TO_DWS WORKDIR [TRIALS]   (TRIALS per scenario; default 1, DWS_SOAK=1: 10)
"""
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import boto3
from botocore.config import Config

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
import weed_fixture  # noqa: E402
from dws_spec import file_state_digest  # noqa: E402

EXIT_UNAVAILABLE = 8


def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)


class Harness:
    def __init__(self, dws, work):
        self.dws, self.work = dws, work
        self.weed = os.path.join(work, "weed")
        os.makedirs(self.weed, exist_ok=True)
        self.endpoint = weed_fixture.start(self.weed)
        self.env = dict(os.environ, AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID=weed_fixture.ACCESS_KEY,
                        AWS_SECRET_ACCESS_KEY=weed_fixture.SECRET_KEY, AWS_REGION="us-east-1",
                        DWS_S3_PART_MB="5", DWS_S3_CONCURRENCY="4", DWS_S3_RETRY_SECONDS="30")
        # A restarted SeaweedFS answers 500 for a few seconds while its volumes load: boto3 retries too.
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                               aws_access_key_id=weed_fixture.ACCESS_KEY, aws_secret_access_key=weed_fixture.SECRET_KEY,
                               config=Config(retries={"mode": "standard", "max_attempts": 20}))
        self.model = os.path.join(work, "model")
        subprocess.run([dws, "-q", "simulate", "-o", self.model, "--params", "40M", "--shape", "tiny", "--steps", "3"], check=True)
        self.steps = [os.path.join(self.model, f"step{i:03d}.safetensors") for i in range(4)]
        self.digests = [file_state_digest(p) for p in self.steps]

    def dws_run(self, *args, env=None, **kw):
        return subprocess.run([self.dws, *args], capture_output=True, text=True, env=env or self.env, **kw)

    def dws_start(self, *args, env=None):
        return subprocess.Popen([self.dws, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or self.env)

    def manifests(self, prefix):
        """{version: manifest} of every committed version, read with boto3."""
        out, token = {}, None
        while True:
            kw = dict(Bucket=weed_fixture.BUCKET, Prefix=prefix + "/versions/")
            if token:
                kw["ContinuationToken"] = token
            page = self.s3.list_objects_v2(**kw)
            for o in page.get("Contents", []):
                if o["Key"].endswith("/manifest.json"):
                    m = json.loads(self.s3.get_object(Bucket=weed_fixture.BUCKET, Key=o["Key"])["Body"].read())
                    out[m["version"]] = m
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def verify_store(self, uri):
        r = self.dws_run("verify", uri)
        check(r.returncode == 0, f"verify {uri} after a fault: {r.stderr}")

    def fault(self, proc, keep_down, delay_s):
        """Kills the server `delay_s` into `proc`. keep_down: restarts it only after `proc` has ended
        (which must then fail); else restarts it 1 s later while `proc` retries. Returns (whether `proc`
        was still running at the kill, its stderr)."""
        time.sleep(delay_s)
        in_flight = proc.poll() is None
        weed_fixture.kill(self.weed)
        if keep_down:
            _, err = proc.communicate(timeout=120)
            weed_fixture.restart(self.weed)
        else:
            time.sleep(1.0)
            weed_fixture.restart(self.weed)
            _, err = proc.communicate(timeout=300)
        return in_flight, err


def publish_faults(h, trials, keep_down):
    """Scenarios 1 (keep_down False) and 2 (True)."""
    results = {"completed": 0, "failed_cleanly": 0, "in_flight": 0}
    for t in range(trials):
        uri_prefix = f"pub-{'down' if keep_down else 'restart'}-{t}-{random.randrange(1 << 30)}"
        uri = f"s3://{weed_fixture.BUCKET}/{uri_prefix}"
        snap = os.path.join(h.work, f"snap-{uri_prefix}.safetensors")
        env = dict(h.env, DWS_S3_RETRY_SECONDS="2") if keep_down else h.env
        # Version 0 (an anchor) goes in undisturbed; the fault hits version 1, published with --anchor so
        # that it moves a whole model.
        r = h.dws_run("publish", uri, h.steps[0], "--step", "0", "--snapshot", snap)
        check(r.returncode == 0, f"publish step 0: {r.stderr}")
        proc = h.dws_start("publish", uri, h.steps[1], "--step", "1", "--anchor", "--snapshot", snap, env=env)
        in_flight, err = h.fault(proc, keep_down, random.uniform(0.05, 0.3) if keep_down else random.uniform(0.05, 0.5))
        results["in_flight"] += in_flight
        versions = h.manifests(uri_prefix)
        if proc.returncode == 0:
            results["completed"] += 1
            check(sorted(versions) == [0, 1], f"trial {t}: publish succeeded but versions are {sorted(versions)}")
        else:
            results["failed_cleanly"] += 1
            if keep_down:
                check(proc.returncode == EXIT_UNAVAILABLE and "E_UNAVAILABLE" in err,
                      f"trial {t}: a publish to a dead store should end E_UNAVAILABLE (exit 8), got {proc.returncode}: {err}")
            check(sorted(versions) in ([0], [0, 1]), f"trial {t}: versions {sorted(versions)} after a failed publish")
        h.verify_store(uri)
        # A rerun of the same step completes the version exactly once.
        r = h.dws_run("publish", uri, h.steps[1], "--step", "1", "--anchor", "--snapshot", snap)
        check(r.returncode == 0, f"trial {t}: rerun of step 1: {r.stderr}")
        versions = h.manifests(uri_prefix)
        check(sorted(versions) == [0, 1], f"trial {t}: after the rerun versions are {sorted(versions)}")
        check(versions[1]["state_digest"] == h.digests[1], f"trial {t}: version 1 is not step 1's state")
        h.verify_store(uri)
    return results


def sidecar_state(local):
    with open(local + ".dws-version") as f:
        return json.load(f)["state_digest"]


def pull_faults(h, trials, keep_down):
    """Scenarios 3 (keep_down False) and 4 (True)."""
    results = {"completed": 0, "failed_cleanly": 0, "in_flight": 0}
    uri_prefix = f"pull-src-{random.randrange(1 << 30)}"
    uri = f"s3://{weed_fixture.BUCKET}/{uri_prefix}"
    snap = os.path.join(h.work, f"snap-{uri_prefix}.safetensors")
    for i in range(3):  # version 2 carries an anchor: a receiver at 0 can take the chain or the anchor
        r = h.dws_run("publish", uri, h.steps[i], "--step", str(i), "--anchor-every", "2", "--snapshot", snap)
        check(r.returncode == 0, f"publish step {i}: {r.stderr}")
    for t in range(trials):
        local = os.path.join(h.work, f"local-{'down' if keep_down else 'restart'}-{t}.safetensors")
        # Half the trials start from version 0 (deltas), half from nothing (the whole anchor).
        had = None
        if t % 2 == 0:
            r = h.dws_run("pull", uri, local, "--version", "0")
            check(r.returncode == 0, f"pull version 0: {r.stderr}")
            had = h.digests[0]
        env = dict(h.env, DWS_S3_RETRY_SECONDS="2") if keep_down else h.env
        proc = h.dws_start("pull", uri, local, env=env)
        in_flight, err = h.fault(proc, keep_down, random.uniform(0.0, 0.2) if keep_down else random.uniform(0.0, 0.4))
        results["in_flight"] += in_flight
        if proc.returncode == 0:
            results["completed"] += 1
            check(file_state_digest(local) == h.digests[2], f"trial {t}: pull succeeded but the bytes are not version 2")
        else:
            results["failed_cleanly"] += 1
            if keep_down and proc.poll() is not None:
                check(proc.returncode == EXIT_UNAVAILABLE, f"trial {t}: pull from a dead store: exit {proc.returncode}: {err}")
            if os.path.exists(local):
                state = file_state_digest(local)
                check(state in h.digests[:3], f"trial {t}: after a failed pull the local file is at no version")
                check(sidecar_state(local) == state, f"trial {t}: the sidecar does not describe the local bytes")
            else:
                check(had is None, f"trial {t}: a failed pull removed the local checkpoint")
        # Pulling again finishes the job.
        r = h.dws_run("pull", uri, local)
        check(r.returncode == 0 and file_state_digest(local) == h.digests[2], f"trial {t}: the pull after the fault: {r.stderr}")
    return results


class LosingProxy:
    """A TCP relay in front of the S3 endpoint that, once, forwards a conditional PUT (If-None-Match) and
    then closes the client's connection instead of passing on the server's answer."""

    def __init__(self, upstream_port):
        self.upstream_port, self.dropped = upstream_port, 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.sock.accept()
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            state = {"armed": False}
            threading.Thread(target=self.pump, args=(client, upstream, state, True), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, state, False), daemon=True).start()

    def pump(self, src, dst, state, to_server):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if to_server and self.dropped == 0 and b"if-none-match" in data.lower():
                    state["armed"] = True
                if not to_server and state["armed"]:
                    # The server has answered the commit (so it wrote the object): lose the answer.
                    self.dropped += 1
                    state["armed"] = False
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def lost_commit_answer(h):
    proxy = LosingProxy(int(h.endpoint.rsplit(":", 1)[1]))
    uri_prefix = f"lost-{random.randrange(1 << 30)}"
    uri = f"s3://{weed_fixture.BUCKET}/{uri_prefix}"
    r = h.dws_run("publish", uri, h.steps[0], "--step", "0", "--endpoint", f"http://127.0.0.1:{proxy.port}",
                  "--snapshot", os.path.join(h.work, f"snap-{uri_prefix}.safetensors"))
    check(proxy.dropped == 1, f"the proxy lost {proxy.dropped} answers, expected 1")
    check(r.returncode == 0, f"publish whose commit answer was lost: exit {r.returncode}: {r.stderr}")
    check(sorted(h.manifests(uri_prefix)) == [0], "the version is not there exactly once")
    h.verify_store(uri)


def main():
    dws, work = sys.argv[1], sys.argv[2]
    trials = int(sys.argv[3]) if len(sys.argv) > 3 else (10 if os.environ.get("DWS_SOAK") == "1" else 1)
    os.makedirs(work, exist_ok=True)
    h = Harness(dws, work)
    try:
        t0 = time.time()
        for name, fn, down in (("publish, server restarted", publish_faults, False), ("publish, server down", publish_faults, True),
                               ("pull, server restarted", pull_faults, False), ("pull, server down", pull_faults, True)):
            t1 = time.time()
            r = fn(h, trials, down)
            print(f"{name}: {trials} trials, server killed with the command in flight {r['in_flight']} times; "
                  f"completed {r['completed']}, failed cleanly {r['failed_cleanly']}; every invariant held "
                  f"({time.time() - t1:.0f} s)", flush=True)
        lost_commit_answer(h)
        print("publish whose commit answer was lost: succeeded, one version, store verifies")
        print(f"fault tests done in {time.time() - t0:.0f} s")
    finally:
        weed_fixture.stop(h.weed)


if __name__ == "__main__":
    main()
