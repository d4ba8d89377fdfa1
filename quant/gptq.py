"""Calibrated rounding of a weight matrix onto a scale-times-codebook block type: GPTQ, then refinement.

What matters is the error of the layer's output, E||(W - Q) x||^2 = sum_r e_r H e_r^T with H = E[x x^T]
the second moment of the matrix's inputs on a calibration text (e_r = row r of W - Q). Plain quantizers
minimise sum e^2 block by block; here each column's rounding error is pushed onto the columns not yet
rounded (GPTQ, Frantar et al. 2022, with 32-column groups = ggml blocks), then coordinate descent revisits
every code with the exact quadratic and the block scales are refit by least squares. When the layers below
are already quantized, the target can be the reference model's output instead (plus a drift to cancel),
which only moves the weights the quadratic is centred on. The result is ordinary ggml blocks
(quant.codebooks.pack).
"""

from __future__ import annotations

import numpy as np

from .codebooks import QK, Codebook, codebook, pack, search_scales, to_fp16
from .ggml_types import GGMLType

DAMP = 0.01  # added to H's diagonal, as a fraction of its mean: keeps H invertible, limits overfitting
PASSES = 2  # refinement sweeps at most: on the tiny models a third changed the objective by < 0.02 %
_REFIT_ROWS = 256  # rows per batch of the scale refit, bounding its (rows, cols) temporaries


def quantize_tensor(
    weights: np.ndarray,
    importance: np.ndarray | None = None,
    *,
    qtype: GGMLType = GGMLType.IQ4_NL,
    cross: np.ndarray | None = None,
    drift: np.ndarray | None = None,
    damp: float = DAMP,
    passes: int = PASSES,
) -> np.ndarray:
    """Quantize weights (rows, cols) to `qtype`: (rows, row_nbytes) uint8 ggml blocks. See round_tensor."""
    d, codes = round_tensor(weights, importance, qtype=qtype, cross=cross, drift=drift, damp=damp, passes=passes)
    return pack(qtype, d, codes)


def round_tensor(
    weights: np.ndarray,
    importance: np.ndarray | None = None,
    *,
    qtype: GGMLType = GGMLType.IQ4_NL,
    cross: np.ndarray | None = None,
    drift: np.ndarray | None = None,
    damp: float = DAMP,
    passes: int = PASSES,
) -> tuple[np.ndarray, np.ndarray]:
    """Scales (rows, cols / 32) float64 (fp16-exact) and codes (rows, cols) int64 for weights (rows, cols).

    importance: None (plain squared error, block by block), (cols,) mean x^2 per input column (an imatrix:
    weighted block search), or (cols, cols) E[x x^T] (GPTQ + refinement). cross: (cols, cols) E[x_ref x^T]
    when the inputs x the quantized model sees differ from the reference model's x_ref (layers below
    already quantized): the target becomes W x_ref instead of W x, so this layer absorbs the error below.
    drift: (rows, cols) E[g x^T] for an error g (rows,) the output should also cancel (for a Linear whose
    output is added to the residual stream: the stream's drift from the reference's, g = h_ref - h), so the
    target becomes W x_ref + g. Both need the (cols, cols) importance.
    """
    book = codebook(qtype)
    w = _check_weights(weights)
    rows, cols = w.shape
    if importance is None or np.ndim(importance) == 1:
        if cross is not None or drift is not None:
            raise ValueError("cross and drift need importance as a (cols, cols) second moment")
        col_weight = np.ones(cols) if importance is None else _check_vector(importance, cols)
        err_weight = np.broadcast_to(col_weight, (rows, cols)).reshape(-1, QK)
        d, codes = search_scales(w.reshape(-1, QK), err_weight, book)
        return d.reshape(rows, cols // QK), codes.reshape(rows, cols)
    H = _check_square(importance, cols, "importance")
    Hd = damped(H, damp)
    if cross is not None or drift is not None:
        cross = H if cross is None else _check_square(cross, cols, "cross")
        w = _compensating_target(w, H, Hd, cross, None if drift is None else _check_drift(drift, w.shape))
    d, codes = gptq(w, Hd, book)
    return refine(w, Hd, book, d, codes, passes)


def damped(H: np.ndarray, damp: float) -> np.ndarray:
    """H (cols, cols) plus damp * mean(diag H) on the diagonal; columns never active get a unit diagonal."""
    Hd = np.array(H, dtype=np.float64)
    dead = np.diag(Hd) <= 0
    Hd[dead, dead] = 1.0
    Hd[np.diag_indices_from(Hd)] += damp * _mean_diag(Hd)
    return Hd


def gptq(w: np.ndarray, H: np.ndarray, book: Codebook) -> tuple[np.ndarray, np.ndarray]:
    """Round w (rows, cols) column by column, each column's error spread over the columns after it.

    A block's scales are searched when the block starts, on the already-corrected weights, weighting each
    column by diag(H). Updates beyond the current block are applied once per block (GPTQ's lazy batch).
    """
    w = np.array(w, dtype=np.float64)
    rows, cols = w.shape
    U = inverse_cholesky(H)  # (cols, cols) upper: H^-1 = U^T U
    col_weight = np.diag(H)  # (cols,)
    d = np.zeros((rows, cols // QK))
    codes = np.zeros((rows, cols), dtype=np.int64)
    for b in range(0, cols, QK):
        block = w[:, b : b + QK]  # (rows, 32) view, corrected in place
        db, _ = search_scales(block, np.broadcast_to(col_weight[b : b + QK], block.shape), book)
        d[:, b // QK] = db
        inv_d = np.divide(1.0, db, out=np.zeros_like(db), where=db != 0)
        err = np.zeros((rows, QK))
        for j in range(QK):
            c = b + j
            codes[:, c] = book.nearest(block[:, j] * inv_d)
            err[:, j] = (block[:, j] - db * book.grid[codes[:, c]]) / U[c, c]
            block[:, j + 1 :] -= np.outer(err[:, j], U[c, c + 1 : b + QK])
        w[:, b + QK :] -= err @ U[b : b + QK, b + QK :]
    return d, codes


def inverse_cholesky(H: np.ndarray) -> np.ndarray:
    """The upper triangular U with H^-1 = U^T U, for H (n, n) symmetric positive definite.

    With J the reversal, J H J = L L^T gives H = R R^T for the upper R = J L J, so U = R^-1: one
    Cholesky and a triangular inverse, several times faster than inverting H and factoring that.
    """
    L = np.linalg.cholesky(H[::-1, ::-1])
    return _inverse_upper(np.ascontiguousarray(L[::-1, ::-1]))


def _inverse_upper(R: np.ndarray) -> np.ndarray:
    """R^-1 for an upper triangular R (n, n), by halves: [[A, B], [0, D]]^-1 = [[A^-1, -A^-1 B D^-1],
    [0, D^-1]], so all but the small diagonal blocks is matrix products."""
    n = len(R)
    if n <= 64:
        return np.triu(np.linalg.inv(R))
    h = n // 2
    out = np.zeros_like(R)
    out[:h, :h] = _inverse_upper(R[:h, :h])
    out[h:, h:] = _inverse_upper(R[h:, h:])
    out[:h, h:] = -(out[:h, :h] @ R[:h, h:]) @ out[h:, h:]
    return out


def refine(
    w: np.ndarray, H: np.ndarray, book: Codebook, d: np.ndarray, codes: np.ndarray, passes: int = PASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Lower sum_r e_r H e_r^T by coordinate descent on the codes, then a least-squares refit of the scales.

    Each code moves to the grid value nearest its own optimum given all the others (the objective never
    rises); a row's refit scales are kept only where, rounded to fp16, they lower that row's objective.
    Stops early once a sweep changes nothing.
    """
    w = np.asarray(w, dtype=np.float64)
    codes = codes.copy()
    d = d.copy()
    grid = book.grid
    rows, cols = w.shape
    wH = w @ H  # (rows, cols), for every pass
    for _ in range(passes):
        d_col = np.repeat(d, QK, axis=1)  # (rows, cols)
        inv_d = np.divide(1.0, d_col, out=np.zeros_like(d_col), where=d_col != 0)
        q = d_col * grid[codes]  # (rows, cols)
        g = wH - q @ H  # (rows, cols): the objective's gradient is -2 g
        before = codes.copy()
        for b in range(0, cols, QK):
            change = np.zeros((rows, QK))
            for j in range(QK):
                c = b + j
                codes[:, c] = book.nearest((q[:, c] + g[:, c] / H[c, c]) * inv_d[:, c])
                new = d_col[:, c] * grid[codes[:, c]]
                change[:, j] = q[:, c] - new
                q[:, c] = new
                g[:, b : b + QK] += np.outer(change[:, j], H[c, b : b + QK])
            g[:, b + QK :] += change @ H[b : b + QK, b + QK :]
        new_d = _refit_scales(wH, H, grid, d, codes)
        if np.array_equal(new_d, d) and np.array_equal(codes, before):
            break
        d = new_d
    return d, codes


def objective(w: np.ndarray, q: np.ndarray, H: np.ndarray) -> np.ndarray:
    """(rows,) output error e_r H e_r^T of each row, e = w - q."""
    e = np.asarray(w, dtype=np.float64) - q
    return np.einsum("rc,rc->r", e @ H, e)


def _refit_scales(wH: np.ndarray, H: np.ndarray, grid: np.ndarray, d: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per row, the block scales minimising the quadratic for fixed codes (an n_blocks x n_blocks system).

    wH = w @ H (rows, cols). For fixed codes p a row's objective in its scales s is
    c - 2 s.y + s^T A s (A[a, b] = p_a . H_ab p_b, y[b] = p_b . (wH)_b), so old and new scales are
    compared without another pass over H.
    """
    rows, cols = wH.shape
    nb = cols // QK
    out = d.copy()
    for r0 in range(0, rows, _REFIT_ROWS):
        p = grid[codes[r0 : r0 + _REFIT_ROWS]]  # (n, cols) code values
        n = len(p)
        p3 = p.reshape(n, nb, QK)
        A = np.empty((n, nb, nb))  # A[r, a, b] = p_r[block a] . H[block a, block b] p_r[block b]
        for b in range(nb):
            t = p[:, b * QK : (b + 1) * QK] @ H[b * QK : (b + 1) * QK]  # (n, cols)
            A[:, :, b] = np.einsum("rai,rai->ra", p3, t.reshape(n, nb, QK))
        y = np.einsum("rai,rai->ra", p3, wH[r0 : r0 + n].reshape(n, nb, QK))  # (n, nb)
        # A block whose codes all stand for 0 (Q4_0/Q5_0/Q8_0) takes no part in the fit: keep its scale.
        idle = np.einsum("rbb->rb", A) <= 0  # (n, nb)
        active = (~idle).astype(np.float64)
        A = A * active[:, :, None] * active[:, None, :]
        A[:, np.arange(nb), np.arange(nb)] += idle
        y = np.where(idle, out[r0 : r0 + n], y)
        try:
            new = to_fp16(np.linalg.solve(A, y[..., None])[..., 0])
        except np.linalg.LinAlgError:  # a singular system: H was damped, so only a degenerate row
            continue
        better = _scale_cost(A, y, new) < _scale_cost(A, y, out[r0 : r0 + n])
        out[r0 : r0 + n][better] = new[better]
    return out


def _scale_cost(A: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(n,) s^T A s - 2 s.y: a row's objective for scales s (n, nb), up to a constant per row."""
    return np.einsum("ra,rab,rb->r", s, A, s) - 2 * np.einsum("rb,rb->r", s, y)


def _compensating_target(
    w: np.ndarray, H: np.ndarray, Hd: np.ndarray, cross: np.ndarray, drift: np.ndarray | None = None
) -> np.ndarray:
    """Weights w' with E||W x_ref + g - Q x||^2 = E||(w' - Q) x||^2 + const: w' = (W cross + drift) Hd^-1,
    damped alike (cross gets the same diagonal as Hd, so w' = W exactly when x = x_ref and g = 0)."""
    shifted = cross + (Hd - H)
    rhs = shifted.T @ w.T  # (cols, rows)
    if drift is not None:
        rhs = rhs + drift.T
    return np.linalg.solve(Hd, rhs).T


def _mean_diag(H: np.ndarray) -> float:
    m = float(np.mean(np.diag(H)))
    return m if m > 0 else 1.0


def _check_weights(weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] % QK or w.shape[1] == 0:
        raise ValueError(f"weights must be (rows, cols) with cols a multiple of {QK}, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights hold NaN or inf")
    return w


def _check_vector(v: np.ndarray, cols: int) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if v.shape != (cols,) or not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError(f"importance must be ({cols},) finite and >= 0, got shape {v.shape}")
    return v + 1e-30 * (np.max(v) + 1.0)  # zero weights make every scale tie; keep a tiny preference


def _check_drift(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape != shape or not np.all(np.isfinite(m)):
        raise ValueError(f"drift must be a finite {shape} matrix, got shape {m.shape}")
    return m


def _check_square(m: np.ndarray, cols: int, what: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (cols, cols) or not np.all(np.isfinite(m)):
        raise ValueError(f"{what} must be a finite ({cols}, {cols}) matrix, got shape {m.shape}")
    return m
