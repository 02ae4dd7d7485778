"""The dws Python package against the real library and a real directory store, numpy only (no torch).
Exits non-zero on the first failure. Run with PYTHONPATH=build/python (ctest does).
"""
import os
import sys
import tempfile
import threading
import time

import numpy as np

import dws


def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)


def same_bits(a, b):
    return all(a[k].shape == b[k].shape and (a[k].view(np.uint8) == b[k].view(np.uint8)).all() for k in a) and a.keys() == b.keys()


def model(rng):
    return {"embed.weight": rng.standard_normal((300, 64)).astype(np.float32),
            "layer.0.weight": rng.standard_normal((64, 64)).astype(np.float16),
            "layer.0.bias": rng.standard_normal(64).astype(np.float32),
            "step": np.array([0], dtype=np.int64)}


def train_step(state, rng, n=50):
    flat = state["embed.weight"].reshape(-1)
    flat[rng.choice(flat.size, n, replace=False)] += np.float32(1e-3)
    state["layer.0.weight"][rng.integers(0, 64), rng.integers(0, 64)] = np.float16(-0.0)
    state["step"] += 1


def main():
    check("torch" not in sys.modules, "importing dws imported torch")
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as d:
        store = os.path.join(d, "store")
        state = model(rng)
        pub = dws.Publisher(store, snapshot=os.path.join(d, "snap", "s.safetensors"), anchor_every=4)
        r = pub.publish(state, step=0)
        check(r["version"] == 0 and r["has_anchor"], f"first publish: {r}")
        check(r["state_digest"] == pub_state_digest(state), "the version's state digest is not the mapping's")

        # Two subscribers: one follows every version, one joins late.
        sub = dws.Subscriber(store, os.path.join(d, "r1.safetensors"))
        mirror = {k: np.zeros_like(v) for k, v in state.items()}
        r = sub.pull(into=mirror)
        check(r["used_anchor"] and r["into_changes"] is None and same_bits(mirror, state), "first pull fills the mapping whole")

        # Async publishes: each captures the mapping at call time, even though training goes on at once.
        expected = []
        handles = []
        for step in range(1, 7):
            train_step(state, rng)
            handles.append(pub.publish_async(state, step=step))
            expected.append({k: v.copy() for k, v in state.items()})
        pub.wait()
        check([h.result()["version"] for h in handles] == list(range(1, 7)), "async versions out of order")
        for v in range(1, 7):
            r = sub.pull(into=mirror, version=v)
            check(r["version"] == v and same_bits(mirror, expected[v - 1]), f"version {v}: mapping differs from the step published")
            check(not r["used_anchor"] and r["into_changes"] is not None and 0 < r["into_changes"] < 60,
                  f"version {v}: not O(changes) in memory: {r}")
        late = {k: np.zeros_like(v) for k, v in state.items()}
        r2 = dws.Subscriber(store, os.path.join(d, "r2.safetensors")).pull(into=late)
        check(r2["version"] == 6 and same_bits(late, state), "a late subscriber does not end at the latest state")

        # A single flipped bit in the published mapping is a different version: the check can fail.
        flipped = {k: v.copy() for k, v in state.items()}
        flipped["embed.weight"].view(np.uint32)[7] ^= 1
        check(not same_bits(flipped, state), "the bit comparison cannot see one flipped bit")

        # Writes behind the subscriber's back: audit=True rescans the mapping and reloads it whole.
        mirror["layer.0.bias"][3] += 1
        train_step(state, rng)
        pub.publish(state, step=7)
        r = sub.pull(into=mirror, audit=True)
        check(r["into_changes"] is None and same_bits(mirror, state), "audit did not repair a mapping written behind its back")

        # A mapping of the wrong shape is refused with a clear error, naming the tensor.
        bad = dict(mirror, **{"layer.0.bias": np.zeros(63, dtype=np.float32)})
        try:
            dws.Subscriber(store, os.path.join(d, "r3.safetensors")).pull(into=bad)
            check(False, "a wrong-shaped mapping was accepted")
        except dws.InvalidArgumentError as e:
            check("layer.0.bias" in str(e), f"the error does not name the tensor: {e}")

        # Errors map to classes, with the library's code and name.
        try:
            sub.pull(version=99)
            check(False, "pull of a missing version succeeded")
        except dws.NotFoundError as e:
            check(e.name == "E_NOT_FOUND" and e.code == 3 and "99" in str(e), f"{e!r}")
        try:
            dws.Publisher(os.path.join(d, "store2"), snapshot=os.path.join(d, "s2", "s.safetensors")).publish({"x": [1, 2]})
            check(False, "a list was accepted as a tensor")
        except TypeError:
            pass

        # An async failure surfaces on wait() and on the next call; the publisher stays usable.
        other = dws.Publisher(store, snapshot=os.path.join(d, "snap-other", "s.safetensors"))
        h = other.publish_async({"different": np.ones(3, dtype=np.float32)}, step=100)  # does not descend: E_BASE_MISMATCH
        try:
            other.wait()
            check(False, "an async failure was lost")
        except dws.MismatchError:
            pass
        check(isinstance(h._error, dws.MismatchError), "the handle does not carry the error")
        other.close()

        # Back-pressure: with queue_size=1, a third publish_async waits until the first is done.
        slow = dws.Publisher(os.path.join(d, "store3"), snapshot=os.path.join(d, "s3", "s.safetensors"), queue_size=1)
        big = {"w": rng.standard_normal(2_000_000).astype(np.float32)}
        t0 = time.perf_counter()
        hs = [slow.publish_async(big, step=i) for i in range(3)]
        check(hs[0].done() or time.perf_counter() - t0 > 0, "unreachable")
        slow.close()
        check([h.result()["version"] for h in hs] == [0, 1, 2], "queued versions lost or reordered")

        # follow() on an empty store waits for its first version instead of failing.
        empty_store = os.path.join(d, "empty")
        waiting = dws.Subscriber(empty_store, os.path.join(d, "r5.safetensors"))
        errors = []
        waiting.follow(poll_seconds=0.02, on_error=errors.append)
        time.sleep(0.2)
        alive = waiting._follow_thread.is_alive()
        waiting.stop()
        check(alive and not errors, f"follow gave up on an empty store: {errors}")

        # follow() in the background reaches new versions by itself.
        seen = []
        f = dws.Subscriber(store, os.path.join(d, "r4.safetensors"))
        fm = {k: np.zeros_like(v) for k, v in state.items()}
        got = threading.Event()
        f.follow(into=fm, poll_seconds=0.05, on_version=lambda r: (seen.append(r["version"]), got.set()))
        got.wait(10)
        train_step(state, rng)
        pub.publish(state, step=8)
        deadline = time.time() + 10
        while (not seen or seen[-1] != 8) and time.time() < deadline:
            time.sleep(0.02)
        f.stop()
        check(seen and seen[-1] == 8 and same_bits(fm, state), f"follow saw {seen}")
        pub.close()
    print("python api: publish/publish_async/back-pressure, pull into memory in O(changes), late join, audit, "
          "errors, follow: all checks passed")


def pub_state_digest(state):
    """The state digest of a mapping: the lane-wise sum of its tensor digests (docs/patch-format.md §5)."""
    h = lo = 0
    for name, t in state.items():
        d = dws.tensor_digest(name, t)
        h, lo = (h + int(d[:16], 16)) % 2**64, (lo + int(d[16:], 16)) % 2**64
    return f"{h:016x}{lo:016x}"


if __name__ == "__main__":
    main()
