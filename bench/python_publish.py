"""Trainer step time with dws publishing every step, as ratios to the same loop without publishing.

A torch MLP stack trained with AdamW in fp32; after every step its bf16 copies (what rollout engines
run) are refreshed and published to a directory store. Modes, each run in the same process, interleaved
over rounds so machine noise hits them alike:
  base      refresh the bf16 copies with copy_, no publish
  snapshot  the same, then publish_async (capture: a staging copy; diff against the snapshot off-thread)
  tracked   refresh through a ChangeTracker, then publish_async (capture: the record, O(changes))
Reported per mode: median step time (forward, backward, optimizer step, refresh, publish_async call) over
the measured steps, as a ratio to base; the median time publish_async held the training thread; the
median time per version the background publish took (from the handles); bytes the publisher keeps
besides the model (snapshot mode: snapshot and staging files; tracked: the record at publish time).

Run: PYTHONPATH=build/python /usr/bin/python3 bench/python_publish.py [--params-m 24] [--steps 10] [--rounds 3]
     [--json bench/results/python-publish.json]
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import torch

import dws


def make_model(params_m, width=1024):
    layers = max(1, int(params_m * 1e6 / (width * width)))
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]), width


def run(mode, args, workdir):
    model, width = make_model(args.params_m)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    published = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}
    tracker = dws.ChangeTracker() if mode == "tracked" else None
    pub = None
    if mode != "base":
        pub = dws.Publisher(os.path.join(workdir, mode, "store"), snapshot=os.path.join(workdir, mode, "snap", "s.safetensors"),
                            tracker=tracker, threads=args.publish_threads, anchor_every=0)
        pub.publish(published, step=0)
    step_s, capture_s, handles, changes, record_bytes = [], [], [], [], []
    x = torch.randn(args.batch, width)
    for step in range(1, args.steps + args.warmup + 1):
        t0 = time.perf_counter()
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if tracker is not None:
            tracker.copy_(published, model.state_dict())
            record_bytes.append(tracker.memory_bytes)
        else:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    published[k].copy_(v)
        t1 = time.perf_counter()
        if pub is not None:
            handles.append((step, pub.publish_async(published, step=step)))
        t2 = time.perf_counter()
        if step > args.warmup:
            step_s.append(t2 - t0)
            capture_s.append(t2 - t1)
    publish_s = []
    if pub is not None:
        t = time.perf_counter()
        pub.wait()
        for step, h in handles:
            r = h.result()
            if step > args.warmup:
                changes.append(r["changes"])
        publish_s = [(time.perf_counter() - t)]
        kept = 0
        if mode == "snapshot":
            kept = os.path.getsize(pub.snapshot) + sum(v.numel() * 2 for v in published.values())  # + one staging copy
        pub.close()
    elements = sum(v.numel() for v in published.values())
    return {"step_s": step_s, "capture_s": capture_s, "changes": changes, "elements": elements,
            "record_bytes": max(record_bytes) if record_bytes else 0,
            "snapshot_mode_kept_bytes": kept if mode == "snapshot" else 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params-m", type=float, default=24, help="model parameters, millions (default 24)")
    ap.add_argument("--steps", type=int, default=6, help="measured steps per round (default 6)")
    ap.add_argument("--warmup", type=int, default=2, help="steps before measuring (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; modes interleave within each (default 3)")
    ap.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    ap.add_argument("--lr", type=float, default=2e-6, help="AdamW learning rate (default 2e-6)")
    ap.add_argument("--publish-threads", type=int, default=1, help="publisher worker threads (default 1)")
    ap.add_argument("--json", default="", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    results = {m: [] for m in ("base", "snapshot", "tracked")}
    with tempfile.TemporaryDirectory() as d:
        for rnd in range(args.rounds):
            for mode in results:
                results[mode].append(run(mode, args, os.path.join(d, f"r{rnd}")))
    med = {m: statistics.median(s for r in rs for s in r["step_s"]) for m, rs in results.items()}
    out = {"device": "cpu", "cores": os.cpu_count(), "torch": torch.__version__, "params": results["base"][0]["elements"],
           "steps_measured": args.steps * args.rounds, "lr": args.lr, "base_step_s": med["base"]}
    for m in ("snapshot", "tracked"):
        rs = results[m]
        changes = [c for r in rs for c in r["changes"]]
        out[m] = {"step_time_ratio": med[m] / med["base"],
                  "capture_ms_median": 1e3 * statistics.median(c for r in rs for c in r["capture_s"]),
                  "capture_fraction_of_base_step": statistics.median(c for r in rs for c in r["capture_s"]) / med["base"],
                  "changed_fraction_median": statistics.median(changes) / rs[0]["elements"] if changes else None}
    out["tracked"]["record_bytes_max"] = max(r["record_bytes"] for r in results["tracked"])
    out["tracked"]["record_bytes_per_changed_element"] = out["tracked"]["record_bytes_max"] / max(
        1, statistics.median(c for r in results["tracked"] for c in r["changes"]))
    out["snapshot"]["kept_bytes"] = results["snapshot"][0]["snapshot_mode_kept_bytes"]
    out["model_bf16_bytes"] = results["base"][0]["elements"] * 2
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
