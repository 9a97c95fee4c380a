"""The Triton kernels of ``attention_impl="triton"`` (imported only when that path runs).

Letters as in :mod:`g_selfatt.nn.attention`; ``R = Q V`` rows of a tile (query pixel,
output element), ``X = J M`` entries of a key tile (key pixel, key element). One program
handles a tile of ``BLOCK_Q`` query pixels of one head-batch ``bn`` and one query element
``g``, for every output element ``v``:

* the content logits ``q[i, g] . k[j, m]`` of a key tile are one ``(Q, C) x (C, X)`` matrix
  product, computed once and broadcast over ``v``;
* the positional logits ``q_pos[i, g] . E[v, offset(i, j)]`` are gathered from the ``(V, T, 2D)``
  table of acted offsets, once per key pixel and broadcast over ``m``;
* the group logits ``(Q, V, M)`` are read once per program and broadcast over ``j``;
* the softmax over ``(j, m)`` runs online (flash-attention style): a running maximum and sum
  per row, the value contraction ``(R, X) x (X, C)`` accumulated in float32 (float64 for
  float64 inputs), and the row's log-sum-exp written for the backward pass. No score tensor
  reaches memory.

Local layers take square tiles of ``4 x 4`` query pixels and visit only the ``(4 + 2r)``-wide
window of keys around them, in 2-D tiles of key pixels, masking the keys outside each query's
patch; no key outside the image is ever visited. Global layers take 16 consecutive query pixels against all keys.

Attention dropout keeps entry ``(row, entry)`` when the top 24 bits of Philox's
``randint(seed, row * H W M + entry)`` lie below the threshold of
:func:`g_selfatt.nn.fused_attention.dropout_threshold` (``row = ((bn H W + i) V + v) G + g``,
``entry = j M + m``): a counter-based draw, so the backward pass draws the same mask.

GPU compile rules are met by construction: every block size is a power of two and every
``tl.dot`` operand is at least 16 along each dimension (``BLOCK_Q >= 16``, ``BLOCK_C >= 16``,
``BLOCK_J BLOCK_M >= 16``); padding lanes are masked.
"""

import triton
import triton.language as tl

NEGATIVE_START = tl.constexpr(-1e30)  # the running maximum before any key (finite: exp(start - start) = 1)
SQUARE = tl.constexpr(4)  # side of the square query tiles of local layers (BLOCK_Q = 16)


@triton.jit
def _square_corner(W):
    """Row and column of the top-left pixel of this program's square of query pixels (local layers)."""
    tiles_across = tl.cdiv(W, SQUARE)
    return (tl.program_id(0) // tiles_across) * SQUARE, (tl.program_id(0) % tiles_across) * SQUARE


@triton.jit
def _tile_indices(HW, H, W, LOCAL: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Query pixels of this program, their rows and columns, and which exist.

    Local layers: a square of ``SQUARE x SQUARE`` pixels (``BLOCK_Q = SQUARE^2``), so that the
    keys the tile sees form a small window; global layers: ``BLOCK_Q`` consecutive pixels.
    """
    if LOCAL:
        top, left = _square_corner(W)
        place = tl.arange(0, BLOCK_Q)
        qr = top + place // SQUARE
        qc = left + place % SQUARE
        q_ok = (qr < H) & (qc < W)
        qi = tl.where(q_ok, qr * W + qc, 0)
    else:
        qi = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        qr = qi // W
        qc = qi % W
        q_ok = qi < HW
    return qi, qr, qc, q_ok


@triton.jit
def _key_window(HW, H, W, RADIUS, LOCAL: tl.constexpr, BLOCK_J: tl.constexpr, KEY_COLS: tl.constexpr):
    """The keys the tile's queries may see and how they are cut into tiles of ``BLOCK_J`` pixels.

    Returns ``(row_lo, row_hi, col_lo, col_hi, per_row, tiles)``. Local layers visit the square's
    window of the image, rows ``[row_lo, row_hi)`` and columns ``[col_lo, col_hi)`` (cut at the
    image's edges), in tiles of ``BLOCK_J / KEY_COLS`` rows by ``KEY_COLS`` columns, ``per_row``
    tiles across. Global layers see all ``H W`` pixels as one row (``KEY_COLS = BLOCK_J``).
    """
    if LOCAL:
        top, left = _square_corner(W)
        row_lo = tl.maximum(top - RADIUS, 0)
        row_hi = tl.minimum(top + SQUARE + RADIUS, H)
        col_lo = tl.maximum(left - RADIUS, 0)
        col_hi = tl.minimum(left + SQUARE + RADIUS, W)
        per_row = tl.cdiv(col_hi - col_lo, KEY_COLS)
        tiles = tl.cdiv(row_hi - row_lo, BLOCK_J // KEY_COLS) * per_row
    else:
        row_lo = 0
        row_hi = 1
        col_lo = 0
        col_hi = HW
        per_row = tl.cdiv(HW, BLOCK_J)
        tiles = per_row
    return row_lo, row_hi, col_lo, col_hi, per_row, tiles


@triton.jit
def _tile_keys(tile, row_lo, row_hi, col_lo, col_hi, per_row, W, BLOCK_J: tl.constexpr, KEY_COLS: tl.constexpr):
    """Key pixels ``(BLOCK_J,)`` of tile number ``tile`` of :func:`_key_window`, and which exist."""
    place = tl.arange(0, BLOCK_J)
    rows = row_lo + (tile // per_row) * (BLOCK_J // KEY_COLS) + place // KEY_COLS
    cols = col_lo + (tile % per_row) * KEY_COLS + place % KEY_COLS
    return rows * W + cols, (rows < row_hi) & (cols < col_hi)


@triton.jit
def _load_queries(Q, bn, g, qi, q_ok, HW, G, C, BLOCK_C: tl.constexpr):
    """``q[i, g]`` of the tile, ``(Q, BLOCK_C)`` (zero beyond ``C`` and beyond the image)."""
    ci = tl.arange(0, BLOCK_C)
    rows = ((bn * HW + qi).to(tl.int64) * G + g) * C
    return tl.load(Q + rows[:, None] + ci[None, :], mask=q_ok[:, None] & (ci[None, :] < C), other=0.0), rows


@triton.jit
def _load_keys(T, bn, jj, j_ok, HW, M, C, BLOCK_J: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Keys (or values) ``(X, BLOCK_C)`` of key pixels ``jj`` and every key element, with their offsets and mask."""
    mi = tl.arange(0, BLOCK_M)
    ci = tl.arange(0, BLOCK_C)
    rows = (bn * HW + jj).to(tl.int64)[:, None] * M + mi[None, :]  # (J, M)
    ok = j_ok[:, None] & (mi[None, :] < M)
    pointers = rows[:, :, None] * C + ci[None, None, :]  # (J, M, C)
    mask = ok[:, :, None] & (ci[None, None, :] < C)
    tile = tl.load(T + pointers, mask=mask, other=0.0)
    return tl.reshape(tile, (BLOCK_J * BLOCK_M, BLOCK_C)), pointers, mask, ok


@triton.jit
def _offsets(qr, qc, q_ok, jj, j_ok, W, RADIUS, SIDE, LOCAL: tl.constexpr):
    """Index of the offset ``j - i`` in the offset table, ``(Q, J)``, and whether ``j`` is a key of ``i``.

    Pairs that are not (a missing query or key, a key outside a local patch) get index 0, so
    that every table read stays inside the table.
    """
    dr = (jj // W)[None, :] - qr[:, None]
    dc = (jj % W)[None, :] - qc[:, None]
    inside = q_ok[:, None] & j_ok[None, :]
    if LOCAL:
        inside = inside & (dr <= RADIUS) & (dr >= -RADIUS) & (dc <= RADIUS) & (dc >= -RADIUS)
    offset = tl.where(inside, (dr + RADIUS) * SIDE + dc + RADIUS, 0)
    return offset, inside


@triton.jit
def _rows(bn, qi, g, vi, HW, V, G):
    """Row numbers ``(Q, V)`` of the tile: of the output ``(BN, HW, V, C)`` and of the softmax rows
    ``(BN, HW, V, G)`` (the per-element outputs, log-sum-exps and dropout counters)."""
    pixel_rows = (bn * HW + qi).to(tl.int64)[:, None] * V + vi[None, :]
    return pixel_rows, pixel_rows * G + g


@triton.jit
def _keep(seed, row, jj, HW, M, threshold,
          BLOCK_Q: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_M: tl.constexpr):
    """Whether dropout keeps each entry, ``(R, X)``, of softmax rows ``row`` ``(Q, V)``: the same draw in both passes."""
    mi = tl.arange(0, BLOCK_M)
    entry = jj.to(tl.int64)[:, None] * M + mi[None, :]  # (J, M)
    counter = row[:, :, None, None] * (HW * M) + entry[None, None, :, :]  # (Q, V, J, M)
    return tl.reshape(_kept(seed, counter, threshold), (BLOCK_Q * BLOCK_V, BLOCK_J * BLOCK_M))


@triton.jit
def _kept(seed, counter, threshold):
    """Dropout's decision for the entries numbered ``counter``: the top 24 bits of a Philox draw below ``threshold``."""
    return (tl.randint(seed, counter) >> 8) < threshold


@triton.jit
def dropout_flags(FLAGS, seed, threshold, count, BLOCK: tl.constexpr):
    """``FLAGS[n] = 1`` where dropout keeps entry ``n`` (counter ``n``) of the kernels: for inspecting the draw."""
    n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(FLAGS + n, _kept(seed, n.to(tl.int64), threshold).to(tl.int8), mask=n < count)


@triton.jit
def _logits(q, Q_rows, Q, E, gl, kt, table, inside, key_ok, v_ok, D2,
            BLOCK_Q: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_M: tl.constexpr):
    """The logits of a tile ``(R, X)``; ``-inf`` for entries that are not keys of the row.

    ``table`` ``(Q, V, J)``: where the encoding of each (query, output element, key pixel) starts in ``E``.
    """
    content = tl.dot(q, tl.trans(kt), input_precision="ieee")  # (Q, X)
    content = tl.reshape(content, (BLOCK_Q, 1, BLOCK_J, BLOCK_M))
    positional = tl.zeros((BLOCK_Q, BLOCK_V, BLOCK_J), dtype=q.dtype)
    for d in range(D2):
        q_d = tl.load(Q + Q_rows + d)  # (Q,): rows of missing queries are clamped by the caller
        positional += q_d[:, None, None] * tl.load(E + table + d, mask=v_ok[None, :, None], other=0.0)
    logits = content + positional[:, :, :, None] + gl[:, :, None, :]  # (Q, V, J, M)
    valid = v_ok[None, :, None, None] & inside[:, None, :, None] & key_ok[None, None, :, :]
    logits = tl.where(valid, logits, float("-inf"))
    return tl.reshape(logits, (BLOCK_Q * BLOCK_V, BLOCK_J * BLOCK_M))


@triton.jit
def _load_group_logits(GL, bn, g, qi, q_ok, HW, V, G, M, HAS_GROUP: tl.constexpr,
                       BLOCK_Q: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_M: tl.constexpr, dtype: tl.constexpr):
    """The group logits ``(Q, V, M)`` of the tile (zero for lifting layers), and their offsets and mask."""
    vi = tl.arange(0, BLOCK_V)
    mi = tl.arange(0, BLOCK_M)
    pointers = (((bn * HW + qi).to(tl.int64)[:, None, None] * V + vi[None, :, None]) * G + g) * M + mi[None, None, :]
    mask = q_ok[:, None, None] & (vi[None, :, None] < V) & (mi[None, None, :] < M)
    if HAS_GROUP:
        gl = tl.load(GL + pointers, mask=mask, other=0.0)
    else:
        gl = tl.zeros((BLOCK_Q, BLOCK_V, BLOCK_M), dtype=dtype)
    return gl, pointers, mask


@triton.jit
def _key_tile(tile, row_lo, row_hi, col_lo, col_hi, per_row, bn, q, q_rows, qr, qc, q_ok, Q, K, E, gl, v_ok,
              HW, W, M, V, C, D2, T, SIDE, RADIUS, LOCAL: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_V: tl.constexpr,
              BLOCK_J: tl.constexpr, KEY_COLS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Key tile number ``tile``: its pixels, keys, positional-table starts and the logits of the program's rows."""
    jj, j_ok = _tile_keys(tile, row_lo, row_hi, col_lo, col_hi, per_row, W, BLOCK_J, KEY_COLS)
    kt, key_pointers, key_mask, key_ok = _load_keys(K, bn, jj, j_ok, HW, M, C, BLOCK_J, BLOCK_M, BLOCK_C)
    offset, inside = _offsets(qr, qc, q_ok, jj, j_ok, W, RADIUS, SIDE, LOCAL)
    table = (tl.arange(0, BLOCK_V)[None, :, None] * T + offset[:, None, :]) * D2  # (Q, V, J)
    logits = _logits(q, q_rows, Q, E, gl, kt, table, inside, key_ok, v_ok, D2, BLOCK_Q, BLOCK_V, BLOCK_J, BLOCK_M)
    return jj, j_ok, kt, key_pointers, key_mask, table, inside, logits


@triton.jit
def _program_start(Q, GL, HW, H, W, G, M, V, C, LOCAL: tl.constexpr, HAS_GROUP: tl.constexpr,
                   BLOCK_Q: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """What both kernels read first: the program's ``bn`` and ``g``, its queries and group logits."""
    bn = tl.program_id(1)
    g = tl.program_id(2)
    qi, qr, qc, q_ok = _tile_indices(HW, H, W, LOCAL, BLOCK_Q)
    q, q_rows = _load_queries(Q, bn, g, qi, q_ok, HW, G, C, BLOCK_C)
    q_rows = tl.where(q_ok, q_rows, 0)  # missing queries read row 0 (their results are never stored)
    gl, gl_pointers, gl_mask = _load_group_logits(GL, bn, g, qi, q_ok, HW, V, G, M, HAS_GROUP,
                                                  BLOCK_Q, BLOCK_V, BLOCK_M, q.dtype)
    vi = tl.arange(0, BLOCK_V)
    return bn, g, qi, qr, qc, q_ok, q, q_rows, gl, gl_pointers, gl_mask, vi, vi < V


@triton.jit
def attention_forward(Q, K, VAL, E, GL, O, LSE, seed, threshold, keep_scale,
                      HW, H, W, G, M, V, C, D2, T, SIDE, RADIUS,
                      LOCAL: tl.constexpr, HAS_GROUP: tl.constexpr, DROPOUT: tl.constexpr,
                      BLOCK_Q: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_J: tl.constexpr, KEY_COLS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """``O[bn, i, v, g] = softmax_(j, m)(logits) . values`` and its log-sum-exp, one program per (tile, bn, g)."""
    bn, g, qi, qr, qc, q_ok, q, q_rows, gl, gl_pointers, gl_mask, vi, v_ok = _program_start(
        Q, GL, HW, H, W, G, M, V, C, LOCAL, HAS_GROUP, BLOCK_Q, BLOCK_V, BLOCK_M, BLOCK_C)
    row_max = tl.full((BLOCK_Q * BLOCK_V,), NEGATIVE_START, dtype=q.dtype)
    row_sum = tl.zeros((BLOCK_Q * BLOCK_V,), dtype=q.dtype)
    acc = tl.zeros((BLOCK_Q * BLOCK_V, BLOCK_C), dtype=q.dtype)
    pixel_rows, rows = _rows(bn, qi, g, vi, HW, V, G)
    row_lo, row_hi, col_lo, col_hi, per_row, tiles = _key_window(HW, H, W, RADIUS, LOCAL, BLOCK_J, KEY_COLS)
    for tile in range(0, tiles):
        jj, j_ok, kt, key_pointers, key_mask, table, inside, logits = _key_tile(
            tile, row_lo, row_hi, col_lo, col_hi, per_row, bn, q, q_rows, qr, qc, q_ok, Q, K, E, gl, v_ok,
            HW, W, M, V, C, D2, T, SIDE, RADIUS, LOCAL, BLOCK_Q, BLOCK_V, BLOCK_J, KEY_COLS, BLOCK_M, BLOCK_C)
        new_max = tl.maximum(row_max, tl.max(logits, 1))
        p = tl.exp(logits - new_max[:, None])  # (R, X)
        rescale = tl.exp(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(p, 1)
        if DROPOUT:
            kept = _keep(seed, rows, jj, HW, M, threshold, BLOCK_Q, BLOCK_V, BLOCK_J, BLOCK_M)
            p = tl.where(kept, p * keep_scale, 0.0)
        values, value_pointers, value_mask, value_ok = _load_keys(VAL, bn, jj, j_ok, HW, M, C, BLOCK_J, BLOCK_M, BLOCK_C)
        acc = acc * rescale[:, None] + tl.dot(p.to(values.dtype), values, input_precision="ieee")
        row_max = new_max
    row_sum = tl.where(row_sum > 0, row_sum, 1.0)
    out = tl.reshape(acc / row_sum[:, None], (BLOCK_Q, BLOCK_V, BLOCK_C))
    ci = tl.arange(0, BLOCK_C)
    row_ok = q_ok[:, None] & v_ok[None, :]
    tl.store(O + rows[:, :, None] * C + ci[None, None, :], out, mask=row_ok[:, :, None] & (ci[None, None, :] < C))
    lse = tl.reshape(row_max + tl.log(row_sum), (BLOCK_Q, BLOCK_V))
    tl.store(LSE + rows, lse, mask=row_ok)


@triton.jit
def attention_backward(Q, K, VAL, E, GL, DO, LSE, DELTA, DQ, DK, DV, DE, DGL, seed, threshold, keep_scale,
                       HW, H, W, G, M, V, C, D2, T, SIDE, RADIUS,
                       LOCAL: tl.constexpr, HAS_GROUP: tl.constexpr, DROPOUT: tl.constexpr,
                       BLOCK_Q: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_J: tl.constexpr, KEY_COLS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Gradients of :func:`attention_forward`, one program per (tile, bn, g).

    Writes ``DQ`` and ``DGL`` of its own queries; adds into ``DK``, ``DV`` and ``DE`` atomically.
    ``DELTA[row] = dO . O[row]`` (the softmax gradient's correction) and ``LSE`` come from the
    forward pass; ``dS = P (dP - DELTA)``.
    """
    bn, g, qi, qr, qc, q_ok, q, q_rows, gl, gl_pointers, gl_mask, vi, v_ok = _program_start(
        Q, GL, HW, H, W, G, M, V, C, LOCAL, HAS_GROUP, BLOCK_Q, BLOCK_V, BLOCK_M, BLOCK_C)
    ci = tl.arange(0, BLOCK_C)
    pixel_rows, rows = _rows(bn, qi, g, vi, HW, V, G)
    row_ok = q_ok[:, None] & v_ok[None, :]
    grad_out = tl.load(DO + pixel_rows[:, :, None] * C + ci[None, None, :],
                       mask=row_ok[:, :, None] & (ci[None, None, :] < C), other=0.0)
    grad_out = tl.reshape(grad_out, (BLOCK_Q * BLOCK_V, BLOCK_C))
    lse = tl.reshape(tl.load(LSE + rows, mask=row_ok, other=float("inf")), (BLOCK_Q * BLOCK_V,))  # p = 0 off the rows
    delta = tl.reshape(tl.load(DELTA + rows, mask=row_ok, other=0.0), (BLOCK_Q * BLOCK_V,))
    grad_q = tl.zeros((BLOCK_Q, BLOCK_C), dtype=q.dtype)
    grad_gl = tl.zeros((BLOCK_Q, BLOCK_V, BLOCK_M), dtype=q.dtype)
    row_lo, row_hi, col_lo, col_hi, per_row, tiles = _key_window(HW, H, W, RADIUS, LOCAL, BLOCK_J, KEY_COLS)
    for tile in range(0, tiles):
        jj, j_ok, kt, key_pointers, key_mask, table, inside, logits = _key_tile(
            tile, row_lo, row_hi, col_lo, col_hi, per_row, bn, q, q_rows, qr, qc, q_ok, Q, K, E, gl, v_ok,
            HW, W, M, V, C, D2, T, SIDE, RADIUS, LOCAL, BLOCK_Q, BLOCK_V, BLOCK_J, KEY_COLS, BLOCK_M, BLOCK_C)
        p = tl.exp(logits - lse[:, None])  # (R, X), 0 off the keys and rows
        values, value_pointers, value_mask, value_ok = _load_keys(VAL, bn, jj, j_ok, HW, M, C, BLOCK_J, BLOCK_M, BLOCK_C)
        grad_p = tl.dot(grad_out, tl.trans(values), input_precision="ieee")  # (R, X)
        if DROPOUT:
            kept = _keep(seed, rows, jj, HW, M, threshold, BLOCK_Q, BLOCK_V, BLOCK_J, BLOCK_M)
            dropped = tl.where(kept, p * keep_scale, 0.0)
            grad_p = tl.where(kept, grad_p * keep_scale, 0.0)
        else:
            dropped = p
        grad_values = tl.dot(tl.trans(dropped), grad_out, input_precision="ieee")  # (X, C)
        tl.atomic_add(DV + key_pointers, tl.reshape(grad_values, (BLOCK_J, BLOCK_M, BLOCK_C)), mask=key_mask)
        grad_s = tl.reshape(p * (grad_p - delta[:, None]), (BLOCK_Q, BLOCK_V, BLOCK_J, BLOCK_M))
        grad_content = tl.reshape(tl.sum(grad_s, 1), (BLOCK_Q, BLOCK_J * BLOCK_M))  # summed over v
        grad_q += tl.dot(grad_content, kt, input_precision="ieee")
        grad_keys = tl.dot(tl.trans(grad_content), q, input_precision="ieee")  # (X, C)
        tl.atomic_add(DK + key_pointers, tl.reshape(grad_keys, (BLOCK_J, BLOCK_M, BLOCK_C)), mask=key_mask)
        grad_gl += tl.sum(grad_s, 2)
        grad_pos = tl.sum(grad_s, 3)  # (Q, V, J)
        pos_mask = v_ok[None, :, None] & inside[:, None, :]
        for d in range(D2):
            column = tl.sum(tl.sum(grad_pos * tl.load(E + table + d, mask=pos_mask, other=0.0), 2), 1)  # (Q,)
            grad_q += tl.where(ci[None, :] == d, column[:, None], 0.0)
            q_d = tl.load(Q + q_rows + d)
            tl.atomic_add(DE + table + d, grad_pos * q_d[:, None, None], mask=pos_mask)
    tl.store(DQ + q_rows[:, None] + ci[None, :], grad_q, mask=q_ok[:, None] & (ci[None, :] < C))
    if HAS_GROUP:
        tl.store(DGL + gl_pointers, grad_gl, mask=gl_mask)
