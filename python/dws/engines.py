"""Glue for inference engines that load weights through ``model.load_weights(iterable of (name, tensor))``
in checkpoint coordinates: vLLM (a worker extension), SGLang (a custom weight loader), and any torch
module that follows the same contract. Plain Python; torch is imported only when an update runs.

The engines cannot run in dws's CI: the glue is tested against torch modules implementing the same
``load_weights`` contract (tests/python/engines_test.py). Engines fuse and shard parameters (qkv_proj,
gate_up_proj, tensor parallelism), so their tensors are not the checkpoint's and cannot be patched in
place from here; the glue hands the engine's own loader the tensors a version changed. Where a model's
parameters are the checkpoint's tensors one to one, ``Subscriber.pull(into=model.state_dict())``
applies in O(changes) instead.

Modes:
- ``"changed"`` (exact): every tensor a pulled patch changed, whole, as the local checkpoint now holds it.
- ``"nan_sentinel"`` (compatibility, lossy for NaN): dense tensors holding the new value at changed
  elements and NaN everywhere else, for loaders that keep the current value where they see NaN (slime's
  and vLLM's checkpoint-coordinate delta paths). A changed element whose new value is itself NaN cannot
  be told from "unchanged": the engine keeps its old value. ``update`` counts those in
  ``"nan_changes_lost"``; use ``"changed"`` when that must not happen. Tensors of non-float dtypes have
  no NaN and are sent whole.
"""
import json
import threading

import numpy as np

from dws import _core
from dws._tensors import TORCH_ATTR, tensor_arg
from dws.subscriber import Subscriber

MODES = ("changed", "nan_sentinel")


class EngineUpdater:
    """Pulls a store's versions into a local checkpoint and loads what changed into an engine model.

    The first update (and any update that restored an anchor) loads every tensor, unless
    ``engine_at_local=True`` says the engine was started from the local checkpoint as it is now.
    """

    def __init__(self, store, local, *, mode="changed", engine_at_local=False, threads=0, endpoint=""):
        if mode not in MODES:
            raise ValueError(f"dws: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.subscriber = Subscriber(store, local, threads=threads, endpoint=endpoint)
        self._loaded_once = engine_at_local
        self._lock = threading.Lock()

    def update(self, model, version=None):
        """Brings the local checkpoint to `version` (default: the latest) and calls
        ``model.load_weights`` with what changed. Returns pull's dict plus "loaded_tensors",
        "loaded_elements" (elements handed to the engine), "mode" and "nan_changes_lost"."""
        with self._lock:
            positions = {}  # name -> [position arrays], over every patch of this pull

            def on_patch(patch):
                for name, _ in patch.tensors:
                    if self.mode == "nan_sentinel":
                        positions.setdefault(name, []).append(patch.positions(name))
                    else:
                        positions.setdefault(name, None)

            result = self.subscriber.pull(on_patch=on_patch, version=version)
            specs = {name: (dtype, shape) for name, dtype, shape in _core.tensor_names(self.subscriber.local)}
            whole = result["used_anchor"] or not self._loaded_once
            names = sorted(specs) if whole else sorted(positions)
            stats = {"loaded_tensors": len(names), "loaded_elements": 0, "nan_changes_lost": 0}

            def weights():
                for name in names:
                    dtype, shape = specs[name]
                    tensor = _load(self.subscriber.local, name, dtype, shape)
                    if self.mode == "nan_sentinel" and not whole and tensor.is_floating_point():
                        changed = np.unique(np.concatenate(positions[name]))
                        tensor, lost = _sentinel(tensor, changed)
                        stats["nan_changes_lost"] += lost
                        stats["loaded_elements"] += len(changed)
                    else:
                        stats["loaded_elements"] += tensor.numel()
                    yield name, tensor

            if names:
                model.load_weights(weights())
            self._loaded_once = True
            result.update(stats, mode=self.mode)
            return result


def _load(local, name, dtype, shape):
    import torch
    t = torch.empty([int(d) for d in shape], dtype=getattr(torch, TORCH_ATTR[dtype]))
    _core.load_into(local, [tensor_arg(name, t)])
    return t


def _sentinel(tensor, positions):
    """The dense NaN-sentinel form of `tensor`'s changed elements; and how many of them are NaN (lost)."""
    import torch
    index = torch.from_numpy(positions.astype(np.int64))
    values = tensor.reshape(-1)[index]
    out = torch.full_like(tensor, float("nan"))
    out.reshape(-1)[index] = values
    return out, int(torch.isnan(values).sum())


# ---- vLLM: --worker-extension-cls dws.engines.VllmWorkerExtension ----

class VllmWorkerExtension:
    """Mixed into each vLLM worker by ``LLM(..., worker_extension_cls="dws.engines.VllmWorkerExtension")``.
    The driver calls ``llm.collective_rpc("dws_update", args=(store, local))``; every worker pulls into its
    own local checkpoint (``local`` may contain ``{rank}``) and loads what changed through the model's
    ``load_weights``, which shards and fuses as it does at startup. Returns pull's dict per worker."""

    def dws_update(self, store, local, version=None, mode="changed", engine_at_local=False):
        """Pulls `store` into this worker's `local` checkpoint ("{rank}" is replaced by the worker's rank)
        and loads what changed into the worker's model (EngineUpdater.update); returns pull's dict."""
        local = local.format(rank=getattr(self, "rank", 0))
        key = (store, local, mode)
        updaters = self.__dict__.setdefault("_dws_updaters", {})
        if key not in updaters:
            updaters[key] = EngineUpdater(store, local, mode=mode, engine_at_local=engine_at_local)
        return updaters[key].update(self.model_runner.model, version)


# ---- SGLang: --custom-weight-loader dws.engines.sglang_weight_loader ----

REQUEST_NAME = "__dws_update__"
_sglang_updaters = {}


def sglang_request(store, local, version=None, mode="changed", engine_at_local=False):
    """The named tensors for ``engine.update_weights_from_tensor(named_tensors=..., load_format=
    "dws.engines.sglang_weight_loader")``: one small uint8 tensor carrying the request (store, local
    path, version, mode), not weights; each worker pulls the weights itself."""
    import torch
    body = json.dumps({"store": store, "local": local, "version": version, "mode": mode, "engine_at_local": engine_at_local})
    return [(REQUEST_NAME, torch.frombuffer(bytearray(body.encode()), dtype=torch.uint8))]


def sglang_weight_loader(model, named_tensors):
    """SGLang's custom weight loader contract: ``loader(model, named_tensors)``. Expects the request
    from sglang_request; pulls and loads what changed into `model` (``local`` may contain ``{rank}``,
    the tensor-parallel rank when torch.distributed is initialised). Returns pull's dict."""
    named = dict(named_tensors)
    if REQUEST_NAME not in named:
        raise ValueError(f"dws: sglang_weight_loader expects the request made by dws.engines.sglang_request, got {sorted(named)[:3]}")
    req = json.loads(bytes(named[REQUEST_NAME].cpu().numpy().tobytes()).decode())
    local = req["local"].format(rank=_rank())
    key = (req["store"], local, req["mode"])
    if key not in _sglang_updaters:
        _sglang_updaters[key] = EngineUpdater(req["store"], local, mode=req["mode"], engine_at_local=req["engine_at_local"])
    return _sglang_updaters[key].update(model, req["version"])


def _rank():
    import torch.distributed as dist
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
