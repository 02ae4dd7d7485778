"""Runnable example: a trainer publishes bf16 weights every step; an "engine" follows through dws's glue.

The engine here is a torch module with the load_weights(iterable of (name, tensor)) contract that vLLM
and SGLang models implement. With a real engine the same calls are:

    # vLLM: the glue is mixed into every worker
    llm = vllm.LLM(model=path, worker_extension_cls="dws.engines.VllmWorkerExtension")
    llm.collective_rpc("dws_update", args=(store, "/local/run1-rank{rank}.safetensors"))

    # SGLang: started with --custom-weight-loader dws.engines.sglang_weight_loader
    engine.update_weights_from_tensor(named_tensors=dws.engines.sglang_request(store, "/local/run1.safetensors"),
                                      load_format="dws.engines.sglang_weight_loader")

Run: PYTHONPATH=build/python python3 examples/engine_glue.py   (needs torch)
"""
import os
import tempfile

import torch

import dws
import dws.engines


class Engine(torch.nn.Module):
    """Stands in for an engine's model: loads checkpoint-named tensors into its parameters."""

    def __init__(self, shapes):
        super().__init__()
        self.weights = {name: torch.zeros(shape, dtype=torch.bfloat16) for name, shape in shapes.items()}

    def load_weights(self, weights):
        for name, tensor in weights:
            self.weights[name].copy_(tensor)


class SentinelEngine(Engine):
    """A loader that keeps the current value where the incoming tensor is NaN (slime-style delta path)."""

    def load_weights(self, weights):
        for name, tensor in weights:
            self.weights[name].copy_(torch.where(torch.isnan(tensor), self.weights[name], tensor))


class VllmWorker(dws.engines.VllmWorkerExtension):
    """Stands in for a vLLM worker, into which vLLM mixes the extension."""

    def __init__(self, model, rank=0):
        self.model_runner = type("ModelRunner", (), {"model": model})()
        self.rank = rank


def same_bits(engine, published):
    return all(torch.equal(engine.weights[k].view(torch.int16), published[k].view(torch.int16)) for k in published)


def main():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with tempfile.TemporaryDirectory() as d:
        store = os.path.join(d, "store")
        published = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}
        tracker = dws.ChangeTracker()
        pub = dws.Publisher(store, tracker=tracker, staging_dir=os.path.join(d, "stage"))
        pub.publish(published, step=0)
        shapes = {k: v.shape for k, v in published.items()}
        # Three engines follow: a generic one, a "vLLM worker" (the extension mixed into a stand-in worker
        # that has model_runner.model and a rank, as vLLM's workers do) and an "SGLang" one driven through
        # the custom loader in NaN-sentinel mode (its load_weights keeps the current value where it sees NaN).
        engine = Engine(shapes)
        updater = dws.engines.EngineUpdater(store, os.path.join(d, "engine.safetensors"))
        vllm_worker = VllmWorker(Engine(shapes))
        sglang_engine = SentinelEngine(shapes)
        for step in range(1, 6):
            loss = model(torch.randn(32, 64)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            tracker.copy_(published, model.state_dict())  # fp32 -> bf16, changes noted on the way
            pub.publish_async(published, step=step)
            pub.wait()
            r = updater.update(engine)
            vllm_worker.dws_update(store, os.path.join(d, "vllm-rank{rank}.safetensors"))
            s = dws.engines.sglang_weight_loader(
                sglang_engine, dws.engines.sglang_request(store, os.path.join(d, "sglang.safetensors"), mode="nan_sentinel"))
            same = all(same_bits(e, published) for e in (engine, vllm_worker.model_runner.model, sglang_engine))
            print(f"step {step}: version {r['version']}, {r['loaded_tensors']} tensors loaded, sentinel mode sent "
                  f"{s['loaded_elements']} elements; 3 engines {'bit-identical' if same else 'DIFFERENT'}")
            if not same:
                raise SystemExit(1)
        pub.close()


if __name__ == "__main__":
    main()
