"""Benchmark ``pac2d`` against a naive ``F.unfold`` PAC and ``nn.Conv2d``: forward + backward.

float32, B=8, Cin=Cout=64, 64 x 64, k=3 and k=5, all measured in one run. Prints a table and
writes ``benchmarks/results/pac2d.json`` (``pac2d-cuda.json`` with ``--device cuda``).

On CUDA each pass is timed up to ``torch.cuda.synchronize()``, and the peak memory is
``torch.cuda.max_memory_allocated`` over one pass less what was allocated before it, in the
same process (the caching allocator keeps exact statistics, so no subprocess is needed).

Time: the median of ``--repeats`` forward+backward passes after ``--warmup`` passes; the three
methods take turns within each repeat so that a load change on the machine hits them alike. The
fastest and slowest pass and the load average before and after the run are recorded too: on a
shared machine they say how far to trust the medians. One intra-op thread by default
(``--threads`` to change it): this machine's two cores are shared, and with two threads each
op's OpenMP barrier waits for a descheduled peer (about 20 ms an op at a load average of 18,
even for a 36 KiB fill), which times the scheduler, and penalises a method by its op count
rather than by its work.

Peak extra memory: torch's CPU allocator keeps no statistics, so each (method, k) runs in a
fresh subprocess that builds its inputs, does one warm-up pass, drops the gradients, then resets
the kernel's resident-set high-water mark (``5`` written to ``/proc/self/clear_refs``), records
``VmRSS``, runs one forward+backward pass and reads ``VmHWM``: the difference is the peak memory
the pass added (activations, temporaries and the gradients it returns). glibc's malloc is pinned
to ``mmap`` for every block over 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so freed tensors go back to
the kernel at once and the warm-up leaves no cached heap that would hide the second pass's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from matter_model.atomic_io import atomic_write_text
from matter_model.ops import pac2d

RESULTS = Path(__file__).parent / "results"
CPU = torch.device("cpu")
B, C, H, W = 8, 64, 64, 64
KERNELS = (3, 5)
METHODS = ("pac2d", "unfold", "conv2d")


def unfold_pac(x, kernel, weight, bias):
    """The naive PAC: the unfolded (B, Cin*k*k, H*W) tensor, scaled, then one contraction."""
    b, c, h, w = x.shape
    k = weight.shape[-1]
    cols = F.unfold(x, k, padding=k // 2).view(b, c, k * k, h * w)
    cols = cols * kernel.view(b, 1, k * k, h * w)
    out = torch.einsum("ock,bckn->bon", weight.reshape(weight.shape[0], c, k * k), cols)
    return out.view(b, -1, h, w) + bias.view(1, -1, 1, 1)


def make_pass(
    method: str, k: int, device: torch.device = CPU
) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """A forward+backward pass of ``method`` at kernel size ``k`` on ``device`` and the tensors
    it grads; on CUDA the pass waits for the device to finish."""
    g = torch.Generator().manual_seed(k)

    def leaf(t: torch.Tensor) -> torch.Tensor:
        return t.to(device).requires_grad_()

    x = leaf(torch.randn(B, C, H, W, generator=g))
    if method == "conv2d":
        conv = nn.Conv2d(C, C, k, padding=k // 2).to(device)
        leaves = [x, *conv.parameters()]

        def forward() -> torch.Tensor:
            return conv(x)
    else:
        kernel = leaf(torch.rand(B, k * k, H, W, generator=g))
        weight = leaf(torch.randn(C, C, k, k, generator=g) / (C * k))
        bias = leaf(torch.zeros(C))
        leaves = [x, kernel, weight, bias]
        op = pac2d if method == "pac2d" else unfold_pac

        def forward() -> torch.Tensor:
            return op(x, kernel, weight, bias)

    def run() -> None:
        for leaf in leaves:
            leaf.grad = None
        out = forward()
        out.backward(torch.ones_like(out))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run, leaves


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory_here(method: str, k: int) -> int:
    """Peak extra resident bytes of one pass (run in a fresh process; see the module doc)."""
    run, leaves = make_pass(method, k)
    run()
    for leaf in leaves:
        leaf.grad = None
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - before) * 1024


def measure_memory(method: str, k: int, threads: int) -> int:
    """``measure_memory_here`` in a subprocess with malloc pinned to mmap."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    command = [sys.executable, __file__, "--memory-of", method, str(k), "--threads", str(threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def measure_cuda_memory(method: str, k: int, device: torch.device) -> int:
    """Peak bytes one pass allocates on ``device`` beyond what its inputs hold."""
    run, leaves = make_pass(method, k, device)
    run()
    for leaf in leaves:
        leaf.grad = None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    return torch.cuda.max_memory_allocated(device) - before


def measure_times(
    k: int, warmup: int, repeats: int, device: torch.device = CPU
) -> dict[str, list[float]]:
    """Seconds of each measured forward+backward pass per method, the methods taking turns."""
    runs = {method: make_pass(method, k, device)[0] for method in METHODS}
    times: dict[str, list[float]] = {method: [] for method in METHODS}
    for i in range(warmup + repeats):
        for method, run in runs.items():
            start = time.perf_counter()
            run()
            if i >= warmup:
                times[method].append(time.perf_counter() - start)
    return times


def measure_kernel(k: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Times, peak memory and ratios of every method at kernel size ``k``."""
    seconds = measure_times(k, args.warmup, args.repeats, device)

    def extra_mb(method: str) -> float:
        if device.type == "cuda":
            return round(measure_cuda_memory(method, k, device) / 2**20, 1)
        return round(measure_memory(method, k, args.threads) / 2**20, 1)

    entry = {
        method: {
            "time_ms": round(statistics.median(seconds[method]) * 1e3, 3),
            "time_ms_min": round(min(seconds[method]) * 1e3, 3),
            "time_ms_max": round(max(seconds[method]) * 1e3, 3),
            "extra_mem_mb": extra_mb(method),
        }
        for method in METHODS
    }
    pac, unfold, conv = (entry[m] for m in METHODS)
    entry["ratios"] = {
        "unfold_time/pac_time": round(unfold["time_ms"] / pac["time_ms"], 2),
        "pac_mem/unfold_mem": round(pac["extra_mem_mb"] / unfold["extra_mem_mb"], 3),
        "pac_time/conv_time": round(pac["time_ms"] / conv["time_ms"], 2),
    }
    return entry


def print_report(report: dict) -> None:
    """The table of ``report``'s times and memory, its ratios and its targets."""
    print(
        f"pac2d fwd+bwd, float32 {report['device']} ({report['threads']} threads), "
        f"B={B} C={C} {H}x{W}, median of {report['repeats']}"
    )
    print(f"{'k':>2} {'method':<8} {'time ms':>9} {'min':>9} {'max':>9} {'extra MB':>9}")
    for k in KERNELS:
        for method in METHODS:
            row = report["results"][f"k{k}"][method]
            cells = [row[key] for key in ("time_ms", "time_ms_min", "time_ms_max", "extra_mem_mb")]
            print(f"{k:>2} {method:<8}", *(f"{cell:>9.3f}" for cell in cells))
        ratios = report["results"][f"k{k}"]["ratios"]
        print("   ratios:", ", ".join(f"{name} {value}" for name, value in ratios.items()))
    print("targets at k=5:", report["targets_k5"])
    print("load average (1 min) before and after:", report["load_average_1min"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--out", type=Path, help="the JSON to write (default: results/pac2d.json, pac2d-cuda.json)"
    )
    parser.add_argument("--memory-of", nargs=2, metavar=("METHOD", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        print(measure_memory_here(args.memory_of[0], int(args.memory_of[1])))
        return
    device = torch.device(args.device)

    load_before = os.getloadavg()[0]
    results = {f"k{k}": measure_kernel(k, args, device) for k in KERNELS}
    k5 = results["k5"]["ratios"]
    report = {
        "benchmark": "pac2d forward+backward, float32",
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "shape": {"batch": B, "cin": C, "cout": C, "height": H, "width": W},
        "warmup": args.warmup,
        "repeats": args.repeats,
        "time": "median wall time of one forward+backward pass (min and max beside it)",
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "memory": (
            "peak CUDA memory allocated by one pass (max_memory_allocated - memory_allocated)"
            if device.type == "cuda"
            else "peak RSS added by one pass, fresh process per measurement (VmHWM - VmRSS)"
        ),
        "results": results,
        "targets_k5": {
            "at_least_4x_faster_than_unfold": k5["unfold_time/pac_time"] >= 4,
            "at_most_quarter_of_unfold_memory": k5["pac_mem/unfold_mem"] <= 0.25,
            "within_3x_of_conv2d (stretch)": k5["pac_time/conv_time"] <= 3,
        },
    }
    print_report(report)
    out = args.out or RESULTS / (
        "pac2d.json" if device.type == "cpu" else f"pac2d-{device.type}.json"
    )
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
