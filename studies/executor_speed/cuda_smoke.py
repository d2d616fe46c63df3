"""CUDA smoke check of the graph-captured chain and SPD paths on a tiny model (run on the GPU machine):

    python studies/executor_speed/cuda_smoke.py graph|eager|spd

`graph` logs every captured step's key and inputs and syncs after each replay, so a clobbered input shows as
garbage token ids before the step that reads it."""

import sys

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "tests"))
from executor_tiny import prompts, tiny_model

from executor.graphs import GraphCache, GraphedStep
from executor.schedules import run_method
from executor.schedules.chain import run_chain
from executor.schedules.common import DecodeOptions
from executor.schedules.dispatch import _eagle3_head

which = sys.argv[1]
model = tiny_model(layers=4, device="cuda")
ps = prompts(count=2, seed=5)
opts = DecodeOptions(max_new_tokens=24, synthetic_alpha=0.8)
head = _eagle3_head(model, None, 0)
if which == "eager":
    r = run_chain(model, head, ps, "eagle3", 3, opts, graphs=GraphCache(enabled=False))
    print("eager cuda chain ok", r.summary()["realised_alpha"])
elif which == "graph":
    orig = GraphedStep.__call__

    def call(self, *inputs):
        for i, x in enumerate(inputs):
            print("  in", i, tuple(x.shape), x.dtype, x.flatten()[:6].tolist() if x.numel() < 64 else "")
        out = orig(self, *inputs)
        torch.cuda.synchronize()
        return out

    GraphedStep.__call__ = call
    orig_run = GraphCache.run

    def run(self, key, fn, *inputs):
        print("KEY", key[:-1] if isinstance(key, tuple) else key, flush=True)
        return orig_run(self, key, fn, *inputs)

    GraphCache.run = run
    r = run_chain(model, head, ps, "eagle3", 3, opts, graphs=GraphCache())
    print("graph cuda chain ok", r.summary()["realised_alpha"])
else:
    r = run_method("spd", model, ps, stages=2, synthetic_alpha=0.8, max_new_tokens=24)
    print("spd cuda ok", r.summary()["realised_alpha"])
