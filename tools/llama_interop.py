"""Show that llama.cpp and rwkv-edge run each other's RWKV-6/7 GGUF files with the same logits.

Run by hand (not in CI), in a Python with llama-cpp-python built from source:

    python -m rwkv_edge.tools.llama_interop --fixtures tests/fixtures \\
        [--llama-cpp-src LLAMA_CPP_TREE --hf-python PYTHON_WITH_TORCH_AND_TRANSFORMERS]

For each tiny reference model (tests/fixtures/reference/tiny-7v0, tiny-6v0) and each file below, every
tensor as ggml decodes it must equal what rwkv-edge reads, and llama.cpp's logits at all 48 fixture
positions must match rwkv-edge's on the same file:
  1. files our converter writes (F32, F16, Q8_0, Q4_0); also llama.cpp token by token against its own
     batch, and llama.cpp's tokenizer against ours;
  2. files llama.cpp writes: (a) its quantizer (`llama_model_quantize`, Q8_0, Q4_0, Q4_K_M) from our F32
     file; (b) with --llama-cpp-src, its `convert_hf_to_gguf.py` (F32, Q8_0) from a Hugging Face layout
     of the model (tools/hf_export.py; v6 with `rescale_every: 6`), whose World vocabulary our converter
     must reproduce entry for entry.
It prints two tables and exits 1 if any check fails. docs/format.md, "llama.cpp interoperability", gives
the criteria and a recorded run. llama_cpp is imported in main() only: the package never depends on it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

from ..quant.convert import convert
from ..quant.ggml_types import GGMLType
from ..quant.gguf_reader import GGUFStrings, read_gguf
from ..runtime.model import Model
from .ggml_rounding import our_logits
from .hf_export import write_hf_dir
from .llama_cpp_calls import LlamaCpp

F32_TOL = 1e-3  # the bound for F32 files, absolute
# The Q8_0 bound (2e-2), taken relative to the largest |logit| and used for every non-F32 file:
# llama.cpp rounds activations to 8 bits (fp16 for F16 files) before each matrix product, and how far
# that moves the logits scales with them (docs/format.md).
REL_TOL = 2e-2
JITTER = 1e-7  # relative, float32 rounding's size: how much 8-bit activation rounding amplifies it
STEP_TOL = 1e-4  # llama.cpp one token per call against its own batch
ESCAPES_SAMPLE = "\n\n中文分词 naïve café 😀 back\\slash \\n\tTab 'single' \"double\" \r\n\x00\x7f end"
LLAMA_FTYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15}  # llama.h's llama_ftype values
OUR_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.Q8_0, GGMLType.Q4_0)
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                  "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")


@dataclass(frozen=True)
class Case:
    """One reference model: its official checkpoint and the token ids to run."""

    name: str
    pth: str
    tokens: np.ndarray  # (T,) int


@dataclass(frozen=True)
class FileResult:
    """llama.cpp against rwkv-edge on one GGUF file."""

    model: str
    writer: str
    qtype: str
    types: str  # the file's non-F32 tensor types with counts
    weights: float  # max |ggml's decoding - ours| over every tensor
    logits: float  # max |Δ| over all positions and the whole vocabulary
    scale: float  # max |logit|
    emulated: float | None  # max |Δ| with ggml's activation rounding reproduced on our side
    jitter: float | None  # how far a JITTER-sized input jitter moves that emulation

    @property
    def bound(self) -> float:
        return F32_TOL if self.qtype == "F32" else REL_TOL * self.scale

    @property
    def passed(self) -> bool:
        return self.weights == 0 and self.logits <= self.bound


@dataclass(frozen=True)
class Check:
    """Any other measured check; passed None marks a row that only informs."""

    model: str
    writer: str
    what: str
    value: float
    criterion: str
    passed: bool | None


@dataclass
class Results:
    files: list[FileResult]
    checks: list[Check]


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max())


def _type_summary(path: str) -> str:
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return " ".join(f"{k}×{v}" for k, v in sorted(counts.items()) if k != "F32") or "all F32"


def weights_diff(llama: LlamaCpp, path: str) -> float:
    """max |Δ| between every tensor as ggml's own dequantizer decodes it and as rwkv-edge reads it."""
    import gguf

    ours = read_gguf(path).tensors
    worst = 0.0
    for t in gguf.GGUFReader(path).tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            theirs = np.asarray(t.data, dtype=np.float32).reshape(-1)
        else:
            theirs = llama.dequantize(int(t.tensor_type), t.data, int(t.n_elements))
        worst = max(worst, _max_abs(theirs, np.asarray(ours[t.name].to_f32(), np.float32).reshape(-1)))
    return worst


def compare_file(llama: LlamaCpp, case: Case, writer: str, qtype: str, path: str, out: Results) -> np.ndarray:
    """Adds the file's row to `out`; returns llama.cpp's logits (T, V)."""
    theirs = llama.logits(path, case.tokens)
    ours = our_logits(path, case.tokens)
    emulated = jitter = None
    if qtype != "F32":
        exact = our_logits(path, case.tokens, emulate=True)
        emulated = _max_abs(theirs, exact)
        jitter = _max_abs(our_logits(path, case.tokens, emulate=True, noise=JITTER), exact)
    out.files.append(FileResult(case.name, writer, qtype, _type_summary(path), weights_diff(llama, path),
                                _max_abs(theirs, ours), float(np.abs(ours).max()), emulated, jitter))
    return theirs


def tokenizer_check(llama: LlamaCpp, case: Case, writer: str, path: str, text: bytes) -> Check:
    """llama.cpp's tokenizer built from the file's vocabulary against the one rwkv-edge builds from it."""
    tokenizer = Model.load(path).tokenizer
    ours = tokenizer.encode(text.decode("utf-8")) if tokenizer is not None else []
    theirs = llama.tokenize(path, text)
    differing = sum(a != b for a, b in zip(ours, theirs)) + abs(len(ours) - len(theirs))
    return Check(case.name, writer, f"tokenizer: ids differing, of {len(theirs)}", float(differing), "= 0",
                 differing == 0)


def check_our_files(llama: LlamaCpp, case: Case, work: str, text: bytes, out: Results) -> None:
    writer = "rwkv-edge convert"
    for qtype in OUR_TYPES:
        path = os.path.join(work, f"{case.name}-ours-{qtype.name}.gguf")
        convert(case.pth, path, qtype)
        theirs = compare_file(llama, case, writer, qtype.name, path, out)
        if qtype != GGMLType.F32:
            continue
        folded = _max_abs(theirs, our_logits(path, case.tokens, fold=True))
        step = _max_abs(llama.step_logits(path, case.tokens), theirs)
        out.checks += [
            Check(case.name, writer, "F32 logits, rwkv-edge keeping the official emb rounding", folded, "info", None),
            Check(case.name, writer, "F32: llama.cpp token by token vs its batch", step, f"≤ {STEP_TOL:g}",
                  step <= STEP_TOL),
            tokenizer_check(llama, case, writer, path, text),
        ]


def check_llama_quantized(llama: LlamaCpp, case: Case, work: str, out: Results) -> None:
    src = os.path.join(work, f"{case.name}-ours-F32.gguf")
    for name, ftype in LLAMA_FTYPES.items():
        dst = os.path.join(work, f"{case.name}-llama-quantize-{name}.gguf")
        llama.quantize(src, dst, ftype)
        compare_file(llama, case, "llama_model_quantize", name, dst, out)


def run_hf_converter(python: str, llama_src: str, hf_dir: str, dst: str, outtype: str) -> None:
    cmd = [python, os.path.join(llama_src, "convert_hf_to_gguf.py"), hf_dir, "--outfile", dst, "--outtype", outtype]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not os.path.exists(dst):
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"convert_hf_to_gguf.py failed ({' '.join(cmd)}):\n{tail}")


def check_hf_converted(llama: LlamaCpp, case: Case, work: str, args: argparse.Namespace, text: bytes,
                       out: Results) -> None:
    writer = "convert_hf_to_gguf.py"
    hf_dir = os.path.join(work, f"{case.name}-hf")
    write_hf_dir(case.pth, hf_dir)
    paths = {}
    for outtype in ("f32", "q8_0"):
        paths[outtype] = os.path.join(work, f"{case.name}-llama-hf-{outtype}.gguf")
        run_hf_converter(args.hf_python, args.llama_cpp_src, hf_dir, paths[outtype], outtype)
        compare_file(llama, case, writer, outtype.upper(), paths[outtype], out)
    # The same function as the source checkpoint: padded vocabulary aside, and for v6 despite the
    # converter's divided weights and halved residual stream (rescale_every_n_layers).
    source = our_logits(case.pth, case.tokens)  # (T, 256)
    diff = _max_abs(our_logits(paths["f32"], case.tokens)[:, : source.shape[1]], source)
    out.checks += [Check(case.name, writer, "rwkv-edge: F32 file vs the source .pth", diff, f"≤ {F32_TOL:g}",
                         diff <= F32_TOL),
                   tokenizer_check(llama, case, writer, paths["f32"], text)]

    # Our converter on the same Hugging Face checkpoint writes llama.cpp's World vocabulary exactly.
    writer = "rwkv-edge convert (HF dir)"
    ours = os.path.join(work, f"{case.name}-ours-world-F32.gguf")
    convert(os.path.join(hf_dir, "model.safetensors"), ours, GGMLType.F32)
    compare_file(llama, case, writer, "F32", ours, out)
    mine, theirs = read_gguf(ours).metadata, read_gguf(paths["f32"]).metadata
    differing = 0
    for key in TOKENIZER_KEYS:
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, (list, GGUFStrings)) and isinstance(b, (list, GGUFStrings)):
            differing += sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
        else:
            differing += a != b
    out.checks += [Check(case.name, writer, "tokenizer.* values differing from convert_hf_to_gguf.py's",
                         float(differing), "= 0", differing == 0),
                   tokenizer_check(llama, case, writer, ours, text)]


def _table(head: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        cells = [[c.replace("|", "\\|") for c in row] for row in [head] + body]
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines[:1] + ["|" + "---|" * len(head)] + lines[1:])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join(fmt.format(*row) for row in [head] + body)


def _verdict(passed: bool | None) -> str:
    return "info" if passed is None else ("pass" if passed else "FAIL")


def format_results(res: Results, markdown: bool) -> str:
    def g(x: float | None) -> str:
        return "-" if x is None else f"{x:.3g}"

    files = [[r.model, r.writer, r.qtype, r.types, g(r.weights), g(r.logits), g(r.logits / r.scale),
              "= 0; " + (f"≤ {F32_TOL:g}" if r.qtype == "F32" else f"≤ {REL_TOL:g}·max|logit| = {r.bound:.3g}"),
              _verdict(r.passed), g(r.emulated), g(r.jitter)] for r in res.files]
    head = ["model", "file writer", "type", "non-F32 tensors", "weights max|Δ|", "logits max|Δ|",
            "÷ max|logit|", "criterion (weights; logits)", "result", "emulated max|Δ|", "jitter moves it"]
    checks = [[c.model, c.writer, c.what, g(c.value), c.criterion, _verdict(c.passed)] for c in res.checks]
    return (_table(head, files, markdown) + "\n\n"
            + _table(["model", "file writer", "check", "value", "criterion", "result"], checks, markdown))


def _cases(args: argparse.Namespace) -> list[Case]:
    pairs = [tuple(p) for p in args.model or []]
    if args.fixtures:
        ref = os.path.join(args.fixtures, "reference")
        pairs += [(os.path.join(ref, f"{n}.pth"), os.path.join(ref, f"{n}.npz")) for n in ("tiny-7v0", "tiny-6v0")]
    if not pairs:
        raise SystemExit("give --fixtures DIR or --model CHECKPOINT TOKENS.npz")
    return [Case(os.path.splitext(os.path.basename(pth))[0], pth, np.load(npz)["tokens"].astype(np.int64))
            for pth, npz in pairs]


def _sample_text(args: argparse.Namespace) -> bytes:
    path = args.text or (os.path.join(args.fixtures, "text-gpl3.txt") if args.fixtures else None)
    head = ""
    if path:
        with open(path, "rb") as f:
            head = f.read(4000).decode("utf-8", errors="ignore")  # a cut may split a character
    return (head + ESCAPES_SAMPLE).encode("utf-8")  # the tail needs \xNN, \\, \t and quote escapes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rwkv_edge.tools.llama_interop",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--fixtures", help="the repository's tests/fixtures folder (tiny-7v0 and tiny-6v0)")
    p.add_argument("--model", nargs=2, action="append", metavar=("CHECKPOINT", "TOKENS_NPZ"),
                   help="an official RWKV-6/7 checkpoint and an .npz with the 'tokens' to run (repeatable)")
    p.add_argument("--text", help="text for the tokenizer checks (default: FIXTURES/text-gpl3.txt)")
    p.add_argument("--llama-cpp-src", help="llama.cpp source tree with convert_hf_to_gguf.py (enables 2b)")
    p.add_argument("--hf-python", default=sys.executable, help="a Python with torch and transformers, for 2b")
    p.add_argument("--work", help="folder to keep the files written in (default: a temporary one, removed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = p.parse_args(argv)

    import llama_cpp  # only here: the package itself never needs llama-cpp-python

    cases = _cases(args)
    text = _sample_text(args)
    llama = LlamaCpp(llama_cpp, args.threads)
    work = args.work or tempfile.mkdtemp(prefix="rwkv-edge-interop-")
    os.makedirs(work, exist_ok=True)
    res = Results([], [])
    try:
        for case in cases:
            check_our_files(llama, case, work, text, res)
            check_llama_quantized(llama, case, work, res)
            if args.llama_cpp_src:
                check_hf_converted(llama, case, work, args, text, res)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(format_results(res, args.markdown))
    if not args.llama_cpp_src:
        print("\nfiles from convert_hf_to_gguf.py: not checked (no --llama-cpp-src)")
    verdicts: list[bool] = [r.passed for r in res.files] + [c.passed for c in res.checks if c.passed is not None]
    failed = verdicts.count(False)
    print(f"\n{len(verdicts) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
