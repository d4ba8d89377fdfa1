"""rwkv-edge against llama.cpp on the same GGUF files, in one run (a developer tool, not run in CI).

    python -m rwkv_edge.tools.bench_peers [--only v7-0.1b,v7-1.5b] [--types Q4_0,Q8_0] [--models DIR] [--json]

Random-weight models at the real shapes (tools/random_model.py; speed does not depend on the values) are
written once as Q4_0 and Q8_0 GGUF by our converter and cached in --models. Each file is read back into
the page cache as 2 MiB folios (tools/file_pages.py; both engines then map it with 2 MiB pages) and timed by
`rwkv-edge bench` and by llama.cpp (tools/llama_bench.py, run in the Python that has llama-cpp-python),
one after the other, in subprocesses so each peak RSS is its own, with the same token ids and threads.
llama.cpp has no RWKV-4: v4 files get our figures only. The output is a markdown table for
docs/benchmarks.md (or --json), with ratios: llama.cpp's time / ours, so above 1 means rwkv-edge is faster.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..quant.convert import convert_checkpoint
from ..quant.ggml_types import GGMLType
from ..quant.gguf_reader import read_gguf
from .bench import WARMUP_PROMPT, WARMUP_STEPS, bench_tokens, cache_note
from .file_pages import recache_huge
from .random_model import SHAPES, random_checkpoint

DEFAULT_MODELS = "/work/peers/models"
DEFAULT_LLAMA_PYTHON = "/work/peers/llama-venv/bin/python"
TYPES = ("Q4_0", "Q8_0")
TIMEOUT_S = 3600  # per engine and file: a hung run must not stall the whole table
MIB = 1 << 20
LLAMA_BENCH = Path(__file__).with_name("llama_bench.py")
REPO = Path(__file__).resolve().parents[1]


def model_file(models: Path, name: str, qtype: str) -> Path:
    """The cached GGUF of random model `name` at `qtype`, written first if missing."""
    path = models / f"{name}-{qtype}.gguf"
    if not path.exists():
        print(f"bench_peers: writing {path}", file=sys.stderr, flush=True)
        models.mkdir(parents=True, exist_ok=True)
        convert_checkpoint(random_checkpoint(name), path, GGMLType[qtype])  # seed 0, as the peer notes
    return path


def repack_pattern(path: Path) -> str | None:
    """A regex of the file's Q4_0 matrices that ggml's AVX2 repacking takes (rows % 8 == 0), or None.

    llama.cpp repacks those by default on CPUs without AMX; here AMX must stay off (it dies with SIGILL
    on this VM), which turns the default off too, so tools/llama_bench.py asks for repacking alone.
    """
    tensors = read_gguf(str(path)).tensors
    chosen = {name for name, t in tensors.items()
              if t.qtype == GGMLType.Q4_0 and len(t.shape) == 2 and t.shape[0] % 8 == 0
              and name != "token_embd.weight"}  # looked up by row (get_rows), which repacked buffers cannot do
    if not chosen:
        return None
    suffixes = sorted({re.sub(r"^blk\.\d+\.", "", name) for name in chosen})
    pattern = r"^(blk\.\d+\.)?(" + "|".join(re.escape(s) for s in suffixes) + r")$"
    if {name for name in tensors if re.search(pattern, name)} != chosen:
        pattern = "^(" + "|".join(re.escape(n) for n in sorted(chosen)) + ")$"
    return pattern


def _cpu_busy_s() -> float | None:
    """CPU seconds all processes have used since boot, plus what the hypervisor took from this VM's CPUs
    for others ("steal"; /proc/stat), None where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_measured(what: str, cmd: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any], float | None]:
    """Run a command that prints one JSON object -> (that object, share of the CPUs others used meanwhile:
    other processes, and the hypervisor's steal).

    env: variables to set for the command on top of this process's environment."""
    busy0, start = _cpu_busy_s(), time.perf_counter()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, **env} if env else None)
    wall = time.perf_counter() - start
    busy1 = _cpu_busy_s()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeError(f"{what} failed (exit status {proc.returncode}): {tail}")
    foreign = None
    if busy0 is not None and busy1 is not None:
        ours = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
        foreign = max(0.0, (busy1 - busy0) - ours) / (wall * (os.cpu_count() or 1))
    try:  # a stray line from a C library before the JSON must not lose the run
        result = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("{"):])[0]
    except ValueError:
        raise RuntimeError(f"{what} printed no JSON object") from None
    return result, foreign


def bench_file(path: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One row: both engines on one file, --repeat rounds of (ours, llama.cpp) one after the other, each
    figure the median of its rounds (on a shared VM the machine's speed moves more than the engines
    differ; alternating rounds let both see the same moments). The file is first read back into the page
    cache as 2 MiB folios (unless --keep-page-cache): a file just written may sit in small folios, and both
    engines map the cache."""
    huge_share = None if args.keep_page_cache else recache_huge(path)
    rounds = [bench_round(path, args, work) for _ in range(args.repeat)]
    row = {**rounds[0], "huge_page_share": huge_share, "rounds": len(rounds)}
    notes = sorted({r["llama_note"] for r in rounds if r["llama_note"]})
    row["llama_note"] = "; ".join(notes) or None
    for engine in ("ours", "llama"):
        done = [r for r in rounds if r[engine]]  # llama.cpp may fail in a round: the others count
        if not done:
            continue
        results = [r[engine] for r in done]
        row[engine] = {k: _median(v, [r[k] for r in results]) for k, v in results[0].items()}
        row[f"{engine}_foreign_cpu"] = _median(None, [r[f"{engine}_foreign_cpu"] for r in done])
    ours = row["ours"]
    ours["bound_fraction"] = ours["bound_ms"] / ours["decode_ms"]  # from the medians shown beside it
    return row


def _median(first: Any, values: list[Any]) -> Any:
    """The median of numbers (of an even count of ints, the higher middle one: peak RSS is not flattered);
    anything else: the first round's."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.median_high(values) if all(isinstance(v, int) for v in values) else statistics.median(values)
    return first if first is not None else values[0]


def bench_round(path: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Both engines once on one file."""
    ours, ours_foreign = run_measured("rwkv-edge bench", [
        sys.executable, "-m", "rwkv_edge", "bench", str(path), "--threads", str(args.threads),
        "--tokens", str(args.tokens), "--prompt", str(args.prompt), "--prompt-runs", str(args.prompt_runs),
        "--probe-mib", str(args.probe_mib), "--json"],
        {"RWKV_EDGE_KERNELS": args.kernels} if args.kernels else None)
    row: dict[str, Any] = {"file": str(path), "ours": ours, "ours_foreign_cpu": ours_foreign,
                           "llama": None, "llama_foreign_cpu": None, "llama_note": None}
    if ours["version"] == "4":
        row["llama_note"] = "no RWKV-4 in llama.cpp"
        return row
    if args.no_llama:
        row["llama_note"] = "not run (--no-llama)"
        return row
    ids = bench_tokens(ours["n_vocab"], WARMUP_PROMPT + WARMUP_STEPS + args.tokens + args.prompt)
    ids_path = work / "ids.npy"
    np.save(ids_path, ids)
    cmd = [args.llama_python, str(LLAMA_BENCH), str(path), "--ids", str(ids_path), "--threads", str(args.threads),
           "--tokens", str(args.tokens), "--prompt", str(args.prompt), "--prompt-runs", str(args.prompt_runs),
           "--warmup-prompt", str(WARMUP_PROMPT), "--warmup-steps", str(WARMUP_STEPS)]
    pattern = repack_pattern(path) if args.llama_repack else None
    if pattern:
        cmd += ["--repack", pattern]
    try:
        row["llama"], row["llama_foreign_cpu"] = run_measured(
            "llama_bench.py", cmd, {"LLAMA_CPP_LIB_PATH": args.llama_lib} if args.llama_lib else None)
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as err:
        row["llama_note"] = " ".join(str(err).split())
    return row


def machine() -> dict[str, Any]:
    """What the table was measured on and with."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False,
                                capture_output=True, text=True, timeout=30).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               check=False, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit, dirty = "unknown", ""
    return {"cpu": cpu, "cpus": os.cpu_count(), "commit": commit + (" + uncommitted changes" if dirty else ""),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "command": "python -m rwkv_edge.tools.bench_peers " + shlex.join(sys.argv[1:])}


def _x(num: float | None, den: float | None) -> str:
    return f"{num / den:.2f}x" if num and den else "–"


def _pair(a: float, b: float | None, fmt: str) -> str:
    return f"{a:{fmt}} / {b:{fmt}}" if b is not None else f"{a:{fmt}} / –"


def _pages(o: dict[str, Any]) -> str:
    """The share of the file rwkv-edge had mapped as 2 MiB pages."""
    resident, huge = o.get("file_resident_bytes"), o.get("file_huge_page_bytes")
    return f"{100 * huge / resident:.0f} %" if resident else "–"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The table for docs/benchmarks.md, with the machine, commit and command above it."""
    first = rows[0]["ours"] if rows else {}
    llama_info = next((row["llama"].get("system_info", "?") for row in rows if row["llama"]), "not run")
    lines = [
        (f"{meta['date']}, commit {meta['commit']}, {meta['cpu']} ({meta['cpus']} CPUs), "
        f"{first.get('threads', '?')} threads, rwkv-edge kernels {first.get('backend', '?')}."
        + (f" Each figure is the median of {rows[0]['rounds']} rounds." if rows and rows[0].get("rounds", 1) > 1 else "")),
        f"llama.cpp build: `{' '.join(llama_info.split())}`",
        f"Command: `{meta['command']}`",
        "",
        ("| model, type | file MiB | on 2 MiB pages | read/token MiB | read GB/s | bound ms | decode ms/token rwkv-edge | llama.cpp "
        "| llama.cpp / ours | ours % of bound | prompt tok/s rwkv-edge | llama.cpp | ours / llama.cpp "
        "| load s ours / llama.cpp | peak RSS MiB ours / llama.cpp | foreign CPU ours / llama.cpp |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for row in rows:
        o, ll = row["ours"], row["llama"]
        name = f"{row['model']} {row['type']}"
        if row["llama_note"]:
            notes.append(f"{name}: llama.cpp {row['llama_note']}")
        fits = cache_note(o)
        if fits:
            notes.append(f"{name}: bound{fits}")
        shares = (row["ours_foreign_cpu"], row["llama_foreign_cpu"])
        foreign = [f"{100 * f:.0f} %" if f is not None else "?" for f in shares]
        lines.append("| " + " | ".join([
            name,
            f"{o['file_bytes'] / MIB:.1f}",
            _pages(o),
            f"{o['bytes_per_token'] / MIB:.1f}",
            f"{o['read_gb_s']:.1f}",
            f"{o['bound_ms']:.1f}",
            f"{o['decode_ms']:.1f}",
            f"{ll['decode_ms']:.1f}" if ll else "–",
            _x(ll and ll["decode_ms"], o["decode_ms"]),
            f"{100 * o['bound_fraction']:.0f} %",
            f"{o['prompt_tok_s']:.0f}",
            f"{ll['prompt_tok_s']:.0f}" if ll else "–",
            _x(o["prompt_tok_s"], ll and ll["prompt_tok_s"]),
            _pair(o["load_s"], ll and ll["load_s"], ".2f"),
            _pair(o["peak_rss_bytes"] / MIB, ll and ll["peak_rss_bytes"] / MIB, ".0f"),
            " / ".join(foreign) if ll else foreign[0],
        ]) + " |")
    lines += [""] + [f"* {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"GGUF cache directory (default {DEFAULT_MODELS})")
    p.add_argument("--only", default=",".join(SHAPES),
                   help=f"models, comma-separated (default all: {','.join(SHAPES)})")
    p.add_argument("--types", default=",".join(TYPES), help="weight types, comma-separated (default Q4_0,Q8_0)")
    p.add_argument("--threads", type=int, default=2, help="threads for both engines (default 2)")
    p.add_argument("--tokens", type=int, default=32, help="timed decode steps (default 32)")
    p.add_argument("--prompt", type=int, default=128, help="prompt length (default 128)")
    p.add_argument("--prompt-runs", type=int, default=3, help="timed prompt passes (default 3)")
    p.add_argument("--probe-mib", type=int, default=512, help="bandwidth probe buffer (default 512 MiB)")
    p.add_argument("--llama-python", default=DEFAULT_LLAMA_PYTHON, help="a Python with llama-cpp-python")
    p.add_argument("--no-llama-repack", dest="llama_repack", action="store_false",
                   help="do not let llama.cpp repack Q4_0 matrices (its default on CPUs without AMX)")
    p.add_argument("--llama-lib", default=None,
                   help="a directory with another build of libllama.so (LLAMA_CPP_LIB_PATH), e.g. an AVX2-only one")
    p.add_argument("--kernels", default=None, help="rwkv-edge kernels to time (RWKV_EDGE_KERNELS; default: automatic)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds per file, alternating the engines; the table shows medians (default 1)")
    p.add_argument("--keep-page-cache", action="store_true",
                   help="time the files as they sit in the page cache (default: re-read as 2 MiB folios first)")
    p.add_argument("--no-llama", action="store_true", help="time rwkv-edge only")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    args.types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    for name in args.only:
        if name not in SHAPES:
            p.error(f"unknown model {name!r}; choose from {', '.join(SHAPES)}")
    for t in args.types:
        if t not in GGMLType.__members__:
            p.error(f"unknown type {t!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta = machine()
    rows, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            for qtype in args.types:
                path = model_file(Path(args.models), name, qtype)
                print(f"bench_peers: timing {path.name}", file=sys.stderr, flush=True)
                try:
                    row = bench_file(path, args, Path(tmp))
                except (RuntimeError, subprocess.TimeoutExpired, ValueError, OSError) as err:
                    print(f"bench_peers: {path.name}: {err}", file=sys.stderr)
                    failed = True
                    continue
                rows.append({"model": name, "type": qtype, **row})
    print(json.dumps({"meta": meta, "rows": rows}, indent=2) if args.json else markdown(rows, meta))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
