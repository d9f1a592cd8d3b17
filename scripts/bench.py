"""Benchmark: zoneout layers (fused kernels) vs torch's own LSTM/GRU vs the reference Python loop.

Issue 6's targets, measured on whatever machine runs this: ``--device cpu`` (default; the report's GPU line
says "not measured") or ``--device cuda`` (every variant on the GPU against cuDNN's ``nn.LSTM``/``nn.GRU``,
timed with ``torch.cuda.synchronize``, peak memory from ``torch.cuda.max_memory_allocated``). A *training step* is embedding -> recurrent layer -> linear -> cross-entropy
-> backward, with zoneout masks drawn fresh inside every step (so their cost is counted). Variants
of one shape run in the same process, with the same threads, interleaved in a shuffled order in
every repetition; the ratio to torch is taken per repetition and summarised by median and IQR.
Peak memory is the growth of resident memory during ONE training step in a fresh subprocess (RSS
sampled every 0.5 ms, glibc mmap threshold fixed so freed tensors leave RSS; see ``peak_memory``).

    python scripts/bench.py                       # writes results/bench.md and results/bench.json
    python scripts/bench.py --reps 3 --shapes A   # quick look, prints only (no --out)
    python scripts/bench.py --device cuda --out results/bench_gpu   # on a GPU machine (make bench-gpu)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoneout import ZoneoutGRU, ZoneoutLSTM  # noqa: E402
import zoneout.rnn as zrnn  # noqa: E402
import zoneout.kernels as kernels  # noqa: E402

# name: (batch, seq_len, embedding, hidden, layers, vocab)
SHAPES = {
    "A": dict(B=32, T=100, E=128, H=256, L=1, V=50, what="char small"),
    "B": dict(B=32, T=100, E=128, H=1000, L=1, V=50, what="char paper"),
    "C": dict(B=20, T=35, E=650, H=650, L=2, V=10000, what="word medium"),
}
Z_C, Z_H = 0.5, 0.05  # the paper's char-level LSTM rates (Table 1)
Z_H_GRU = 0.05


class LM(nn.Module):
    """embedding -> recurrent layer -> linear decoder (the step the issue times)."""

    def __init__(self, rnn: nn.Module, s: dict):
        super().__init__()
        self.emb = nn.Embedding(s["V"], s["E"])
        self.rnn = rnn
        self.dec = nn.Linear(s["H"], s["V"])

    def forward(self, x):
        out, _ = self.rnn(self.emb(x))
        return self.dec(out)


def build(variant: str, s: dict) -> nn.Module:
    E, H, L = s["E"], s["H"], s["L"]
    rnn = {
        "torch_lstm": lambda: nn.LSTM(E, H, L),
        "zoneout_lstm_fused": lambda: ZoneoutLSTM(E, H, L, zoneout_c=Z_C, zoneout_h=Z_H, backend="fused"),
        "zoneout_lstm_reference": lambda: ZoneoutLSTM(E, H, L, zoneout_c=Z_C, zoneout_h=Z_H, backend="reference"),
        "torch_gru": lambda: nn.GRU(E, H, L),
        "zoneout_gru_fused": lambda: ZoneoutGRU(E, H, L, zoneout_h=Z_H_GRU, backend="fused"),
        "zoneout_gru_reference": lambda: ZoneoutGRU(E, H, L, zoneout_h=Z_H_GRU, backend="reference"),
    }[variant]()
    torch.manual_seed(0)
    return LM(rnn, s).to(DEVICE)


#: where every variant runs (``--device``); the CPU report is the default
DEVICE = torch.device("cpu")


def batch(s: dict):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(s["V"], (s["T"], s["B"]), generator=g)
    y = torch.randint(s["V"], (s["T"], s["B"]), generator=g)
    return x.to(DEVICE), y.to(DEVICE)


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def train_step(model, x, y):
    model.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
    loss.backward()
    return loss


def eval_step(model, x, y):
    with torch.no_grad():
        return model(x)


def time_once(fn) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()  # CUDA work is asynchronous: time until it has finished
    return time.perf_counter() - t0


def stats(xs):
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "min": xs[0], "max": xs[-1], "n": len(xs)}


def compare(s: dict, base: str, others: list, mode: str, reps: int, slow: dict) -> dict:
    """Interleaved timing of ``base`` and ``others``; per-rep ratios to ``base``."""
    x, y = batch(s)
    models = {v: build(v, s) for v in [base] + others}
    step = train_step if mode == "train" else eval_step
    for v, m in models.items():
        m.train(mode == "train")
        step(m, x, y)  # warm-up (and JIT build of the extension, if not cached)
        step(m, x, y)
    times = {v: [] for v in models}
    for r in range(reps):
        order = list(models)
        random.Random(r).shuffle(order)
        for v in order:
            if v in slow and r >= slow[v]:
                continue
            times[v].append(time_once(lambda: step(models[v], x, y)))
    out = {}
    n_base = len(times[base])
    for v, ts in times.items():
        ratios = [t / tb for t, tb in zip(ts, times[base][:len(ts)])]
        out[v] = {
            "ms": stats([t * 1e3 for t in ts]),
            "tokens_per_s": s["B"] * s["T"] / statistics.median(ts),
            "ratio": stats(ratios) if v != base else None,
            "reps": len(ts),
        }
    out["_base"] = base
    out["_reps_base"] = n_base
    return out


_MEM_CHILD = r"""
import gc, json, sys, threading, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
import importlib.util
spec = importlib.util.spec_from_file_location("bench", {script!r})
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
s = bench.SHAPES[{shape!r}]
x, y = bench.batch(s)
m = bench.build({variant!r}, s)
bench.train_step(m, *bench.batch(dict(s, T=2, B=2)))  # lazy init (extension, thread pools) at tiny size
m.zero_grad(set_to_none=False)  # gradient buffers exist before the baseline, as in a training loop
gc.collect()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * {page}
peak, done = [0], [False]
def poll():
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
base = rss()
th = threading.Thread(target=poll, daemon=True); th.start()
bench.train_step(m, x, y)
done[0] = True; th.join()
print(json.dumps({{"peak_step_mb": (max(peak[0], rss()) - base) / 2**20}}))
"""


def peak_memory_cuda(shape: str, variant: str) -> float:
    """MB by which ONE training step raises the CUDA allocator's peak above the memory held before it."""
    s = SHAPES[shape]
    m = build(variant, s)
    train_step(m, *batch(dict(s, T=2, B=2)))
    m.zero_grad(set_to_none=False)
    x, y = batch(s)
    _sync()
    torch.cuda.reset_peak_memory_stats(DEVICE)
    base = torch.cuda.memory_allocated(DEVICE)
    train_step(m, x, y)
    _sync()
    peak = torch.cuda.max_memory_allocated(DEVICE)
    del m
    torch.cuda.empty_cache()
    return (peak - base) / 2 ** 20


def peak_memory(shape: str, variant: str, threads: int) -> float:
    """MB by which ONE training step raises resident memory above the state just before it.

    Fresh subprocess per variant; RSS sampled every 0.5 ms by a thread. glibc's mmap threshold is
    fixed at 128 KiB (MALLOC_MMAP_THRESHOLD_) so freed tensor memory is returned to the OS and RSS
    tracks live tensor memory instead of allocator caching.
    """
    code = _MEM_CHILD.format(root=str(ROOT), script=str(Path(__file__).resolve()), shape=shape,
                             variant=variant, threads=threads, page=os.sysconf("SC_PAGE_SIZE"))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_step_mb"]


def hardware() -> str:
    if DEVICE.type == "cuda":
        return torch.cuda.get_device_name(DEVICE)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt_ratio(r) -> str:
    return "—" if r is None else f"{r['median']:.2f}× (IQR {r['q1']:.2f}–{r['q3']:.2f})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="A,B,C")
    ap.add_argument("--reps", type=int, default=10, help="interleaved repetitions (>= 10 for the report)")
    ap.add_argument("--reference-reps", type=int, default=3, help="repetitions of the slow reference loop")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where every variant runs")
    ap.add_argument("--out", default=None, help="write <out>.md and <out>.json (e.g. results/bench)")
    ap.add_argument("--render", default=None, metavar="JSON", help="only re-render <JSON>'s markdown next to it")
    args = ap.parse_args(argv)
    if args.render:
        rep = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(to_markdown(rep))
        return
    global DEVICE
    try:
        DEVICE = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if DEVICE.type not in ("cpu", "cuda"):
        ap.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False); "
                 "run on a GPU machine, or without --device for the CPU report")
    torch.set_num_threads(args.threads)
    ext = kernels.extension_loaded()
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    t_start = time.time()
    load0 = os.getloadavg()
    rows = []
    for name in shapes:
        s = SHAPES[name]
        print(f"shape {name}: {s}", flush=True)
        res = compare(s, "torch_lstm", ["zoneout_lstm_fused", "zoneout_lstm_reference"],
                      "train", args.reps,
                      {"zoneout_lstm_reference": args.reference_reps})
        rows.append({"shape": name, "what": "LSTM train step", "res": res})
        print(" ", name, "LSTM train", fmt_ratio(res["zoneout_lstm_fused"]["ratio"]), flush=True)
        res = compare(s, "torch_lstm", ["zoneout_lstm_fused"], "eval", args.reps, {})
        rows.append({"shape": name, "what": "LSTM eval forward", "res": res})
        print(" ", name, "LSTM eval", fmt_ratio(res["zoneout_lstm_fused"]["ratio"]), flush=True)
        if name == "A":
            res = compare(s, "torch_gru", ["zoneout_gru_fused", "zoneout_gru_reference"],
                          "train", args.reps,
                          {"zoneout_gru_reference": args.reference_reps})
            rows.append({"shape": name, "what": "GRU train step", "res": res})
            print(" ", name, "GRU train", fmt_ratio(res["zoneout_gru_fused"]["ratio"]), flush=True)
    memory = {}
    if not args.no_memory:
        for name in shapes:
            for v in ("torch_lstm", "zoneout_lstm_fused"):
                memory[f"{name}/{v}"] = (peak_memory_cuda(name, v) if DEVICE.type == "cuda"
                                         else peak_memory(name, v, args.threads))
            print("  memory", name, memory[f"{name}/torch_lstm"], memory[f"{name}/zoneout_lstm_fused"], flush=True)
    meta = {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "hardware": hardware(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "cpp_extension": ext,
        "gemm_tile": kernels._build.gemm_tile() if ext else "none (no C++ extension)",
        "loadavg_before": load0,
        "loadavg_after": os.getloadavg(),
        "seconds": round(time.time() - t_start, 1),
        "rates": {"lstm": {"zoneout_c": Z_C, "zoneout_h": Z_H}, "gru": {"zoneout_h": Z_H_GRU}},
        "cuda": torch.cuda.is_available(),
        "device": DEVICE.type,
    }
    report = {"meta": meta, "shapes": SHAPES, "rows": rows, "peak_step_mb": memory}
    md = to_markdown(report)
    print(md)
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(report, indent=1) + "\n")
        Path(args.out + ".md").write_text(md)


def _spread(rep: dict) -> float:
    """Median over rows of the baseline's (q3 - q1) / median in percent: how much the same work's time moved."""
    xs = [(r["res"][r["res"]["_base"]]["ms"]["q3"] - r["res"][r["res"]["_base"]]["ms"]["q1"])
          / r["res"][r["res"]["_base"]]["ms"]["median"] * 100 for r in rep["rows"]]
    return statistics.median(xs) if xs else float("nan")


# issue 6's targets: (measurement, variant, shapes, bound on the median ratio to torch), per device
TARGETS = {
    "cpu": [("LSTM train step", "zoneout_lstm_fused", "ABC", 1.15), ("GRU train step", "zoneout_gru_fused", "A", 0.9),
            ("LSTM eval forward", "zoneout_lstm_fused", "ABC", 1.15)],
    "cuda": [("LSTM train step", "zoneout_lstm_fused", "ABC", 1.2)],
}
GPU_MIN_SPEEDUP = 3.0  # on GPU the shipped layer must also beat the reference Python loop by this factor


def _targets(rep: dict) -> list:
    """Lines of a table: each target of issue 6 for this device against the median ratio measured above."""
    device = rep["meta"].get("device", "cpu")
    L = ["", f"Targets of issue 6 on this run ({'GPU' if device == 'cuda' else 'CPU'}; median ratio of the shipped "
         "layer; met = median within the bound):", "",
         "| target | shape | bound | median ratio (IQR) | met |", "|---|---|---|---|---|"]
    for what, variant, shapes, bound in TARGETS[device]:
        for row in rep["rows"]:
            r = row["res"].get(variant)
            if row["what"] != what or row["shape"] not in shapes or r is None or r["ratio"] is None:
                continue
            med = r["ratio"]["median"]
            L.append(f"| {what} | {row['shape']} | ≤ {bound}× | {fmt_ratio(r['ratio'])} | "
                     f"{'yes' if med <= bound else '**no**'} |")
    if device == "cuda":
        for row in rep["rows"]:
            fused, ref = row["res"].get("zoneout_lstm_fused"), row["res"].get("zoneout_lstm_reference")
            if row["what"] != "LSTM train step" or not fused or not ref:
                continue
            speedup = ref["ms"]["median"] / fused["ms"]["median"]
            L.append(f"| LSTM train step, speed-up over the reference loop | {row['shape']} | ≥ {GPU_MIN_SPEEDUP:g}× | "
                     f"{speedup:.2f}× | {'yes' if speedup >= GPU_MIN_SPEEDUP else '**no**'} |")
    mem = rep.get("peak_step_mb") or {}
    for name in rep["shapes"]:
        a, b = mem.get(f"{name}/torch_lstm"), mem.get(f"{name}/zoneout_lstm_fused")
        if a:
            met = "yes" if b / a <= 1.3 else "**no**"
            L.append(f"| peak memory, training step | {name} | ≤ 1.3× | {b / a:.2f}× | {met} |")
    return L


def to_markdown(rep: dict) -> str:
    m = rep["meta"]
    gpu = m.get("device", "cpu") == "cuda"
    L = [
        "# Benchmark: fused zoneout kernels vs torch (issue 6)" + (", GPU" if gpu else ""),
        "",
        f"Generated by `{m['command']}` on {m['generated']} (file written by the script; do not edit).",
        "",
        f"Hardware: {m['hardware']}, {m['cores']} cores visible, **{m['threads']} torch thread(s)**; "
        f"torch {m['torch_version']}, Python {m['python']}; C++ extension: {'yes' if m['cpp_extension'] else 'NO (pure-PyTorch fallback)'}; "
        f"run took {m['seconds']} s.",
        f"Load average (1/5/15 min) before: {', '.join(f'{x:.1f}' for x in m['loadavg_before'])}; "
        f"after: {', '.join(f'{x:.1f}' for x in m['loadavg_after'])} — the machine is shared with other "
        "developers' jobs, so absolute times are noisy; ratios are taken per interleaved repetition.",
        f"Noise: the torch baseline's own ms/step varied by {_spread(rep):.0f}% (median over rows of IQR / median "
        "across repetitions); a load average above the 2 cores means every job, this one included, waits for a core.",
        "",
        "Step = embedding → layer → linear → cross-entropy → backward; zoneout masks drawn inside every step "
        f"(LSTM z_c={m['rates']['lstm']['zoneout_c']}, z_h={m['rates']['lstm']['zoneout_h']}; "
        f"GRU z_h={m['rates']['gru']['zoneout_h']}). torch baselines have no zoneout. "
        "Ratio = time / torch time in the same repetition: median (IQR) over the repetitions.",
        "",
        f"Device: **{'CUDA (' + m['hardware'] + ')' if gpu else 'CPU'}**; every variant runs there"
        + (" (each timing waits for the GPU: `torch.cuda.synchronize` before and after)." if gpu else "."),
        "",
        "Variants: `torch_*` = `torch.nn.LSTM`/`GRU` (" + ("cuDNN" if gpu else "oneDNN RNN on CPU") + "), no zoneout; "
        "`zoneout_*_fused` = "
        "`zoneout.ZoneoutLSTM`/`GRU(backend=\"fused\")` as shipped (masks drawn with `zoneout.kernels.keep_mask`, "
        "input projection through `zoneout.kernels.input_projection`, per-step products in `small_gemm.h`'s "
        f"{m.get('gemm_tile', 'register')} tile); "
        "`zoneout_*_reference` = the same layer with `backend=\"reference\"` (Python loop over the cell), fewer reps.",
        "",
        "| shape | B×T, E→H, layers, vocab | measurement | variant | ms/step median (IQR) | tokens/s | ratio to torch | reps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rep["rows"]:
        s = rep["shapes"][row["shape"]]
        res = row["res"]
        for v, r in res.items():
            if v.startswith("_"):
                continue
            ms = r["ms"]
            L.append(
                f"| {row['shape']} ({s['what']}) | {s['B']}×{s['T']}, {s['E']}→{s['H']}, {s['L']}, {s['V']} | {row['what']} | "
                f"`{v}` | {ms['median']:.1f} ({ms['q1']:.1f}–{ms['q3']:.1f}) | {r['tokens_per_s']:,.0f} | "
                f"{fmt_ratio(r['ratio']) if v != res['_base'] else '1 (baseline)'} | {r['reps']} |"
            )
    L += _targets(rep)
    if rep["peak_step_mb"] and gpu:
        L += ["", "Peak memory of one training step: `torch.cuda.max_memory_allocated` during the step minus the memory "
              "allocated just before it; MB:", "", "| shape | torch_lstm | zoneout_lstm_fused | ratio |", "|---|---|---|---|"]
        L += [f"| {n} | {rep['peak_step_mb'][n + '/torch_lstm']:.1f} | {rep['peak_step_mb'][n + '/zoneout_lstm_fused']:.1f} | "
              f"{rep['peak_step_mb'][n + '/zoneout_lstm_fused'] / rep['peak_step_mb'][n + '/torch_lstm']:.2f}× |"
              for n in rep["shapes"] if n + "/torch_lstm" in rep["peak_step_mb"]]
    elif rep["peak_step_mb"]:
        L += ["", "Peak memory of one training step: growth of resident memory (RSS sampled every 0.5 ms) during "
              "one step over the state just before it, fresh subprocess per variant, glibc mmap threshold fixed at "
              "128 KiB so freed tensors leave RSS; MB (includes allocator overhead, ~±1 MB):", "",
              "| shape | torch_lstm | zoneout_lstm_fused | ratio |", "|---|---|---|---|"]
        for name in rep["shapes"]:
            a = rep["peak_step_mb"].get(f"{name}/torch_lstm")
            b = rep["peak_step_mb"].get(f"{name}/zoneout_lstm_fused")
            if a is not None:
                L.append(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}× |")
    if not gpu:
        L += ["", "GPU (≤ 1.2× cuDNN target): **not measured yet** — this file was measured on the CPU"
              + ("" if m.get("cuda") else " of a machine without a GPU")
              + ". The kernels have no GPU-specific path: on CUDA tensors the layers run the pure-PyTorch twin of the "
              "fused kernels (one autograd node per sequence, a Python loop over time steps). "
              "`make bench-gpu` on a GPU machine measures it and writes `results/bench_gpu.md`."]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
