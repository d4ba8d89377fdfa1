"""Calibrated rounding onto codebook block types (quant.codebooks, quant.gptq, quant.allocation).

Layouts are checked against gguf-py's dequantizers, errors against gguf-py's plain quantizers, and the
algorithms against direct computations in torch: textbook (non-lazy) GPTQ, the output error over samples,
least squares for the scales, brute force over every fp16 scale.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from rwkv_edge.quant import codebooks, gptq
from rwkv_edge.quant.allocation import allocate_types, mean_bpw
from rwkv_edge.quant.ggml_types import IQ4_NL_VALUES, GGMLType

TYPES = [GGMLType.IQ4_NL, GGMLType.Q4_0, GGMLType.Q5_0, GGMLType.Q8_0]
PLAIN = [GGMLType.Q4_0, GGMLType.Q5_0, GGMLType.Q8_0]  # types gguf-py can quantize


def gtype(t: GGMLType) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType(int(t))


def weights(rows: int, cols: int, seed: int) -> np.ndarray:
    """Heavy-tailed rows with a few large columns, as trained matrices have."""
    rng = np.random.default_rng(seed)
    w = rng.standard_t(5, size=(rows, cols)) * rng.uniform(0.2, 2.0, size=(1, cols))
    return w.astype(np.float32)


def samples(cols: int, seed: int, n: int = 4096) -> np.ndarray:
    """(n, cols) inputs with a mean and correlated, unequal columns."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((cols, cols)) * rng.uniform(0.1, 3.0, size=cols)
    return rng.standard_normal((n, cols)) @ mix + rng.standard_normal(cols)


def moments(cols: int, seed: int) -> np.ndarray:
    x = samples(cols, seed)
    return x.T @ x / len(x)


def block_errors(w: np.ndarray, q: np.ndarray, col_weight: np.ndarray) -> np.ndarray:
    """Weighted squared error of each 32-block, (rows * cols / 32,)."""
    return (col_weight * (w.astype(np.float64) - q) ** 2).reshape(-1, 32).sum(axis=1)


def decode(data: np.ndarray, qtype: GGMLType) -> np.ndarray:
    return gguf.quants.dequantize(data, gtype(qtype)).astype(np.float64)


# ------------------------------------------------------------------------------------------------
# Codebooks and layout


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_nearest_code_equals_a_search_over_the_midpoints(qtype):
    book = codebooks.CODEBOOKS[qtype]
    mid = (book.grid[1:] + book.grid[:-1]) / 2
    z = np.concatenate([np.random.default_rng(0).uniform(-300, 300, 20000), mid, mid - 1e-9, mid + 1e-9,
                        book.grid, [-1e300, 1e300, 0.0]])
    assert np.array_equal(book.nearest(z), np.searchsorted(mid, z, side="left"))  # ties to the lower value


def test_iq4_nl_grid_is_ggmls():
    assert codebooks.CODEBOOKS[GGMLType.IQ4_NL].grid.tolist() == list(IQ4_NL_VALUES)
    assert list(IQ4_NL_VALUES) == list(gguf.quants.IQ4_NL.kvalues)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("importance", ["none", "imatrix", "moments"])
def test_bytes_decode_in_gguf_py_to_the_values_we_chose(qtype, importance):
    w = weights(24, 96, seed=int(qtype))
    H = moments(96, seed=1)
    imp = {"none": None, "imatrix": np.diag(H), "moments": H}[importance]
    d, codes = gptq.round_tensor(w, imp, qtype=qtype)
    data = gptq.quantize_tensor(w, imp, qtype=qtype)
    assert data.dtype == np.uint8 and data.shape == (24, 3 * gguf.GGML_QUANT_SIZES[gtype(qtype)][1])
    assert np.array_equal(gguf.quants.dequantize(data, gtype(qtype)), codebooks.values(qtype, d, codes))
    assert np.array_equal(np.float16(d).astype(np.float64), d)  # scales are exactly their fp16 field


def test_zero_blocks_stay_zero_under_the_block_search():
    w = weights(4, 64, seed=3)
    w[1, :32] = 0.0
    for importance in (None, np.diag(moments(64, seed=2))):
        assert np.all(decode(gptq.quantize_tensor(w, importance), GGMLType.IQ4_NL)[1, :32] == 0)


# ------------------------------------------------------------------------------------------------
# The block scale search


@pytest.mark.parametrize("qtype", PLAIN, ids=lambda t: t.name)
@pytest.mark.parametrize("seed", [0, 1])
def test_every_block_is_no_worse_than_ggml_on_the_weighted_objective(qtype, seed):
    w = weights(32, 128, seed)
    imatrix = np.random.default_rng(seed + 10).uniform(0.01, 5.0, size=128)
    plain = decode(gguf.quants.quantize(w, gtype(qtype)), qtype)
    for imp, col_weight in ((None, np.ones(128)), (imatrix, imatrix)):
        ours = decode(gptq.quantize_tensor(w, imp, qtype=qtype), qtype)
        assert np.all(block_errors(w, ours, col_weight) <= block_errors(w, plain, col_weight) * (1 + 1e-12))
        assert block_errors(w, ours, col_weight).sum() < block_errors(w, plain, col_weight).sum()


def test_the_scale_search_is_close_to_the_best_fp16_scale():
    """Brute force over every finite fp16 scale (codes nearest for each): the search is within 1 %."""
    x = weights(1, 96, seed=4).reshape(3, 32).astype(np.float64)
    wts = np.random.default_rng(5).uniform(0.1, 2.0, size=x.shape)
    book = codebooks.CODEBOOKS[GGMLType.IQ4_NL]
    d, codes = codebooks.search_scales(x, wts, book)
    ours = np.sum(wts * (x - d[:, None] * book.grid[codes]) ** 2, axis=1)
    all_d = np.arange(1, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)  # positive finite
    all_d = np.concatenate([all_d, -all_d])
    for b in range(3):
        z = torch.from_numpy(x[b][None, :] / all_d[:, None])  # (n_scales, 32)
        q = book.grid[book.nearest(z.numpy())]
        best = np.min(np.sum(wts[b] * (x[b] - all_d[:, None] * q) ** 2, axis=1))
        assert best <= ours[b] <= 1.01 * best


# ------------------------------------------------------------------------------------------------
# GPTQ and refinement against direct computations


def textbook_gptq(w: np.ndarray, H: np.ndarray, book: codebooks.Codebook) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ column by column with every update applied at once (no lazy batches), in torch float64."""
    W = torch.tensor(w, dtype=torch.float64)
    U = torch.linalg.cholesky(torch.linalg.inv(torch.tensor(H)), upper=True)
    rows, cols = W.shape
    d = np.zeros((rows, cols // 32))
    codes = np.zeros((rows, cols), dtype=np.int64)
    for c in range(cols):
        if c % 32 == 0:
            block = W[:, c : c + 32].numpy()
            col_weight = np.broadcast_to(np.diag(H)[c : c + 32], block.shape)
            d[:, c // 32], _ = codebooks.search_scales(block, col_weight, book)
        db = torch.from_numpy(d[:, c // 32])
        z = torch.where(db != 0, W[:, c] / torch.where(db != 0, db, 1.0), 0.0)
        codes[:, c] = book.nearest(z.numpy())
        err = (W[:, c] - db * torch.from_numpy(book.grid[codes[:, c]])) / U[c, c]
        W[:, c:] -= torch.outer(err, U[c, c:])
    return d, codes


@pytest.mark.parametrize("n", [1, 5, 64, 65, 200])
def test_inverse_cholesky_is_the_upper_factor_of_the_inverse(n):
    H = gptq.damped(moments(n, seed=n), gptq.DAMP)
    U = gptq.inverse_cholesky(H)
    expected = torch.linalg.cholesky(torch.linalg.inv(torch.tensor(H)), upper=True).numpy()
    assert np.array_equal(U, np.triu(U))
    assert np.allclose(U, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())


@pytest.mark.parametrize("qtype", [GGMLType.IQ4_NL, GGMLType.Q5_0], ids=lambda t: t.name)
def test_lazy_block_gptq_equals_textbook_gptq(qtype):
    w = weights(16, 96, seed=6).astype(np.float64)
    H = gptq.damped(moments(96, seed=7), gptq.DAMP)
    book = codebooks.CODEBOOKS[qtype]
    d, codes = gptq.gptq(w, H, book)
    d_ref, codes_ref = textbook_gptq(w, H, book)
    assert np.array_equal(d, d_ref)
    assert np.mean(codes == codes_ref) > 0.999  # float rounding may tip a rare exact tie


def test_objective_is_the_mean_output_error_over_samples():
    w, x = weights(8, 64, seed=8), samples(64, seed=9, n=500)
    q = decode(gptq.quantize_tensor(w), GGMLType.IQ4_NL)
    per_row = torch.mean((torch.tensor(x) @ torch.tensor(w - q, dtype=torch.float64).T) ** 2, dim=0).numpy()
    assert np.allclose(gptq.objective(w, q, x.T @ x / len(x)), per_row, rtol=1e-10)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_output_error_with_moments_beats_plain_and_imatrix(qtype):
    w = weights(48, 128, seed=10)
    H = moments(128, seed=11)
    err = gptq.objective(w, decode(gptq.quantize_tensor(w, H, qtype=qtype), qtype), H).sum()
    with_imatrix = decode(gptq.quantize_tensor(w, np.diag(H), qtype=qtype), qtype)
    assert err < 0.8 * gptq.objective(w, with_imatrix, H).sum()
    if qtype in PLAIN:
        plain = decode(gguf.quants.quantize(w, gtype(qtype)), qtype)
        assert err < 0.7 * gptq.objective(w, plain, H).sum()


def test_refinement_never_raises_the_objective():
    w = weights(16, 96, seed=12).astype(np.float64)
    H = gptq.damped(moments(96, seed=13), gptq.DAMP)
    book = codebooks.CODEBOOKS[GGMLType.IQ4_NL]
    d, codes = gptq.gptq(w, H, book)
    before = gptq.objective(w, codebooks.values(GGMLType.IQ4_NL, d, codes), H)
    d2, codes2 = gptq.refine(w, H, book, d, codes, passes=2)
    after = gptq.objective(w, codebooks.values(GGMLType.IQ4_NL, d2, codes2), H)
    assert np.all(after <= before * (1 + 1e-12)) and after.sum() < before.sum()


@pytest.mark.parametrize("qtype", [GGMLType.IQ4_NL, GGMLType.Q4_0], ids=lambda t: t.name)
def test_scale_refit_reaches_the_least_squares_optimum(qtype):
    """For fixed codes, the best block scales of a row solve min_s (w - B s)^T H (w - B s), B (cols, nb)
    holding the code values block-diagonally; the refit reaches that optimum up to fp16 rounding."""
    w = weights(6, 128, seed=14).astype(np.float64)
    H = gptq.damped(moments(128, seed=15), gptq.DAMP)
    book = codebooks.CODEBOOKS[qtype]
    d, codes = gptq.round_tensor(w, None, qtype=qtype)
    if qtype == GGMLType.Q4_0:
        codes[0, :32] = 8  # a block of zeros: its scale has no say and must be kept
    refit = gptq._refit_scales(w @ H, H, book.grid, d, codes)
    L = torch.linalg.cholesky(torch.tensor(H))  # H = L L^T: the objective is ||L^T (w - B s)||^2
    for r in range(6):
        p = book.grid[codes[r]].reshape(4, 32)
        B = torch.block_diag(*[torch.tensor(p[b][:, None]) for b in range(4)])  # (128, 4)
        active = np.any(p != 0, axis=1)
        sol = torch.linalg.lstsq(L.T @ B[:, active], L.T @ torch.tensor(w[r])[:, None]).solution[:, 0].numpy()
        best = d[r].copy()
        best[active] = sol

        def obj(s, r=r):
            return gptq.objective(w[r : r + 1], np.repeat(s[None, :], 32, axis=1) * book.grid[codes[r]], H)[0]

        assert obj(best) <= obj(refit[r]) * (1 + 1e-9) <= obj(d[r]) * (1 + 1e-9)
        assert obj(refit[r]) <= obj(codebooks.to_fp16(best)) * (1 + 1e-9) or obj(refit[r]) == obj(d[r])
        if not active.all():
            assert refit[r][~active] == d[r][~active]


def test_cross_moments_make_the_layer_absorb_the_error_below():
    """With inputs x = x_ref + noise (layers below quantized), aiming at W x_ref lowers E||W x_ref - Q x||^2."""
    rng = np.random.default_rng(16)
    w = weights(32, 64, seed=17)
    x_ref = rng.standard_normal((8192, 64)) @ rng.standard_normal((64, 64))
    x = x_ref * rng.uniform(0.8, 1.2, size=64) + 0.3 * rng.standard_normal((8192, 64))
    H, cross = x.T @ x / len(x), x_ref.T @ x / len(x)

    def err(data):
        return np.mean((x_ref @ w.T.astype(np.float64) - x @ decode(data, GGMLType.IQ4_NL).T) ** 2)

    assert err(gptq.quantize_tensor(w, H, cross=cross)) < 0.5 * err(gptq.quantize_tensor(w, H))
    # When the inputs are the reference's, cross = H and the target is W itself.
    assert np.array_equal(gptq.quantize_tensor(w, H, cross=H), gptq.quantize_tensor(w, H))


def test_the_compensating_target_shifts_the_objective_by_a_constant():
    """E||W x_ref - Q x||^2 - E||(W' - Q) x||^2 is the same for any Q (undamped: Hd = H)."""
    rng = np.random.default_rng(18)
    w = weights(4, 32, seed=19).astype(np.float64)
    x_ref = rng.standard_normal((3000, 32))
    x = x_ref + 0.2 * rng.standard_normal((3000, 32))
    H, cross = x.T @ x / len(x), x_ref.T @ x / len(x)
    target = gptq._compensating_target(w, H, H, cross)
    gaps = []
    for seed in range(3):
        q = w + rng.standard_normal(w.shape) * 0.1 * (seed + 1)
        direct = np.mean(np.sum((x_ref @ w.T - x @ q.T) ** 2, axis=1))
        gaps.append(direct - gptq.objective(target, q, H).sum())
    assert np.allclose(gaps, gaps[0], rtol=1e-9, atol=1e-9 * abs(gaps[0]))


def test_drift_makes_the_output_cancel_an_error_it_can_predict():
    """Aiming at W x_ref + g (g the residual stream's drift, partly predictable from x) lowers
    E||W x_ref + g - Q x||^2, and the target differs from it by a constant for any Q (undamped)."""
    rng = np.random.default_rng(20)
    w = weights(32, 64, seed=21).astype(np.float64)
    x_ref = rng.standard_normal((8192, 64)) @ rng.standard_normal((64, 64))
    x = x_ref + 0.3 * rng.standard_normal((8192, 64))
    g = x @ rng.standard_normal((64, 32)) * 0.2 + 0.1 * rng.standard_normal((8192, 32))
    H, cross, drift = x.T @ x / len(x), x_ref.T @ x / len(x), g.T @ x / len(x)

    def err(data):
        return np.mean((x_ref @ w.T + g - x @ decode(data, GGMLType.IQ4_NL).T) ** 2)

    assert err(gptq.quantize_tensor(w, H, cross=cross, drift=drift)) < 0.5 * err(gptq.quantize_tensor(w, H, cross=cross))
    target = gptq._compensating_target(w, H, H, cross, drift)
    gaps = []
    for seed in range(3):
        q = w + rng.standard_normal(w.shape) * 0.1 * (seed + 1)
        direct = np.mean(np.sum((x_ref @ w.T + g - x @ q.T) ** 2, axis=1))
        gaps.append(direct - gptq.objective(target, q, H).sum())
    assert np.allclose(gaps, gaps[0], rtol=1e-9, atol=1e-9 * abs(gaps[0]))
    # a zero drift is no drift; drift alone aims at W x + g
    assert np.array_equal(gptq.quantize_tensor(w, H, cross=cross, drift=np.zeros_like(drift)),
                          gptq.quantize_tensor(w, H, cross=cross))
    assert np.array_equal(gptq.quantize_tensor(w, H, drift=drift), gptq.quantize_tensor(w, H, cross=H, drift=drift))


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.zeros((4, 40), np.float32), None), "multiple of 32"),
        ((np.full((2, 32), np.nan, np.float32), None), "NaN"),
        ((np.zeros((2, 32), np.float32), np.ones(31)), r"importance must be \(32,\)"),
        ((np.zeros((2, 32), np.float32), np.ones((32, 31))), r"finite \(32, 32\) matrix"),
    ],
)
def test_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        gptq.quantize_tensor(*args)


def test_bad_drift_and_moments_without_a_square_importance_are_refused():
    w, H = np.zeros((2, 32), np.float32), np.eye(32)
    with pytest.raises(ValueError, match=r"drift must be a finite \(2, 32\) matrix"):
        gptq.quantize_tensor(w, H, drift=np.zeros((32, 2)))
    with pytest.raises(ValueError, match="need importance as a"):
        gptq.quantize_tensor(w, np.ones(32), drift=np.zeros((2, 32)))


def test_types_without_a_codebook_are_refused():
    with pytest.raises(ValueError, match="Q4_1 is not a scale-times-codebook type"):
        gptq.quantize_tensor(np.zeros((2, 32), np.float32), qtype=GGMLType.Q4_1)


# ------------------------------------------------------------------------------------------------
# Mixed precision


def test_allocation_spends_the_budget_where_it_saves_most_per_bit():
    sizes = {"a": 4096, "b": 4096, "c": 16384, "d": 16384}
    gains = {
        "a": {GGMLType.Q5_0: 3.0, GGMLType.Q8_0: 4.0},  # 3.0 / 4096 bits: the best ratio
        "b": {GGMLType.Q5_0: 0.5},
        "c": {GGMLType.Q5_0: 8.0},  # 8 / 16384: second
        "d": {GGMLType.Q5_0: 1.0},
    }
    total = sum(sizes.values())
    budget = 4.5 + (4096 + 16384) / total
    types = allocate_types(sizes, gains, base=GGMLType.IQ4_NL, budget_bpw=budget)
    assert types == {"a": GGMLType.Q5_0, "b": GGMLType.IQ4_NL, "c": GGMLType.Q5_0, "d": GGMLType.IQ4_NL}
    assert mean_bpw(sizes, types) <= budget + 1e-12
    # a tensor that no longer fits is skipped, and a smaller one after it still gets the rest
    assert allocate_types(sizes, {"c": {GGMLType.Q5_0: 8.0}, "b": {GGMLType.Q5_0: 0.1}}, base=GGMLType.IQ4_NL,
                          budget_bpw=4.5 + 4096 / total)["b"] == GGMLType.Q5_0
    assert set(allocate_types(sizes, gains, base=GGMLType.IQ4_NL, budget_bpw=4.5).values()) == {GGMLType.IQ4_NL}
    with pytest.raises(ValueError, match="below IQ4_NL's 4.5"):
        allocate_types(sizes, gains, base=GGMLType.IQ4_NL, budget_bpw=4.4)
