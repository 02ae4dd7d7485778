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


def documented():
    """Every public name of the package, and every public method or property of its classes, has a docstring."""
    import inspect
    import dws.engines
    missing = []
    for mod in (dws, dws.engines):
        names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
        for name in names:
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{mod.__name__}.{name}")
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and (callable(member) or isinstance(member, property)) and not inspect.getdoc(member):
                        missing.append(f"{mod.__name__}.{name}.{attr}")
    check(not missing, f"public names without a docstring: {missing}")


def main():
    check("torch" not in sys.modules, "importing dws imported torch")
    documented()
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
    tracked_mode(rng)
    sharded_writers(rng)
    authenticated(rng)
    device_surface(rng)
    print("python api: publish/publish_async/back-pressure, pull into memory in O(changes), late join, audit, "
          "errors, follow, tracked mode, sharded writers, signed versions, device surface: all checks passed")


def tracked_mode(rng):
    """A ChangeTracker publisher: fp32 masters cast into the published fp16 tensors through the tracker;
    versions built from its record (no snapshot file) pull bit-identical, tracked anchors verify the
    record, and a write that bypasses the tracker is caught at the next anchor."""
    with tempfile.TemporaryDirectory() as d:
        store = os.path.join(d, "store")
        master = {"a": rng.standard_normal((200, 50)).astype(np.float32), "b": rng.standard_normal(999).astype(np.float32)}
        published = {k: v.astype(np.float16) for k, v in master.items()}
        tracker = dws.ChangeTracker(chunk_elements=1000)
        pub = dws.Publisher(store, tracker=tracker, anchor_every=4, staging_dir=os.path.join(d, "stage"))
        r = pub.publish(published, step=0)
        check(r["version"] == 0 and r["has_anchor"] and not r["has_delta"], f"tracked v0: {r}")
        check(not os.path.exists(pub.snapshot), "a tracking publisher wrote a snapshot")
        sub = dws.Subscriber(store, os.path.join(d, "r.safetensors"))
        mirror = {k: np.zeros_like(v) for k, v in published.items()}
        sub.pull(into=mirror)
        handles, expected = [], []
        for step in range(1, 9):
            for v in master.values():
                idx = rng.choice(v.size, 40, replace=False)
                v.reshape(-1)[idx] += np.float32(0.01)
            before = {k: v.copy() for k, v in published.items()}
            tracker.copy_(published, master)
            want = sum(int((before[k].view(np.uint16) != published[k].view(np.uint16)).sum()) for k in published)
            check(tracker.recorded_changes == want, f"step {step}: tracker noted {tracker.recorded_changes}, {want} changed")
            handles.append(pub.publish_async(published, step=step))
            expected.append({k: v.copy() for k, v in published.items()})
        pub.wait()
        results = [h.result() for h in handles]
        check([r["version"] for r in results] == list(range(1, 9)), f"tracked versions: {[r['version'] for r in results]}")
        check(all(r["has_delta"] for r in results) and [r["has_anchor"] for r in results].count(True) == 2,
              "tracked versions carry deltas, and anchors at 4 and 8")
        for v in range(1, 9):
            r = sub.pull(into=mirror, version=v)
            check(same_bits(mirror, expected[v - 1]), f"tracked version {v} differs from the mapping published")
            check(r["state_digest"] == pub_state_digest(expected[v - 1]), f"tracked version {v}: state digest")
        # A write behind the tracker's back: the tracked delta no longer explains the mapping, and the
        # next anchor version refuses it; the publisher then starts over with an anchor.
        published["b"][5] = np.float16(123.0)
        for step in (9, 10, 11, 12):
            tracker.copy_(published, {"a": master["a"] + np.float32(step), "b": published["b"]})
            if step < 12:
                pub.publish(published, step=step)
        try:
            pub.publish(published, step=12)
            check(False, "a write that bypassed the tracker was published")
        except dws.MismatchError as e:
            check(e.name == "E_TARGET_MISMATCH", f"{e!r}")
        r = pub.publish(published, step=12)
        check(r["has_anchor"] and not r["has_delta"] and r["version"] == 12, f"after a refusal the next version is an anchor: {r}")
        hf_opens(store, expected)
        sub.pull(into=mirror)
        check(same_bits(mirror, published), "the anchor after a refusal is the trainer's mapping")
        pub.close()


def hf_opens(store, expected):
    """Every patch and anchor the Python publisher wrote opens with Hugging Face's safetensors package;
    patches carry the dws metadata, and the version-4 anchor holds the mapping published at step 4."""
    from safetensors import safe_open
    patches = anchors = 0
    for root, _, files in os.walk(store):
        for f in files:
            path = os.path.join(root, f)
            if f.endswith(".dwsp"):
                with safe_open(path, framework="numpy") as sf:
                    check(sf.metadata().get("dws.format") == "dws-patch", f"{path}: metadata {sf.metadata()}")
                    for k in sf.keys():
                        sf.get_tensor(k)
                patches += 1
            elif f == "anchor.safetensors" and f"{os.sep}{4:020d}{os.sep}" in path:  # versions/<N, 20 digits>/
                with safe_open(path, framework="numpy") as sf:
                    check(sorted(sf.keys()) == sorted(expected[3]), "anchor tensor names")
                    for k in sf.keys():
                        check((sf.get_tensor(k).view(np.uint8) == expected[3][k].view(np.uint8)).all(), f"anchor tensor {k}")
                anchors += 1
    check(patches >= 8 and anchors == 1, f"HF safetensors opened {patches} patches and {anchors} anchors")


def sharded_writers(rng):
    """Two ranks, each a Publisher(writers=2, rank=i) on its own thread with its own tensors; versions
    become visible complete, in lockstep, and pull as the whole model."""
    with tempfile.TemporaryDirectory() as d:
        store = os.path.join(d, "store")
        shards = [{"r0.w": rng.standard_normal(5000).astype(np.float32)}, {"r1.w": rng.standard_normal(3000).astype(np.float32)}]
        pubs = [dws.Publisher(store, writers=2, rank=i, snapshot=os.path.join(d, f"snap{i}")) for i in range(2)]
        states = []
        for step in range(4):
            for i in range(2):
                shards[i][f"r{i}.w"][rng.integers(0, 3000, 20)] += np.float32(1)
            states.append({k: v.copy() for sh in shards for k, v in sh.items()})
        handles = [[], []]

        def rank(i, delay):
            time.sleep(delay)  # rank 1 starts late: rank 0's next parts wait for it (lockstep)
            for step in range(4):
                handles[i].append(pubs[i].publish_async({f"r{i}.w": states[step][f"r{i}.w"]}, step=step))
            pubs[i].close()

        threads = [threading.Thread(target=rank, args=(i, 0.3 * i)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        results = [[h.result() for h in hs] for hs in handles]
        check(all([r["version"] for r in rs] == [0, 1, 2, 3] for rs in results), f"parts by version: {results}")
        # Whoever completes a version merges and commits it (both ranks may race to; one commit wins).
        check(all(results[0][v]["committed"] or results[1][v]["committed"] for v in range(4)), f"{results}")
        sub = dws.Subscriber(store, os.path.join(d, "whole"))
        for v in range(4):
            mirror = {k: np.zeros_like(x) for k, x in states[v].items()}
            r = sub.pull(into=mirror, version=v)
            check(r["version"] == v and same_bits(mirror, states[v]), f"sharded version {v} differs")


def authenticated(rng):
    """Signed versions: a subscriber with the trainer's secret file follows them; one with another
    secret is refused with AuthenticationError (a PermissionError) and its mapping stays as it was."""
    with tempfile.TemporaryDirectory() as d:
        secret, other = os.path.join(d, "secret"), os.path.join(d, "other")
        with open(secret, "w") as f:
            f.write("python-secret-0123456789abcdef\n")
        with open(other, "w") as f:
            f.write("another-secret-0123456789abcdef\n")
        store = os.path.join(d, "store")
        state = model(rng)
        for tracked in (False, True):
            kw = {"tracker": dws.ChangeTracker()} if tracked else {}
            pub = dws.Publisher(os.path.join(store, str(tracked)), snapshot=os.path.join(d, f"snap{tracked}", "s.safetensors"),
                                secret_file=secret, **kw)
            published = {k: v.copy() for k, v in state.items()}
            pub.publish(published, step=0)
            ok = dws.Subscriber(os.path.join(store, str(tracked)), os.path.join(d, f"ok{tracked}"), secret_file=secret)
            mirror = {k: np.zeros_like(v) for k, v in state.items()}
            check(ok.pull(into=mirror)["version"] == 0 and same_bits(mirror, state), "signed version 0")
            train_step(state, rng)
            if tracked:
                pub.tracker.copy_(published, state)
            else:
                published = {k: v.copy() for k, v in state.items()}
            pub.publish(published, step=1)
            check(ok.pull(into=mirror)["version"] == 1 and same_bits(mirror, state), "signed version 1")
            bad = dws.Subscriber(os.path.join(store, str(tracked)), os.path.join(d, f"bad{tracked}"), secret_file=other)
            untouched = {k: np.zeros_like(v) for k, v in state.items()}
            try:
                bad.pull(into=untouched)
                check(False, "a version signed with another secret was taken")
            except dws.AuthenticationError as e:
                check(isinstance(e, PermissionError) and "python-secret" not in str(e), f"error: {e!r}")
            check(all(not v.any() for v in untouched.values()), "a refused pull wrote into the mapping")
            pub.close()
        try:
            dws.Subscriber(store, os.path.join(d, "x"), secret_file=os.path.join(d, "missing"))
            check(False, "a missing secret file was accepted")
        except dws.NotFoundError:
            pass


class FakeStream:
    """Stands for a torch.cuda.Stream: what cuda_stream reads is its .cuda_stream."""
    cuda_stream = 1234


def device_surface(rng):
    """The CUDA entry points' checks that hold on any machine (tests/python/torch_e2e_test.py with
    DWS_E2E_DEVICE=cuda runs the device paths where a GPU is present)."""
    from dws import _core
    from dws._tensors import cuda_stream, on_device, tensor_args
    check(_core.cuda_devices() >= 0, "cuda_devices")
    state = model(rng)
    args = tensor_args(state)
    check(not on_device(args) and not any(a.on_device for a in args), "numpy arrays are host tensors")
    check(cuda_stream(state, None) == 0 and cuda_stream(state, 7) == 7 and cuda_stream(state, FakeStream()) == 1234,
          "stream selection")
    for bad in (lambda: dws.Publisher(tempfile.mkdtemp(), snapshot_memory="gpu"),
                lambda: _core.DeviceTracker("gpu")):
        try:
            bad()
            check(False, "snapshot_memory 'gpu' was accepted")
        except ValueError as e:  # InvalidArgumentError is a ValueError too
            check("'gpu'" in str(e), f"the message names the value: {e}")
    # Host tensors handed to the device entry points are refused by name, before any device work.
    tracker = _core.DeviceTracker("host")
    for call in (lambda: tracker.reset(args), lambda: tracker.take(args)):
        try:
            call()
            check(False, "a device call took host tensors")
        except dws.InvalidArgumentError as e:
            check(f"'{args[0].name}' is not on a CUDA device" in str(e), str(e))
    check(not tracker.has_snapshot and tracker.snapshot_bytes == 0, "a refused reset holds no snapshot")


def pub_state_digest(state):
    """The state digest of a mapping: the lane-wise sum of its tensor digests (docs/patch-format.md §5)."""
    h = lo = 0
    for name, t in state.items():
        d = dws.tensor_digest(name, t)
        h, lo = (h + int(d[:16], 16)) % 2**64, (lo + int(d[16:], 16)) % 2**64
    return f"{h:016x}{lo:016x}"


if __name__ == "__main__":
    main()
