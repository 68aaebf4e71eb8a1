"""A/B, same engine and run, one thread: `bridgegan translate --samples K`'s old path (K
translate calls, the trunk and encoder each time) against one translate_samples call.
Usage: python ab_samples.py RESOLUTION N K REPS (a seeded paper-width model)."""
import sys, time, statistics, torch
from bridgegan.engine import Engine
from bridgegan.reference import BridgeGAN
from bridgegan.reference.config import BridgeGANConfig
torch.set_num_threads(1)
res, n, k, reps = (int(a) for a in sys.argv[1:5])
torch.manual_seed(0)
model = BridgeGAN(BridgeGANConfig.preset(res)).eval()
eng = Engine(model)
x = torch.rand(n, 3, res, res) * 2 - 1
ys = eng.classify(x)
old = lambda: [eng.translate(x, {"Male": 1}, source=ys, seed=[3 + j] * n) for j in range(k)]
new = lambda: eng.translate_samples(x, {"Male": 1}, k, seed=3, source=ys)
o, w = torch.stack(old(), 1), new()
print("max diff", (o - w).abs().max().item())
t = {"old": [], "new": []}
for _ in range(reps):
    for name, fn in (("old", old), ("new", new)):
        s = time.perf_counter(); fn(); t[name].append(time.perf_counter() - s)
mo, mn = statistics.median(t["old"]), statistics.median(t["new"])
print(f"{res}px N={n} K={k}: K translate calls {mo*1e3:.0f} ms, translate_samples {mn*1e3:.0f} ms, ratio {mo/mn:.2f}x  raw old={[round(v*1e3) for v in t['old']]} new={[round(v*1e3) for v in t['new']]}")
