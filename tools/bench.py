"""`rwkv-edge bench`: decode and prompt speed, load time and peak memory of a model, against the
memory-bandwidth bound measured on the spot (bytes a decode step reads / read bandwidth).

Only the public model API is timed (load, forward with a reused state), so the figures stay comparable
whatever the runtime does inside. tools/bench_peers.py runs this in a subprocess next to llama.cpp.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from typing import Any

import numpy as np

from .. import kernels
from ..kernels.bandwidth import DEFAULT_BYTES, read_bandwidth
from ..quant.checkpoint import Checkpoint
from ..runtime.model import Model, load
from .default_model import default_model_path
from .file_pages import mapped_pages

HELP = "time decode, prompt processing, load and peak memory of a model against the memory-bandwidth bound"

WARMUP_PROMPT = 8  # tokens fed as one prompt before decode is timed, as the peer notes do
WARMUP_STEPS = 2  # untimed single-token steps after it
SEED = 1234  # token ids: RandomState(SEED).randint(1, n_vocab), the peer notes' stream
MIB = 1 << 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model file (default: the embedded tiny model)")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: the physical cores)")
    p.add_argument("--tokens", type=int, default=64, help="decode steps timed (default 64)")
    p.add_argument("--prompt", type=int, default=128, help="prompt length in tokens (default 128)")
    p.add_argument("--prompt-runs", type=int, default=3, help="timed prompt passes, median taken (default 3)")
    p.add_argument("--probe-mib", type=int, default=DEFAULT_BYTES // MIB,
                   help=f"bandwidth probe buffer in MiB (default {DEFAULT_BYTES // MIB})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def bench_tokens(n_vocab: int, n: int) -> np.ndarray:
    """(n,) token ids, the same for every engine and run (0 is left out: it is often special)."""
    if n_vocab < 2:
        raise ValueError(f"a vocabulary of {n_vocab} ids is too small to benchmark")
    return np.random.RandomState(SEED).randint(1, n_vocab, size=n).astype(np.int64)


def bytes_per_token(checkpoint: Checkpoint, state_bytes: int) -> dict[str, int]:
    """What one decode step reads at least once: every stored tensor, of the embedding one row, the state.

    Tensors count as stored in the file (small vectors kept F32 by our converter count as F32).
    """
    emb = checkpoint.tensors["emb.weight"]
    # RWKV-7's first layer has no value-residual mix: official checkpoints may still carry its LoRA, unread.
    unread = {"emb.weight"} | ({f"blocks.0.att.v{i}" for i in "012"} if checkpoint.spec.version == "7" else set())
    weights = sum(int(t.data.nbytes) for name, t in checkpoint.tensors.items() if name not in unread)
    emb_row = int(emb.data.nbytes) // int(emb.shape[0])
    return {"weights": weights, "emb_row": emb_row, "state": state_bytes, "total": weights + emb_row + state_bytes}


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kB on Linux


def current_rss_bytes() -> int:
    """Resident memory now (VmRSS), 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def last_level_cache_bytes(cache_dir: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """The largest data or unified cache Linux lists for cpu0 (its index*/ entries), None where there is
    none to read. A model whose bytes per token fit in it can decode faster than the DRAM probe allows."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    try:
        entries = sorted(os.listdir(cache_dir))
    except OSError:
        return None
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            with open(os.path.join(cache_dir, entry, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(cache_dir, entry, "size")) as f:
                size = f.read().strip()
        except OSError:
            continue
        if kind not in ("Data", "Unified"):
            continue
        if size[-1:] in units and size[:-1].isdecimal():
            sizes.append(int(size[:-1]) * units[size[-1]])
        elif size.isdecimal():
            sizes.append(int(size))
    return max(sizes, default=None)


def _check_counts(args: argparse.Namespace) -> None:
    for name in ("tokens", "prompt", "prompt_runs", "probe_mib"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _time_decode(model: Model, ids: np.ndarray, n_tokens: int) -> tuple[float, list[float]]:
    """First-token ms right after load, then ms of each of n_tokens timed single-token steps."""
    state = model.new_state()
    start = time.perf_counter()
    model.forward(ids[:1], state, out=state)
    first_ms = (time.perf_counter() - start) * 1e3
    model.forward(ids[1:WARMUP_PROMPT], state, out=state)
    steps = ids[WARMUP_PROMPT:]
    for token in steps[:WARMUP_STEPS]:
        model.forward(token, state, out=state)
    times = []
    for token in steps[WARMUP_STEPS : WARMUP_STEPS + n_tokens]:
        start = time.perf_counter()
        model.forward(token, state, out=state)
        times.append((time.perf_counter() - start) * 1e3)
    return first_ms, times


def _time_prompt(model: Model, prompt: np.ndarray, runs: int) -> list[float]:
    """Tokens/s of `runs` passes over the prompt from a fresh state, after one untimed pass. Each pass
    starts by copying a blank state into the one it runs in, as a session would reuse its state: a new
    state per pass (13 MiB at 1.5B) would make the peak RSS measure the allocator's churn."""
    blank, state = model.new_state(), model.new_state()  # blank is only read: its pages stay unallocated
    model.forward(prompt, blank, out=state)
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        model.forward(prompt, blank, out=state)
        rates.append(len(prompt) / (time.perf_counter() - start))
    return rates


def measure(
    path: str, *, threads: int | None = None, tokens: int = 64, prompt: int = 128, prompt_runs: int = 3,
    probe_bytes: int = DEFAULT_BYTES,
) -> dict[str, Any]:
    """Everything `rwkv-edge bench` reports, as a flat JSON-ready dict (ms, s, bytes, GB/s = 1e9 B/s)."""
    start = time.perf_counter()
    model = load(path, threads=threads)
    load_s = time.perf_counter() - start
    rss_after_load = current_rss_bytes()
    spec = model.spec
    ids = bench_tokens(spec.n_vocab, WARMUP_PROMPT + WARMUP_STEPS + tokens + prompt)
    first_ms, decode_ms = _time_decode(model, ids, tokens)
    prompt_rates = _time_prompt(model, ids[-prompt:], prompt_runs)
    peak_rss = peak_rss_bytes()  # before the probe, whose buffer is not the model's
    pages = mapped_pages(path)
    read = bytes_per_token(model.checkpoint, model.new_state().nbytes)
    bw = read_bandwidth(model.pool, probe_bytes)
    decode_median = statistics.median(decode_ms)
    bound_ms = read["total"] / (bw.gb_per_s * 1e9) * 1e3
    return {
        "file": path,
        "file_bytes": os.path.getsize(path),
        "format": model.kind,
        "version": spec.version,
        "n_layer": spec.n_layer,
        "n_embd": spec.n_embd,
        "n_vocab": spec.n_vocab,
        "backend": kernels.backend,
        "features": sorted(kernels.features),
        "threads": model.pool.n_threads,
        "load_s": load_s,
        "first_token_ms": first_ms,
        "decode_tokens": len(decode_ms),
        "decode_ms": decode_median,
        "decode_ms_mean": statistics.fmean(decode_ms),
        "decode_ms_min": min(decode_ms),
        "decode_ms_max": max(decode_ms),
        "prompt_tokens": prompt,
        "prompt_runs": prompt_runs,
        "prompt_tok_s": statistics.median(prompt_rates),
        "prompt_tok_s_min": min(prompt_rates),
        "prompt_tok_s_max": max(prompt_rates),
        "rss_after_load_bytes": rss_after_load,
        "peak_rss_bytes": peak_rss,
        "file_resident_bytes": pages.resident_bytes,
        "file_huge_page_bytes": pages.huge_bytes,
        "bytes_per_token": read["total"],
        "weight_bytes_per_token": read["weights"],
        "emb_row_bytes": read["emb_row"],
        "state_bytes": read["state"],
        "read_gb_s": bw.gb_per_s,
        "read_gb_s_best": bw.best_gb_per_s,
        "read_gb_s_worst": bw.worst_gb_per_s,
        "probe_bytes": bw.n_bytes,
        "probe_passes": bw.passes,
        "probe_threads": bw.threads,
        "probe_impl": bw.impl,
        "bound_ms": bound_ms,
        "bound_fraction": bound_ms / decode_median,  # 1.0 = decode at the memory-bandwidth limit
        "last_level_cache_bytes": last_level_cache_bytes(),
    }


def cache_note(d: dict[str, Any]) -> str:
    """What the bound line adds when the bytes a token reads fit in the CPU's last-level cache."""
    llc = d.get("last_level_cache_bytes")
    if llc is None or d["bytes_per_token"] > llc:
        return ""
    size = f"{llc / MIB:,.0f} MiB" if llc >= MIB else f"{llc >> 10} KiB"
    return f" (the bytes read per token fit in the {size} last-level cache: decode may beat it)"


def format_report(d: dict[str, Any]) -> str:
    """The human-readable table of a `measure` result."""
    mib = {k: d[k] / MIB for k in ("file_bytes", "peak_rss_bytes", "rss_after_load_bytes", "bytes_per_token",
                                    "weight_bytes_per_token", "probe_bytes")}
    lines = [
        ("model", (f"{d['file']} ({mib['file_bytes']:,.1f} MiB, {d['format']}, RWKV-{d['version']} "
                  f"{d['n_layer']}x{d['n_embd']}, vocab {d['n_vocab']})")),
        ("kernels", f"{d['backend']} ({', '.join(d['features']) or 'no SIMD'}), {d['threads']} threads"),
        ("load", f"{d['load_s']:.3f} s; first token {d['first_token_ms']:.1f} ms"),
        ("decode", (f"{d['decode_ms']:.2f} ms/token median of {d['decode_tokens']} (min {d['decode_ms_min']:.2f}, "
                   f"max {d['decode_ms_max']:.2f}) = {1e3 / d['decode_ms']:.1f} tokens/s")),
        ("prompt", (f"{d['prompt_tok_s']:.1f} tokens/s for {d['prompt_tokens']} tokens, median of {d['prompt_runs']} "
                   f"(min {d['prompt_tok_s_min']:.1f}, max {d['prompt_tok_s_max']:.1f})")),
        ("memory", (f"peak RSS {mib['peak_rss_bytes']:,.1f} MiB (after load {mib['rss_after_load_bytes']:,.1f} MiB; "
                   f"file {mib['file_bytes']:,.1f} MiB)")),
        ("pages", (f"{d['file_resident_bytes'] / MIB:,.1f} MiB of the file resident, "
                   f"{100 * d['file_huge_page_bytes'] / max(d['file_resident_bytes'], 1):.0f} % of it on 2 MiB pages")),
        ("read/token", (f"{mib['bytes_per_token']:,.2f} MiB (weights {mib['weight_bytes_per_token']:,.2f} MiB, "
                       f"embedding row {d['emb_row_bytes']:,} B, state {d['state_bytes']:,} B)")),
        ("bandwidth", (f"{d['read_gb_s']:.2f} GB/s read, median of {d['probe_passes']} passes over "
                      f"{mib['probe_bytes']:,.0f} MiB ({d['probe_threads']} threads, {d['probe_impl']}; "
                      f"best {d['read_gb_s_best']:.2f})")),
        ("bound", f"{d['bound_ms']:.2f} ms/token; decode runs at {100 * d['bound_fraction']:.0f} % of it"
                  + cache_note(d)),
    ]
    return "\n".join(f"{key:<11} {value}" for key, value in lines)


def run(args: argparse.Namespace) -> int:
    _check_counts(args)
    d = measure(args.model or default_model_path(), threads=args.threads, tokens=args.tokens, prompt=args.prompt,
                prompt_runs=args.prompt_runs, probe_bytes=args.probe_mib * MIB)
    print(json.dumps(d, indent=2) if args.json else format_report(d))
    return 0
