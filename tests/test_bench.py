"""`rwkv-edge bench` and the memory-bandwidth probe: the probe reads every byte (its sum equals an
independent sum), the bytes-per-token count equals one made from the file by gguf-py or torch, and the
command's JSON is complete and self-consistent. No timing is asserted, only that times are sane."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rwkv_edge
import torch
from conftest import fixture_path
from gguf import GGUFReader
from rwkv_edge.kernels import ThreadPool, dispatch
from rwkv_edge.kernels.bandwidth import MIN_BYTES, read_bandwidth, read_sum
from rwkv_edge.quant.convert import convert
from rwkv_edge.quant.ggml_types import GGMLType
from rwkv_edge.tools.bench import bytes_per_token, cache_note, last_level_cache_bytes
from rwkv_edge.tools.default_model import default_model_path
from rwkv_edge.tools.file_pages import MappedPages, mapped_pages

PROBE_IMPLS = [impl for impl in ("avx2", "scalar") if impl in dispatch.available()] + ["numpy"]


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rwkv_edge", "bench", *args], check=False,
                          capture_output=True, text=True, timeout=300)


def exact_sum(words: np.ndarray) -> int:
    return sum(int(w) for w in words.tolist()) % 2**64


@pytest.fixture(scope="module")
def words() -> tuple[np.ndarray, int]:
    """Past several 64 Ki-word chunks, with a tail that is no multiple of the 16-word AVX2 step; its exact sum."""
    w = np.random.default_rng(5).integers(0, 2**64, size=3 * 65536 + 13, dtype=np.uint64)
    return w, exact_sum(w)


@pytest.mark.parametrize("impl", PROBE_IMPLS)
@pytest.mark.parametrize("threads", [None, 1, 2, 3])
def test_probe_sum_is_the_sum_of_every_word(impl, threads, words):
    w, expected = words
    assert expected == int(w.sum(dtype=np.uint64))
    pool = ThreadPool(threads) if threads else None
    try:
        assert read_sum(w, pool, impl=impl) == expected
        for i in (0, 70_000, len(w) - 1):  # any one word changed changes the result by as much
            changed = w.copy()
            changed[i] ^= np.uint64(1 << 40)
            assert read_sum(changed, pool, impl=impl) == (expected - int(w[i]) + int(changed[i])) % 2**64
        assert read_sum(w[:0], pool, impl=impl) == 0
        assert read_sum(w[:5], pool, impl=impl) == exact_sum(w[:5])
    finally:
        if pool is not None:
            pool.close()


def test_probe_rejects_what_it_cannot_read():
    with pytest.raises(ValueError, match="uint64"):
        read_sum(np.zeros(8, np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        read_sum(np.zeros(16, np.uint64)[::2])
    with pytest.raises(ValueError, match="unknown probe"):
        read_sum(np.zeros(8, np.uint64), impl="sse9")
    with pytest.raises(ValueError, match="at least"):
        read_bandwidth(None, MIN_BYTES - 8)


def test_read_bandwidth_reports_its_buffer_and_threads():
    with ThreadPool(2) as pool:
        bw = read_bandwidth(pool, 8 << 20, passes=3)
    assert bw.n_bytes == 8 << 20 and bw.passes == 3
    assert bw.threads == (1 if bw.impl == "numpy" else 2)
    assert 0 < bw.worst_gb_per_s <= bw.gb_per_s <= bw.best_gb_per_s


def v7_state_bytes(n_layer: int, n_embd: int, head_size: int) -> int:
    # per layer: two token-shift vectors and one head_size x head_size matrix per head, float32
    return n_layer * (2 * n_embd + (n_embd // head_size) * head_size * head_size) * 4


@pytest.mark.parametrize(("name", "qtype"), [("4v0", GGMLType.Q8_0), ("6v0", GGMLType.F16), ("7v0", GGMLType.Q4_0)])
def test_bytes_per_token_matches_the_gguf_tensor_sizes(tmp_path, name, qtype):
    path = tmp_path / f"tiny-{name}.gguf"
    convert(fixture_path("reference", f"tiny-{name}.pth"), path, qtype)
    reader = GGUFReader(path)
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    n_vocab, n_embd = int(emb.shape[1]), int(emb.shape[0])  # gguf-py lists dimensions innermost first
    # llama.cpp's layer-0 value-residual placeholders are in rwkv7 files but never read
    placeholders = {f"blk.0.time_mix_v{i}.weight" for i in "012"}
    weights = sum(n for k, n in sizes.items() if k != "token_embd.weight" and k not in placeholders)
    n_layer = 1 + max(int(k.split(".")[1]) for k in sizes if k.startswith("blk."))
    if name == "4v0":
        state = n_layer * 5 * n_embd * 4  # x_prev twice, aa, bb, pp
    else:
        head_size = int(reader.get_field(f"rwkv{name[0]}.wkv.head_size").contents())
        state = v7_state_bytes(n_layer, n_embd, head_size)
    model = rwkv_edge.load(path, threads=1)
    got = bytes_per_token(model.checkpoint, model.new_state().nbytes)
    assert got == {"weights": weights, "emb_row": sizes["token_embd.weight"] // n_vocab, "state": state,
                   "total": weights + sizes["token_embd.weight"] // n_vocab + state}


def test_bench_json_on_the_embedded_model():
    proc = run_bench("--tokens", "5", "--prompt", "16", "--prompt-runs", "2", "--threads", "2",
                     "--probe-mib", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    path = default_model_path()
    assert d["file"] == path and d["file_bytes"] == os.path.getsize(path)
    assert (d["format"], d["version"], d["n_layer"], d["n_embd"], d["n_vocab"]) == ("pth", "7", 12, 64, 256)
    assert d["backend"] in dispatch.NAMES and isinstance(d["features"], list)
    assert d["threads"] == 2 and d["decode_tokens"] == 5
    assert (d["prompt_tokens"], d["prompt_runs"]) == (16, 2)
    assert d["load_s"] > 0 and d["first_token_ms"] > 0
    assert 0 < d["decode_ms_min"] <= d["decode_ms"] <= d["decode_ms_max"]
    assert d["decode_ms_min"] <= d["decode_ms_mean"] <= d["decode_ms_max"]
    assert 0 < d["prompt_tok_s_min"] <= d["prompt_tok_s"] <= d["prompt_tok_s_max"]
    assert d["peak_rss_bytes"] >= max(d["file_bytes"], d["rss_after_load_bytes"]) > 0
    # every weight is read from the map, so at least their pages are resident (a 1.8 MB file: no 2 MiB page)
    assert d["weight_bytes_per_token"] <= d["file_resident_bytes"] <= d["file_bytes"] + 4096
    assert d["file_huge_page_bytes"] == 0

    # bytes read per token, counted independently from the official checkpoint through torch
    sd = torch.load(path, map_location="cpu", weights_only=True)
    weights = sum(t.numel() * t.element_size() for k, t in sd.items() if k != "emb.weight")
    emb = sd["emb.weight"]
    emb_row = emb.shape[1] * emb.element_size()
    state = v7_state_bytes(12, 64, 64)
    assert (d["weight_bytes_per_token"], d["emb_row_bytes"], d["state_bytes"]) == (weights, emb_row, state)
    assert d["bytes_per_token"] == weights + emb_row + state

    assert d["probe_bytes"] == 16 << 20 and d["probe_threads"] in (1, 2)
    assert 0 < d["read_gb_s_worst"] <= d["read_gb_s"] <= d["read_gb_s_best"]
    assert d["bound_ms"] == pytest.approx(d["bytes_per_token"] / (d["read_gb_s"] * 1e9) * 1e3)
    assert d["bound_fraction"] == pytest.approx(d["bound_ms"] / d["decode_ms"])


def test_bench_table_and_errors(tmp_path):
    proc = run_bench("--tokens", "2", "--prompt", "4", "--prompt-runs", "1", "--probe-mib", "4")
    assert proc.returncode == 0, proc.stderr
    keys = [line.split()[0] for line in proc.stdout.splitlines()]
    assert keys == ["model", "kernels", "load", "decode", "prompt", "memory", "pages", "read/token", "bandwidth",
                    "bound"]
    bad = run_bench("--tokens", "0")
    assert bad.returncode == 1 and bad.stderr.strip() == "rwkv-edge: error: --tokens must be at least 1, got 0"
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 12)
    err = run_bench(str(broken))
    assert err.returncode == 1 and len(err.stderr.strip().splitlines()) == 1
    assert err.stderr.startswith(f"rwkv-edge: error: {broken}")


def test_mapped_pages_counts_this_process_maps_of_the_file(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, (5 << 20) + 100, dtype=np.uint8).tobytes())
    assert mapped_pages(path) == MappedPages(0, 0)  # not mapped yet
    first = np.memmap(path, dtype=np.uint8, mode="r")
    int(first[::4096].sum())  # one byte per page: all of them resident
    pages = mapped_pages(path)
    whole = ((5 << 20) + 100 + 4095) // 4096 * 4096
    assert pages.resident_bytes == whole and 0 <= pages.huge_bytes <= pages.resident_bytes
    second = np.memmap(path, dtype=np.uint8, mode="r", offset=1 << 20, shape=(4096,))
    int(second.sum())
    assert mapped_pages(path).resident_bytes == whole + 4096  # both maps count
    del first, second


def _cache_tree(root, entries):
    for name, (kind, size) in entries.items():
        (root / name).mkdir(parents=True)
        if kind is not None:
            (root / name / "type").write_text(kind + "\n")
        (root / name / "size").write_text(size + "\n")


def test_last_level_cache_from_a_sysfs_tree(tmp_path):
    _cache_tree(tmp_path, {"index0": ("Data", "48K"), "index1": ("Instruction", "512M"), "index2": ("Unified", "2048K"),
                           "index3": ("Unified", "307200K"), "index4": (None, "900M"), "index5": ("Unified", "lots"),
                           "uevent": ("Data", "999G")})
    # the instruction cache, an entry without a type, an unreadable size and a non-index entry do not count
    assert last_level_cache_bytes(str(tmp_path)) == 300 << 20
    assert last_level_cache_bytes(str(tmp_path / "missing")) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert last_level_cache_bytes(str(empty)) is None
    # the other units sysfs may write: M, G, plain bytes
    for size, expected in (("3M", 3 << 20), ("1G", 1 << 30), ("5242880", 5 << 20)):
        tree = tmp_path / f"tree-{size}"
        _cache_tree(tree, {"index0": ("Data", "32K"), "index3": ("Unified", size)})
        assert last_level_cache_bytes(str(tree)) == expected


def test_last_level_cache_agrees_with_getconf():
    # glibc's getconf reads the sizes through CPUID, not sysfs
    out = subprocess.run(["getconf", "-a"], capture_output=True, text=True, check=True).stdout
    sizes = [int(v) for k, _, v in (line.partition(" ") for line in out.splitlines())
             if k in ("LEVEL1_DCACHE_SIZE", "LEVEL2_CACHE_SIZE", "LEVEL3_CACHE_SIZE", "LEVEL4_CACHE_SIZE")
             and v.strip().isdigit() and int(v) > 0]
    assert sizes, out
    assert last_level_cache_bytes() == max(sizes)


def test_the_bound_line_says_when_a_model_fits_the_cache():
    d = {"bytes_per_token": 100 << 20, "last_level_cache_bytes": 300 << 20}
    assert cache_note(d) == " (the bytes read per token fit in the 300 MiB last-level cache: decode may beat it)"
    assert cache_note({**d, "bytes_per_token": (300 << 20) + 1}) == ""
    assert cache_note({**d, "last_level_cache_bytes": None}) == ""
    small = {"bytes_per_token": 100 << 10, "last_level_cache_bytes": 512 << 10}
    assert cache_note(small) == " (the bytes read per token fit in the 512 KiB last-level cache: decode may beat it)"
