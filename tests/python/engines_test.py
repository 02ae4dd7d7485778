"""Engine glue (dws.engines) against real torch modules that implement the engines' load_weights contract:
a vLLM-style model with fused qkv_proj / gate_up_proj (the checkpoint's q/k/v and gate/up land in slices of
one parameter), driven through VllmWorkerExtension.dws_update; and a NaN-aware model driven through the
SGLang custom loader in nan_sentinel mode. Every version must leave the engine bit-identical to the
trainer's weights; a change to NaN shows the sentinel mode's documented loss. Also runs the example.
Runs on /usr/bin/python3 with Debian's python3-torch; PYTHONPATH=build/python."""
import os
import subprocess
import sys
import tempfile

import torch

import dws
import dws.engines

HIDDEN, INTER = 32, 48


def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)


def checkpoint_weights(gen):
    """The trainer's weights in checkpoint (HF) coordinates, bf16."""
    w = {}
    for layer in range(2):
        p = f"model.layers.{layer}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            w[p + f"self_attn.{n}.weight"] = torch.randn(HIDDEN, HIDDEN, generator=gen)
        w[p + "mlp.gate_proj.weight"] = torch.randn(INTER, HIDDEN, generator=gen)
        w[p + "mlp.up_proj.weight"] = torch.randn(INTER, HIDDEN, generator=gen)
        w[p + "mlp.down_proj.weight"] = torch.randn(HIDDEN, INTER, generator=gen)
    w["model.embed_tokens.weight"] = torch.randn(100, HIDDEN, generator=gen)
    return {k: v.to(torch.bfloat16) for k, v in w.items()}


class FusedEngineModel(torch.nn.Module):
    """vLLM-style: q/k/v fused into qkv_proj and gate/up into gate_up_proj; load_weights takes
    checkpoint names and copies each into its slice (as vLLM's stacked_params_mapping does)."""
    STACKED = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
               "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}

    def __init__(self):
        super().__init__()
        self.params = torch.nn.ParameterDict()
        for layer in range(2):
            self.params[f"l{layer}_qkv_proj"] = torch.nn.Parameter(torch.zeros(3 * HIDDEN, HIDDEN, dtype=torch.bfloat16), requires_grad=False)
            self.params[f"l{layer}_o_proj"] = torch.nn.Parameter(torch.zeros(HIDDEN, HIDDEN, dtype=torch.bfloat16), requires_grad=False)
            self.params[f"l{layer}_gate_up_proj"] = torch.nn.Parameter(torch.zeros(2 * INTER, HIDDEN, dtype=torch.bfloat16), requires_grad=False)
            self.params[f"l{layer}_down_proj"] = torch.nn.Parameter(torch.zeros(HIDDEN, INTER, dtype=torch.bfloat16), requires_grad=False)
        self.params["embed"] = torch.nn.Parameter(torch.zeros(100, HIDDEN, dtype=torch.bfloat16), requires_grad=False)
        self.loaded = []

    def target(self, name):
        if name == "model.embed_tokens.weight":
            return self.params["embed"], 0, None
        layer = name.split(".")[2]
        short = name.split(".")[-2]
        if short in self.STACKED:
            fused, shard = self.STACKED[short]
            param = self.params[f"l{layer}_{fused}"]
            rows = param.shape[0] // (3 if fused == "qkv_proj" else 2)
            return param, shard * rows, rows
        return self.params[f"l{layer}_{short}"], 0, None

    def load_weights(self, weights):
        for name, tensor in weights:
            param, start, rows = self.target(name)
            dst = param.data if rows is None else param.data[start:start + rows]
            self.write(dst, tensor)
            self.loaded.append(name)

    def write(self, dst, tensor):
        dst.copy_(tensor)

    def as_checkpoint(self, names):
        out = {}
        for name in names:
            param, start, rows = self.target(name)
            out[name] = param.data if rows is None else param.data[start:start + rows]
        return out


class SentinelEngineModel(FusedEngineModel):
    """A loader that keeps the current value where the incoming tensor is NaN (slime's delta path)."""

    def write(self, dst, tensor):
        dst.copy_(torch.where(torch.isnan(tensor), dst, tensor))


def same_bits(engine, weights):
    got = engine.as_checkpoint(weights)
    return all(torch.equal(got[k].view(torch.int16), weights[k].view(torch.int16)) for k in weights)


class FakeVllmWorker(dws.engines.VllmWorkerExtension):
    """What vLLM mixes the extension into: a worker with model_runner.model and a rank."""

    def __init__(self, model, rank):
        self.model_runner = type("Runner", (), {"model": model})()
        self.rank = rank


def train(weights, gen, step):
    for k in list(weights)[step % 3::3]:  # a few tensors change a little each step
        flat = weights[k].view(-1)
        idx = torch.randint(0, flat.numel(), (5,), generator=gen)
        flat[idx] = (flat[idx].float() + 0.5).to(torch.bfloat16)


def main():
    gen = torch.Generator().manual_seed(3)
    with tempfile.TemporaryDirectory() as d:
        store = os.path.join(d, "store")
        weights = checkpoint_weights(gen)
        pub = dws.Publisher(store, snapshot=os.path.join(d, "snap", "s.safetensors"), anchor_every=100)
        pub.publish(weights, step=0)
        workers = [FakeVllmWorker(FusedEngineModel(), rank) for rank in range(2)]
        sentinel = SentinelEngineModel()
        for step in range(1, 6):
            before = {k: v.clone() for k, v in weights.items()}
            if step > 1:
                train(weights, gen, step)
                pub.publish(weights, step=step)
            changed_elements = sum(int((before[k].view(torch.int16) != weights[k].view(torch.int16)).sum()) for k in weights)
            for w in workers:
                r = w.dws_update(store, os.path.join(d, "vllm-rank{rank}.safetensors"))
                check(same_bits(w.model_runner.model, weights), f"vLLM worker {w.rank}, step {step}: engine differs from the trainer")
                if step > 1:
                    changed = {k for k in weights if k in w.model_runner.model.loaded[-r["loaded_tensors"]:]}
                    check(0 < r["loaded_tensors"] < len(weights), f"step {step}: loaded {r['loaded_tensors']} tensors, not only the changed ones")
                    check(len(changed) == r["loaded_tensors"], "loaded names are checkpoint names")
            r = dws.engines.sglang_weight_loader(sentinel, dws.engines.sglang_request(store, os.path.join(d, "sglang.safetensors"),
                                                                                       mode="nan_sentinel"))
            check(same_bits(sentinel, weights), f"SGLang sentinel, step {step}: engine differs from the trainer")
            if step > 1:
                check(r["nan_changes_lost"] == 0 and r["loaded_elements"] == changed_elements > 0,
                      f"step {step}: sentinel mode sent {r['loaded_elements']} elements, {changed_elements} changed")
        check(os.path.exists(os.path.join(d, "vllm-rank1.safetensors")), "each vLLM worker keeps its own local checkpoint")

        # A change to NaN: exact mode carries it; the sentinel mode cannot, and says so.
        name = "model.layers.0.mlp.down_proj.weight"
        weights[name].view(-1)[7] = float("nan")
        pub.publish(weights, step=99)
        r = workers[0].dws_update(store, os.path.join(d, "vllm-rank{rank}.safetensors"))
        check(same_bits(workers[0].model_runner.model, weights), "exact mode lost a NaN")
        r = dws.engines.sglang_weight_loader(sentinel, dws.engines.sglang_request(store, os.path.join(d, "sglang.safetensors"),
                                                                                   mode="nan_sentinel"))
        check(r["nan_changes_lost"] == 1, f"sentinel mode did not report the NaN it lost: {r['nan_changes_lost']}")
        check(not same_bits(sentinel, weights), "sentinel mode is documented lossy for NaN, yet matched")
        try:
            dws.engines.sglang_weight_loader(sentinel, [("x", torch.zeros(1))])
            check(False, "a loader call without a request was accepted")
        except ValueError:
            pass
        pub.close()

    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "engine_glue.py")
    out = subprocess.run([sys.executable, example], capture_output=True, text=True, timeout=300)
    check(out.returncode == 0 and "bit-identical" in out.stdout, f"examples/engine_glue.py failed:\n{out.stdout}\n{out.stderr}")
    print("engine glue: vLLM worker extension (fused qkv/gate_up, 2 workers), SGLang loader in nan_sentinel mode, "
          "NaN loss reported, example runs: all checks passed")


if __name__ == "__main__":
    main()
