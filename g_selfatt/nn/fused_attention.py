"""Self-attention of :class:`~g_selfatt.nn.attention.SelfAttentionCore` in one fused CPU kernel.

``attention_impl="fused"`` computes what ``"reference"`` and ``"efficient"`` compute
(see :mod:`g_selfatt.nn.efficient_attention` for the formula) in a small C++ kernel,
``fused_attention.cpp`` beside this file: the three logit terms, their softmax, attention
dropout, the sum over ``g`` and the value contraction (and, in the backward pass, every
gradient) stay in the caches, with no tensor of scores at all. It walks the data in one of
three layouts (:data:`LAYOUTS`), chosen from the shapes by :attr:`FusedGeometry.layout`:

* ``"lanes"`` (local layers at small widths): the vector lanes run along neighbouring query
  pixels of the zero-padded image, where every key offset of the patch is one shift, so
  each contraction is a sum of contiguous rows however few channels and keys a query has;
* ``"channel_major"`` and ``"pixel_major"`` (global layers, local layers with many group
  elements on small images): one query at a time, with the exponentials factored,
  ``exp(c + p + g) = exp(c) exp(p) exp(g)``, so that they are taken at the sizes of the three
  terms instead of at the size of the scores (a row whose factored sum underflows is
  recomputed directly), and keys outside the image skipped.

The forward pass keeps each softmax row's log-sum-exp, so the backward pass recomputes the
probabilities without a second normalisation. Dropout
keeps an entry when a 24-bit hash of ``(seed, row, entry)`` lies below
``round(keep * 2^24)``, and scales kept entries by the exact inverse of that fraction:
the same entries in the forward and backward pass, for any number of threads (the entries
of a row are numbered by the layout: compact keys, or patch offsets in the lanes layout).

Its tasks run on the threads of the OpenMP runtime that torch runs its CPU operations on
(:func:`openmp_runtime`), where the process has one, else on threads of its own.

The kernel is compiled on first use with the system's C++ compiler (``$CXX``, else
``g++``/``c++``/``clang++``) and cached on disk (``$G_SELFATT_CACHE``, else
``~/.cache/g_selfatt``), keyed by the source, the flags and the machine; see
:func:`library` and :func:`build_report`. Without a compiler, :func:`available` is
false and ``attention_impl="auto"`` uses ``"efficient"``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from g_selfatt.nn.layouts import channel_major, from_pixel_major, pixel_major

SOURCE = Path(__file__).with_name("fused_attention.cpp")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC",
         "-pthread")
DTYPES = (torch.float32, torch.float64)
KEY_ELEMENTS = (1, 2, 4, 8, 12, 16)  # the kernel's compiled key-group sizes: the groups' orders
QUERY_BLOCK = 16  # queries per task of the kernel's thread pool
# The kernel's three ways of walking the data (FusedGeometry.layout chooses from the shapes):
# "lanes", local layers with queries side by side in the vector lanes; "pixel_major" and
# "channel_major", one query at a time, with contractions along the channels or along the keys.
LAYOUTS = ("lanes", "pixel_major", "channel_major")
# Local group layers use the lanes layout while it pads at most this many lanes per query (the
# padding columns of a small image cost more than the lanes save). Measured with the p4 layers of
# rotMNIST5k's p4sa (patch 5: 14x14, 1.31 lanes per query, lanes 22% faster; 7x7, 1.63, lanes 7%
# faster since the positional tables are shared, 9% slower before) and of the paper's rotMNIST
# layout (patch 9: 28x28 and 24x24, 1.29 and 1.33, lanes faster).
LANES_PADDING = 1.7
# Local layers outside the lanes layout with at least this many channels per head use the
# pixel-major layout: their contractions run along the channels instead of along the keys.
PIXEL_MAJOR_CHANNELS = 16
# File names of the OpenMP runtimes torch may run on (GNU's, possibly renamed by a wheel; Intel's; LLVM's).
_OPENMP_RUNTIME = re.compile(r"lib(gomp|iomp5|omp)(-[0-9a-f]+)?\.so(\.[0-9]+)*")
OUTSIDE_BIAS = -1e30  # the logit bias of keys outside the image in the lanes layout
_HASH_BITS = 24


class _Problem(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in
                ("bn", "height", "width", "g", "m", "v", "c", "d2", "dg", "local", "patch", "radius", "threads",
                 "block", "dropout", "pixel_major", "lanes", "key_lanes", "padded_width", "pos_heads", "pos_bases")] + [
        ("seed", ctypes.c_uint64), ("threshold", ctypes.c_uint32), ("keep_scale", ctypes.c_double)]


@dataclasses.dataclass
class BuildReport:
    """How the kernel library was obtained in this process.

    Attributes:
        path: the shared library, or ``None`` when it could not be built.
        compiled: whether this process compiled it (else it came from the cache).
        seconds: time spent compiling (0 when cached).
        error: why it could not be built, or ``None``.
        notes: what went wrong on the way to ``path`` (an unusable cache folder, a damaged cached
            file), one sentence each; empty when nothing did.
        openmp: the OpenMP runtime whose threads run the kernel's tasks (:func:`use_openmp_threads`),
            or ``None`` when it starts threads of its own.
    """

    path: Optional[Path]
    compiled: bool
    seconds: float
    error: Optional[str] = None
    notes: Tuple[str, ...] = ()
    openmp: Optional[Path] = None


_lock = threading.Lock()
_report: Optional[BuildReport] = None
_library: Optional[ctypes.CDLL] = None


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$G_SELFATT_CACHE``, else ``$XDG_CACHE_HOME/g_selfatt``."""
    if os.environ.get("G_SELFATT_CACHE"):
        return Path(os.environ["G_SELFATT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "g_selfatt"


def compiler() -> Optional[str]:
    """The C++ compiler to use: ``$CXX``, else the first of g++, c++, clang++ on the PATH."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_flags() -> str:
    """The CPU's feature flags (``-march=native`` depends on them)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _library_name(cxx: str) -> str:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\n".join([SOURCE.read_text(), " ".join(FLAGS), version, platform.machine(),
                                    _cpu_flags()]).encode()).hexdigest()[:16]
    return f"fused_attention-{key}.so"


def _cache_dirs() -> Tuple[Path, ...]:
    """Where the kernel may be kept, in order: :func:`cache_dir`, then a private temporary folder."""
    user = os.getuid() if hasattr(os, "getuid") else os.getpid()
    private = Path(tempfile.gettempdir()) / f"g_selfatt-{user}"
    try:
        return cache_dir(), private
    except RuntimeError:  # no home folder to derive the cache folder from
        return (private,)


def _compile(cxx: str, path: Path, extra_flags: Tuple[str, ...] = ()) -> BuildReport:
    """Compiles the kernel into ``path`` (through a temporary file), with ``extra_flags`` after
    :data:`FLAGS` (``-DFUSED_PHASES``: ``benchmarks/kernel_phases.py``); ``OSError`` if the folder is unusable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        target = Path(scratch) / path.name
        result = subprocess.run([cxx, *FLAGS, *extra_flags, "-o", str(target), str(SOURCE)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            return BuildReport(None, True, time.perf_counter() - start,
                               f"{Path(cxx).name} failed: {result.stderr.strip()[-2000:]}")
        os.replace(target, path)  # atomic: a concurrent process sees the old state or the whole file
    return BuildReport(path, True, time.perf_counter() - start)


def _build_and_load() -> Tuple[BuildReport, Optional[ctypes.CDLL]]:
    """The kernel from the first usable folder of :func:`_cache_dirs`, compiled there if needed.

    A cached file that cannot be loaded (empty, truncated) is compiled again; a folder that cannot
    be created or written is passed over for the next one. The cache is never a reason for the
    kernel, let alone a model, not to run: with no usable folder the report says why and
    ``attention_impl="auto"`` runs ``efficient``.
    """
    cxx = compiler()
    if cxx is None:
        return BuildReport(None, False, 0.0, "no C++ compiler found (set $CXX or install g++)"), None
    name, notes = _library_name(cxx), []
    for folder in _cache_dirs():
        path = folder / name
        try:
            if path.exists():
                try:
                    return BuildReport(path, False, 0.0, notes=tuple(notes)), _load(path)
                except OSError as error:
                    notes.append(f"the cached kernel {path} could not be loaded ({error}); compiled it again")
                    path.unlink()
            report = _compile(cxx, path)
            report.notes = tuple(notes)
            return report, (_load(path) if report.path is not None else None)
        except OSError as error:
            notes.append(f"cannot keep the kernel in {folder} ({error.strerror or error})")
    return BuildReport(None, False, 0.0, "no usable folder for the compiled kernel: " + "; ".join(notes),
                       notes=tuple(notes)), None


def library() -> Optional[ctypes.CDLL]:
    """The kernel library, compiled on the first call of the process if it is not cached."""
    global _report, _library
    with _lock:
        if _report is None:
            _report, _library = _build_and_load()
            for note in _report.notes:
                logging.getLogger(__name__).warning("Fused attention kernel: %s.", note)
            if _library is not None:
                _report.openmp = _attach_openmp(_library, openmp_runtime())
        return _library


def openmp_runtime() -> Optional[Path]:
    """The OpenMP runtime that torch's CPU operations run on, where this process has loaded one.

    Read from the process's memory map (Linux): the runtime in torch's own folder, else the only
    one loaded. ``None`` where torch does not parallelise with OpenMP, where there is no memory map
    to read, or where several runtimes are loaded and none is torch's.
    """
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    mapped = (line.split(maxsplit=5) for line in maps.splitlines())  # address, mode, offset, device, inode, path
    loaded = sorted({Path(fields[5]) for fields in mapped
                     if len(fields) == 6 and _OPENMP_RUNTIME.fullmatch(Path(fields[5]).name)})
    torch_folder = Path(torch.__file__).resolve().parent / "lib"
    own = [path for path in loaded if path.parent == torch_folder]
    if own:
        return own[0]
    return loaded[0] if len(loaded) == 1 else None


def _attach_openmp(lib: ctypes.CDLL, runtime: Optional[Path]) -> Optional[Path]:
    """Points the kernel at the parallel-region entry (GOMP_parallel) of ``runtime``, already loaded
    in this process, or at threads of its own when ``runtime`` is ``None``; returns the runtime in use."""
    entry = None
    if runtime is not None:
        try:
            entry = ctypes.CDLL(str(runtime), mode=os.RTLD_NOLOAD).GOMP_parallel  # the loaded copy, never a second
        except (OSError, AttributeError):
            runtime = None
    lib.fused_use_openmp(None if entry is None else ctypes.cast(entry, ctypes.c_void_p))
    return runtime


def use_openmp_threads(enabled: bool = True) -> Optional[Path]:
    """Runs the kernel's tasks on the threads of torch's OpenMP runtime (the default, where
    :func:`openmp_runtime` finds one) or, with ``enabled=False``, on threads the kernel starts
    itself. Results do not depend on it. Returns the runtime in use (``None``: the kernel's own threads).

    On torch's threads the kernel does not compete with them: after each parallel operation
    they keep spinning for a while (OpenMP's default wait policy), on the cores that threads of
    the kernel's own would need.
    """
    lib = library()
    if lib is None:
        return None
    with _lock:
        _report.openmp = _attach_openmp(lib, openmp_runtime() if enabled else None)
        return _report.openmp


def build_report() -> BuildReport:
    """How :func:`library` obtained the kernel (builds it if that has not happened yet)."""
    library()
    return _report


def available() -> bool:
    """Whether the fused kernel can run in this process (a compiler was found, or it was cached)."""
    return library() is not None


def supports(t: Tensor, key_elements: int, autocast: bool = False) -> bool:
    """Whether the fused kernel handles tensors like ``t`` with ``key_elements`` key elements.

    Under ``autocast`` the attention runs in float32 whatever the dtype of ``t``.
    """
    return (t.device.type == "cpu" and (autocast or t.dtype in DTYPES) and key_elements in KEY_ELEMENTS
            and available())


# The kernel's entry points (each in f32 and f64) and the number of tensors they take after the problem.
_ENTRY_POINTS = {"fused_forward": 7, "fused_backward": 12, "fused_lanes_forward": 9, "fused_lanes_backward": 14}


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    pointer = ctypes.c_void_p
    for name, tensors in _ENTRY_POINTS.items():
        for suffix in ("f32", "f64"):
            function = getattr(lib, f"{name}_{suffix}")
            function.argtypes = [ctypes.POINTER(_Problem)] + [pointer] * tensors
            function.restype = ctypes.c_int
    lib.fused_use_openmp.argtypes = [ctypes.c_void_p]
    lib.fused_use_openmp.restype = None
    lib.fused_lanes_tile.argtypes = []
    lib.fused_lanes_tile.restype = ctypes.c_int64
    lib.fused_dropout_flags.argtypes = [ctypes.c_uint64, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint32, pointer]
    lib.fused_dropout_flags.restype = None
    return lib


def dropout_threshold(rate: float) -> Tuple[int, float]:
    """``(threshold, scale)``: entries whose 24-bit hash is below ``threshold`` are kept, times ``scale``."""
    threshold = min(round((1.0 - rate) * 2 ** _HASH_BITS), 2 ** _HASH_BITS)
    return threshold, (2 ** _HASH_BITS / threshold if threshold else 0.0)


def dropout_flags(seed: int, rows: int, length: int, rate: float) -> Tensor:
    """The kept flags the kernel draws for ``rows`` softmax rows of ``length`` entries, ``(rows, length)`` bool."""
    out = torch.empty(rows, length, dtype=torch.uint8)
    library().fused_dropout_flags(seed, rows, length, dropout_threshold(rate)[0], out.data_ptr())
    return out.bool()


@dataclasses.dataclass
class FusedGeometry:
    """The sizes of one attention call, as the kernel (and :mod:`g_selfatt.nn.flex_attention`) needs them.

    See the layouts in ``fused_attention.cpp``.
    """

    heads_batch: int
    height: int
    width: int
    num_query_elements: int
    num_key_elements: int
    num_out: int
    channels: int
    pos_channels: int
    local: bool
    patch_size: int
    radius: int
    dropout: float = 0.0
    seed: int = 0
    pos_heads: int = 1  # N: one positional table per head (lanes layout only), else 1
    pos_bases: int = 0  # U: the positional tables permute U base tables (lanes layout only), else 0

    @property
    def side(self) -> int:
        """Side of the offset table: ``P`` (local) or ``2 r + 1`` (global)."""
        return self.patch_size if self.local else 2 * self.radius + 1

    @property
    def layout(self) -> str:
        """How the kernel lays out and walks the data, chosen from the shapes (see :data:`LAYOUTS`).

        Local layers run in the lanes layout when they have one key element (lifting and ``z2``
        layers) or when its padding lanes are few (at most :data:`LANES_PADDING` lanes per query);
        otherwise, and for global layers, one query at a time.
        """
        if self.local and (self.num_key_elements == 1 or self.lanes <= LANES_PADDING * self.height * self.width):
            return "lanes"
        if self.local and self.channels >= PIXEL_MAJOR_CHANNELS:
            return "pixel_major"
        return "channel_major"

    @property
    def padded_width(self) -> int:
        """``Wp = W + r``: the row length of the zero-padded grid of the lanes layout (``r`` zero
        columns before each image row; those of the next row catch the keys past a row's end)."""
        return self.width + self.radius

    @property
    def lanes(self) -> int:
        """``L``: lanes of the lanes layout, ``H Wp`` rounded up to whole tiles of the kernel."""
        tile = library().fused_lanes_tile()
        return -(-self.height * self.padded_width // tile) * tile

    @property
    def key_lanes(self) -> int:
        """``LK``: the padded key grid, long enough for the last lane's farthest key."""
        return self.lanes + 2 * self.radius * (self.padded_width + 1)

    def problem(self) -> _Problem:
        threshold, scale = dropout_threshold(self.dropout)
        layout = self.layout
        lanes = layout == "lanes"
        return _Problem(
            bn=self.heads_batch, height=self.height, width=self.width, g=self.num_query_elements,
            m=self.num_key_elements, v=self.num_out, c=self.channels, d2=self.pos_channels,
            dg=self.channels - self.pos_channels, local=int(self.local), patch=self.patch_size, radius=self.radius,
            threads=torch.get_num_threads(), block=QUERY_BLOCK, dropout=int(self.dropout > 0),
            pixel_major=int(layout == "pixel_major"), lanes=self.lanes if lanes else 0,
            key_lanes=self.key_lanes if lanes else 0, padded_width=self.padded_width if lanes else 0,
            pos_heads=self.pos_heads, pos_bases=self.pos_bases,
            seed=self.seed % 2 ** 64, threshold=threshold, keep_scale=scale,
        )


def _pointer(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _call(name: str, dtype: torch.dtype, problem: _Problem, *tensors: Optional[Tensor]) -> None:
    suffix = "f32" if dtype == torch.float32 else "f64"
    status = getattr(library(), f"{name}_{suffix}")(ctypes.byref(problem), *map(_pointer, tensors))
    if status != 0:
        raise ValueError(f"The fused attention kernel has no variant for {problem.m} key group elements; "
                         f"supported: {KEY_ELEMENTS}. Use attention_impl='efficient'.")


class FusedAttention(torch.autograd.Function):
    """``out[bn, ij, v, c]`` from ``q (BN, HW, G, C)``, keys, values and the tables.

    Keys and values are ``(BN, C, HW, M)`` and ``pos_table`` ``(V, 2D, T)`` (channel-major) or
    ``(BN, HW, M, C)`` and ``(V, T, 2D)`` (pixel-major), as ``geometry.layout`` says;
    ``group_table`` is ``(V, G, M, D_g)`` or ``None``.
    """

    @staticmethod
    def forward(ctx, geometry: FusedGeometry, q: Tensor, k: Tensor, v: Tensor, pos_table: Tensor,
                group_table: Optional[Tensor]) -> Tensor:
        g = geometry
        out = q.new_empty(g.heads_batch, g.height * g.width, g.num_out, g.channels)
        lse = q.new_empty(g.heads_batch, g.height * g.width, g.num_out, g.num_query_elements)
        _call("fused_forward", q.dtype, g.problem(), q, k, v, pos_table, group_table, out, lse)
        ctx.geometry = geometry
        ctx.save_for_backward(q, k, v, pos_table, group_table, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, pos_table, group_table, lse = ctx.saved_tensors
        grads = [torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v), torch.zeros_like(pos_table),
                 None if group_table is None else torch.zeros_like(group_table)]
        _call("fused_backward", q.dtype, ctx.geometry.problem(), q, k, v, pos_table, group_table,
              grad_out.contiguous(), lse, *grads)
        return (None, *grads)


class LanesAttention(torch.autograd.Function):
    """``out (BN, V, C, L)`` from the lanes layout: ``q (BN, G, C, L)``, keys and values ``(BN, M, C, LK)``.

    ``bias`` is ``(LK,)`` (0 inside the image, :data:`OUTSIDE_BIAS` outside), ``pos_table``
    ``(V, T, 2D)`` (or ``(N, V, T, 2D)``, one per head, with ``geometry.pos_heads = N``; with ``perm``
    ``(V, T)``, the ``U = geometry.pos_bases`` base tables: ``(U T, 2D)`` or ``(N, U T, 2D)``) and ``group_table`` ``(V, G, M, D_g)`` or ``None``. Lanes that stand for no
    pixel must have zero queries; their outputs are meaningless and must get a zero gradient.
    """

    @staticmethod
    def forward(ctx, geometry: FusedGeometry, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, pos_table: Tensor,
                perm: Optional[Tensor], group_table: Optional[Tensor]) -> Tensor:
        g = geometry
        out = q.new_empty(g.heads_batch, g.num_out, g.channels, g.lanes)
        lse = q.new_empty(g.heads_batch, g.num_out, g.num_query_elements, g.lanes)
        _call("fused_lanes_forward", q.dtype, g.problem(), q, k, v, bias, pos_table, perm, group_table, out, lse)
        ctx.geometry = geometry
        ctx.save_for_backward(q, k, v, bias, pos_table, perm, group_table, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, bias, pos_table, perm, group_table, lse = ctx.saved_tensors
        grads = [torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v), torch.zeros_like(pos_table),
                 None if group_table is None else torch.zeros_like(group_table)]
        _call("fused_lanes_backward", q.dtype, ctx.geometry.problem(), q, k, v, bias, pos_table, perm, group_table,
              grad_out.contiguous(), lse, *grads)
        return (None, grads[0], grads[1], grads[2], None, grads[3], None, grads[4])


class _OnGrid(torch.autograd.Function):
    """``(B, C, N, E, H, W) -> (B N, E, C, length)``: pixel ``(y, x)`` at ``start + y Wp + x`` of each
    row, zeros everywhere else (one zeroed tensor and one copy); the gradient is the same positions read back."""

    @staticmethod
    def forward(ctx, t: Tensor, padded_width: int, start: int, length: int) -> Tensor:
        batch, channels, heads, elements, height, width = t.shape
        out = t.new_zeros(batch * heads, elements, channels, length)
        _pixels(out, heads, height, padded_width, start, width).copy_(t.permute(0, 2, 3, 1, 4, 5))
        ctx.grid = (heads, height, padded_width, start, width)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        return _pixels(grad, *ctx.grid).permute(0, 3, 1, 2, 4, 5), None, None, None


def _pixels(grid: Tensor, heads: int, height: int, padded_width: int, start: int, width: int) -> Tensor:
    """The pixels of a ``(B N, E, C, length)`` grid (see :class:`_OnGrid`) as a view ``(B, N, E, C, H, W)``."""
    rows = grid[..., start:start + height * padded_width]  # (B N, E, C, H Wp)
    rows = rows.view(-1, heads, grid.shape[1], grid.shape[2], height, padded_width)  # (B, N, E, C, H, Wp)
    return rows[..., :width]


def _lane_queries(geometry: FusedGeometry, q: Tensor) -> Tensor:
    """``(B, C, N, G, H, W)`` -> ``(B N, G, C, L)``: each row followed by ``r`` zeros, then zeros up to ``L`` lanes."""
    return _OnGrid.apply(q, geometry.padded_width, 0, geometry.lanes)


def _lane_keys(geometry: FusedGeometry, t: Tensor) -> Tensor:
    """``(B, C, N, M, H, W)`` -> ``(B N, M, C, LK)``: the zero-padded grid (``r`` zero columns before
    each row, ``r`` zero rows above and below), flattened and extended to ``LK``."""
    r, padded_width = geometry.radius, geometry.padded_width
    return _OnGrid.apply(t, padded_width, r * padded_width + r, geometry.key_lanes)


def _lane_bias(geometry: FusedGeometry, like: Tensor) -> Tensor:
    """``(LK,)``: 0 where the padded key grid lies inside the image, :data:`OUTSIDE_BIAS` elsewhere."""
    r = geometry.radius
    inside = F.pad(like.new_ones(geometry.height, geometry.width), (r, 0, r, r)).flatten()
    inside = F.pad(inside, (0, geometry.key_lanes - inside.numel()))
    return (1 - inside) * OUTSIDE_BIAS


def _lanes_output(geometry: FusedGeometry, out: Tensor, batch: int, heads: int) -> Tensor:
    """``(B N, V, C, L)`` -> ``(B, C, N, V, H, W)``, dropping the padding lanes."""
    g = geometry
    out = out[..., :g.height * g.padded_width].reshape(batch, heads, g.num_out, g.channels, g.height, g.padded_width)
    return out[..., :g.width].permute(0, 3, 1, 2, 4, 5)


def shared_tables(pos_table: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
    """Base tables that the positional tables of the output elements permute, where fewer than ``V``.

    The table of ``v u`` is that of ``v`` permuted, bitwise, when ``u`` maps the offsets of the patch
    onto the patch (the acted offsets are then the same coordinates:
    :func:`~g_selfatt.nn.positional_encoding.acted_offset_table`): one base table for ``p4``,
    ``mz2`` and ``p4m``, two for ``p8`` and ``p8m``, three for ``p12``.

    Args:
        pos_table: ``(V, T, 2D)``.

    Returns:
        ``(bases, perm)``: the output elements whose tables are the bases, ``(U,)``, and ``perm (V, T)``
        with ``pos_table[v, t]`` equal to row ``perm[v, t]`` of ``pos_table[bases].flatten(0, 1)``;
        ``None`` where every table is a base (``U = V``).
    """
    num_out, entries = pos_table.shape[:2]
    bases: List[int] = []
    perm = torch.empty(num_out, entries, dtype=torch.int64)
    for v in range(num_out):
        for u, base in enumerate(bases):
            matches = (pos_table[v][:, None, :] == pos_table[base][None, :, :]).all(-1)  # (T, T)
            if bool(matches.any(-1).all()):
                perm[v] = u * entries + matches.to(torch.int8).argmax(-1)  # a matching row of the base
                break
        else:
            perm[v] = len(bases) * entries + torch.arange(entries)
            bases.append(v)
    if len(bases) == num_out:
        return None
    return torch.tensor(bases, dtype=torch.int64), perm.to(pos_table.device)


def fused_attention(geometry: FusedGeometry, q: Tensor, k: Tensor, v: Tensor, pos_table: Tensor,
                    group_table: Optional[Tensor], perm: Optional[Tensor] = None) -> Tensor:
    """The fused attention before ``wout``.

    Args:
        geometry: sizes, dropout rate and seed.
        q: queries ``(B, C, N, G, H, W)``, already divided by ``sqrt(C_in)``.
        k, v: keys and values ``(B, C, N, M, H, W)``.
        pos_table: encodings of the acted offsets, ``(V, T, 2D)``; or ``(N, V, T, 2D)``, one table per
            head, when ``geometry.pos_heads = N`` (local layers in the lanes layout only).
        group_table: ``(V, G, M, D_g)`` or ``None`` (lifting layers).
        perm: ``(V, T)``: ``pos_table`` holds ``U`` base tables (``(U, T, 2D)``, or ``(N, U, T, 2D)``), the
            table of ``v`` being rows ``perm[v]`` of their ``U T`` rows (lanes layout only; see
            :func:`shared_tables`). Without it, the lanes layout finds base tables where fewer than
            ``V`` serve.

    Returns:
        ``(B, C, N, V, H, W)``.
    """
    batch, heads = q.shape[0], q.shape[2]
    group_table = None if group_table is None else group_table.contiguous()
    layout = geometry.layout
    if (geometry.pos_heads != 1 or perm is not None) and layout != "lanes":
        raise ValueError(f"One positional table per head, or one permuted for every output element, needs "
                         f"the lanes layout; this layer runs in the {layout!r} layout.")
    if layout == "lanes":
        if perm is None and geometry.pos_heads == 1:
            shared = shared_tables(pos_table)
            if shared is not None:
                bases, perm = shared
                pos_table = pos_table[bases]  # (U, T, 2D)
        if perm is not None:
            pos_table = pos_table.flatten(-3, -2)  # (U T, 2D) or (N, U T, 2D)
            geometry = dataclasses.replace(geometry, pos_bases=pos_table.shape[-2] // perm.shape[1])
        out = LanesAttention.apply(geometry, _lane_queries(geometry, q), _lane_keys(geometry, k),
                                   _lane_keys(geometry, v), _lane_bias(geometry, q), pos_table.contiguous(),
                                   perm, group_table)  # (BN, V, C, L)
        return _lanes_output(geometry, out, batch, heads)
    if layout == "pixel_major":
        arrange, pos_table = pixel_major, pos_table.contiguous()  # (V, T, 2D)
    else:
        arrange, pos_table = channel_major, pos_table.transpose(1, 2).contiguous()  # (V, 2D, T)
    out = FusedAttention.apply(geometry, pixel_major(q), arrange(k), arrange(v), pos_table, group_table)
    return from_pixel_major(out, batch, heads, geometry.height, geometry.width)
