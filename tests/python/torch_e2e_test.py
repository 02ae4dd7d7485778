"""End to end with a real PyTorch model (CPU): a trainer process runs AdamW steps on fp32 master weights
and publishes their bf16 copies every step with Publisher.publish_async; two receiver processes pull
every version into bf16 tensors of their own (Subscriber.pull(into=...), in place) and compare them bit
for bit with what the trainer held at that step. Exits non-zero on the first failure.

DWS_E2E_DEVICE=cuda runs the same on the GPU: the model, the published bf16 copies and the receivers'
tensors are CUDA tensors, so versions are found by the device tracker (snapshot in DWS_E2E_SNAPSHOT_MEMORY,
"device" or "host") and applied by the device scatter. Without a CUDA device it exits 77 (skipped).

Usage: torch_e2e_test.py            (runs everything; needs torch, e.g. Debian's python3-torch)
       torch_e2e_test.py trainer|receiver ...   (the roles, started by the above)
"""
import os
import subprocess
import sys
import tempfile
import time

import torch

import dws

STEPS = 8
DEVICE = os.environ.get("DWS_E2E_DEVICE", "cpu")
SNAPSHOT_MEMORY = os.environ.get("DWS_E2E_SNAPSHOT_MEMORY", "device")


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(512, 64), torch.nn.Linear(64, 256), torch.nn.GELU(),
                               torch.nn.Linear(256, 64), torch.nn.LayerNorm(64))


def bf16_state(model):
    return {name: p.detach().to(torch.bfloat16).contiguous() for name, p in model.state_dict().items()}


def trainer(store, work):
    model = make_model().to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pub = dws.Publisher(store, snapshot=os.path.join(work, "snap", "s.safetensors"), snapshot_memory=SNAPSHOT_MEMORY)
    for step in range(STEPS + 1):
        if step > 0:
            tokens = torch.randint(0, 512, (32, 16), device=DEVICE)
            loss = model(tokens).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        state = bf16_state(model)
        torch.save({k: v.cpu() for k, v in state.items()}, os.path.join(work, f"expected-{step}.pt"))  # what receivers must hold, bit for bit
        pub.publish_async(state, step=step)
    pub.close()


def bits(t):
    return t.view(torch.int16)


def receiver(store, work, name):
    sub = dws.Subscriber(store, os.path.join(work, f"{name}.safetensors"))
    template = bf16_state(make_model())
    mine = {k: torch.zeros_like(v, device=DEVICE) for k, v in template.items()}  # the engine's tensors, filled by dws
    in_memory = 0
    for step in range(STEPS + 1):
        deadline = time.time() + 120
        while True:
            try:
                r = sub.pull(into=mine, version=step)
                break
            except dws.NotFoundError:
                if time.time() > deadline:
                    raise SystemExit(f"{name}: version {step} never appeared")
                time.sleep(0.05)
        expected_path = os.path.join(work, f"expected-{step}.pt")
        expected = torch.load(expected_path)
        for k, v in expected.items():
            if not torch.equal(bits(mine[k].cpu()), bits(v)):
                raise SystemExit(f"{name}: step {step}: tensor {k} differs from the trainer's")
        # The comparison sees a single flipped bit.
        probe = mine[next(iter(mine))].detach().clone().cpu()
        bits(probe).view(-1)[0] ^= 1
        if torch.equal(bits(probe), bits(expected[next(iter(mine))])):
            raise SystemExit("the comparison cannot see a flipped bit")
        if step > 0 and r["into_changes"] is not None:
            in_memory += 1
    print(f"{name} ({DEVICE}): {STEPS + 1} versions bit-identical to the trainer's bf16 weights; {in_memory} applied in memory in O(changes)")
    if in_memory < STEPS:
        raise SystemExit(f"{name}: only {in_memory} of {STEPS} versions were applied in memory")


def main():
    if DEVICE == "cuda" and not (torch.cuda.is_available() and dws._core.cuda_devices() > 0):
        print("skipped: no CUDA device for torch and dws")
        sys.exit(77)
    if len(sys.argv) > 1:
        role, store, work = sys.argv[1], sys.argv[2], sys.argv[3]
        return trainer(store, work) if role == "trainer" else receiver(store, work, sys.argv[4])
    with tempfile.TemporaryDirectory() as work:
        store = os.path.join(work, "store")
        me = os.path.abspath(__file__)
        receivers = [subprocess.Popen([sys.executable, me, "receiver", store, work, f"receiver{i}"]) for i in range(2)]
        t = subprocess.run([sys.executable, me, "trainer", store, work])
        codes = [p.wait(timeout=300) for p in receivers]
        if t.returncode != 0 or any(codes):
            raise SystemExit(f"FAIL: trainer exit {t.returncode}, receivers {codes}")
    print(f"torch end to end ({DEVICE}): trainer + 2 receivers, every step bit-identical")


if __name__ == "__main__":
    main()
