"""Time llama.cpp on one GGUF file exactly as `rwkv-edge bench` times rwkv-edge; prints one JSON object.

Run by tools/bench_peers.py, by path, in a Python that has llama-cpp-python:

    PYTHON tools/llama_bench.py FILE --ids IDS.npy --threads 2 --tokens 32 --prompt 128 --prompt-runs 3

It needs only numpy and llama_cpp (imported in main(): the package never depends on it), so it runs in
any environment. The token ids come from the caller, so both engines see the same stream, laid out as
in tools/bench.py: a warm-up prompt, untimed warm-up steps, the timed steps, and the prompt at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time
from typing import Any

import numpy as np


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class _BuftOverride(ctypes.Structure):
    """llama.h's struct llama_model_tensor_buft_override."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def repack_buffer_type(llama: Any) -> int:
    """ggml's CPU_REPACK buffer type (AVX2 Q4_0 repacking), found without touching the AMX one."""
    lib_dir = os.path.join(os.path.dirname(llama.__file__), "lib")
    # Loading by path gives the instance libllama already uses (same file), so the device is the same.
    ggml = ctypes.CDLL(os.path.join(lib_dir, "libggml.so"))
    base = ctypes.CDLL(os.path.join(lib_dir, "libggml-base.so"))
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    base.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    base.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    base.ggml_backend_buft_name.restype = ctypes.c_char_p
    base.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    dev = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    addr = base.ggml_backend_reg_get_proc_address(base.ggml_backend_dev_backend_reg(dev),
                                                  b"ggml_backend_dev_get_extra_bufts")
    if not dev or not addr:
        raise RuntimeError("this llama.cpp build has no CPU extra buffer types")
    bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)(dev)
    i = 0
    while bufts[i]:
        if base.ggml_backend_buft_name(bufts[i]) == b"CPU_REPACK":
            return int(bufts[i])
        i += 1
    raise RuntimeError("this llama.cpp build has no CPU_REPACK buffer type")


class Engine:
    """One llama.cpp model and context (n_seq_max 1), and one reusable batch."""

    def __init__(self, llama: Any, path: str, threads: int, n_batch: int, extra_bufts: bool,
                 repack: str | None) -> None:
        self.L = llama
        mparams = llama.llama_model_default_params()
        # ggml's AMX buffer type is one of the extra buffer types; its tile instructions are not enabled on
        # every VM (SIGILL here), so they are off unless asked for. That also turns off Q4_0 repacking,
        # which `repack` (a regex of tensor names, Q4_0 with rows % 8 == 0 only) turns back on alone.
        mparams.use_extra_bufts = extra_bufts
        if repack:
            self._overrides = (_BuftOverride * 2)((repack.encode(), repack_buffer_type(llama)), (None, None))
            mparams.tensor_buft_overrides = ctypes.cast(self._overrides, ctypes.c_void_p)
        self.model = llama.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"{path}: llama.cpp could not load the file")
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = 4096
        cparams.n_batch = cparams.n_ubatch = n_batch
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = threads
        self.ctx = llama.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.n_vocab = int(llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(self.model)))
        self.batch = llama.llama_batch_init(n_batch, 0, 1)
        self.n_batch = n_batch

    def decode(self, tokens: np.ndarray, start: int) -> None:
        """Feed tokens (T,) at positions start.., logits for the last one only (as our forward returns)."""
        batch, n = self.batch, len(tokens)
        if n > self.n_batch:
            raise ValueError(f"{n} tokens do not fit a batch of {self.n_batch}")
        for i, t in enumerate(tokens.tolist()):
            batch.token[i] = t
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == n - 1
        batch.n_tokens = n
        rc = self.L.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self.L.llama_synchronize(self.ctx)  # the timing must include the whole computation

    def clear(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def measure(llama: Any, args: argparse.Namespace, ids: np.ndarray) -> dict[str, object]:
    start = time.perf_counter()
    engine = Engine(llama, args.file, args.threads, max(args.prompt, args.warmup_prompt), args.extra_bufts,
                    args.repack)
    load_s = time.perf_counter() - start
    rss_after_load = _status_kib("VmRSS") * 1024
    if int(ids.max()) >= engine.n_vocab:
        raise ValueError(f"token id {int(ids.max())} is outside llama.cpp's vocabulary of {engine.n_vocab}")
    try:
        start = time.perf_counter()
        engine.decode(ids[:1], 0)
        first_ms = (time.perf_counter() - start) * 1e3
        engine.decode(ids[1 : args.warmup_prompt], 1)
        pos = args.warmup_prompt
        steps = ids[args.warmup_prompt :]
        for t in steps[: args.warmup_steps]:
            engine.decode(np.array([t]), pos)
            pos += 1
        decode_ms = []
        for t in steps[args.warmup_steps : args.warmup_steps + args.tokens]:
            start = time.perf_counter()
            engine.decode(np.array([t]), pos)
            decode_ms.append((time.perf_counter() - start) * 1e3)
            pos += 1
        prompt = ids[-args.prompt :]
        rates = []
        for run in range(args.prompt_runs + 1):  # the first pass is untimed, as ours
            engine.clear()
            start = time.perf_counter()
            engine.decode(prompt, 0)
            if run:
                rates.append(len(prompt) / (time.perf_counter() - start))
        peak_rss = _status_kib("VmHWM") * 1024
    finally:
        engine.close()
    return {
        "engine": "llama.cpp",
        "llama_cpp_python": getattr(llama, "__version__", "?"),
        "system_info": llama.llama_print_system_info().decode(errors="replace").strip(),
        "extra_bufts": args.extra_bufts,
        "repack": args.repack,
        "file": args.file,
        "threads": args.threads,
        "load_s": load_s,
        "first_token_ms": first_ms,
        "decode_tokens": len(decode_ms),
        "decode_ms": statistics.median(decode_ms),
        "decode_ms_mean": statistics.fmean(decode_ms),
        "decode_ms_min": min(decode_ms),
        "decode_ms_max": max(decode_ms),
        "prompt_tokens": len(prompt),
        "prompt_runs": args.prompt_runs,
        "prompt_tok_s": statistics.median(rates),
        "prompt_tok_s_min": min(rates),
        "prompt_tok_s_max": max(rates),
        "rss_after_load_bytes": rss_after_load,
        "peak_rss_bytes": peak_rss,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--ids", required=True, help=".npy of int token ids, laid out as tools/bench.py does")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32, help="decode steps timed")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--prompt-runs", type=int, default=3)
    p.add_argument("--warmup-prompt", type=int, default=8)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--extra-bufts", action="store_true", help="allow ggml's extra buffer types (AMX, repacking)")
    p.add_argument("--repack", default=None, help="regex of Q4_0 tensor names to put in ggml's CPU_REPACK buffers")
    args = p.parse_args(argv)
    ids = np.load(args.ids).astype(np.int64)  # (warmup_prompt + warmup_steps + tokens + prompt,)
    if len(ids) < args.warmup_prompt + args.warmup_steps + args.tokens + args.prompt:
        raise SystemExit(f"{args.ids}: too few token ids for this layout")

    import llama_cpp

    buffers: list[str] = []  # llama.cpp's "<type> model buffer size = N MiB" lines: what was mapped or repacked

    def keep_buffer_lines(level: int, text: bytes, user_data: Any) -> None:
        line = text.decode(errors="replace").strip()
        if "model buffer size" in line:
            buffers.append(line.split(":", 1)[-1].strip())

    # Kept referenced for the whole run: llama.cpp calls back into it for every log line.
    callback = llama_cpp.llama_log_callback(keep_buffer_lines)
    llama_cpp.llama_log_set(callback, None)
    llama_cpp.llama_backend_init()
    result = measure(llama_cpp, args, ids)
    result["buffers"] = buffers
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
