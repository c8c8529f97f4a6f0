"""Forward and backward passes of a :class:`~dbnet.model.NetSpec`, whole or as one of P model partitions.

``Network(spec, max_batch)`` is the single-process network.  With a
communicator, ``Network(spec, max_batch, comm=replica_comm)`` is partition
``comm.rank`` of ``comm.size``: it holds only its part of every layer
(:mod:`dbnet.mp.plan`) and its parameters are its contiguous range of the
partition-major vector; every call of :meth:`loss_and_grad`,
:meth:`forward` and :meth:`evaluate` is then **collective over the replica's
communicator** (every partition calls it with the same batch), and all
partitions return the same loss and hit count.

What travels (see :mod:`dbnet.mp.exchange`): before an image layer, the halo
rows of the previous layer's output that its band's patches read (interior
rows are computed while the halo is in flight); before a dense layer, every
other partition's block of the previous layer's output; backward, the
gradients of those blocks go back to their owners.  The softmax over classes
split across partitions needs three reductions of one number per example
(max, argmax, sums), never the logits.
"""

from __future__ import annotations

import time

import numpy as np

from dbnet.kernels import dense_backward, dense_forward, local as lc, pool, softmax_cross_entropy
from dbnet.kernels import loss as loss_kernels
from dbnet.model import Dense, Local, NetSpec, Pool, param_views
from dbnet.mp.plan import exchanges, local_views, part_sizes, plan

F32 = np.float32


class Network:
    """Preallocated workspace for batches of up to ``max_batch`` rows; parameters are passed in.

    ``params``/``grad``: (n_params,) float32, this partition's parameters
    (all of them when unpartitioned).  Not thread-safe.  ``stats`` counts
    compute, halo and gather seconds and bytes (partitioned).
    """

    def __init__(self, spec: NetSpec, max_batch: int, comm=None, timeout: float = 120.0):
        self.spec, self.max_batch, self.comm = spec, max_batch, comm
        self.parts = comm.Get_size() if comm is not None else 1
        self.part = comm.Get_rank() if comm is not None else 0
        P, p, B = self.parts, self.part, max_batch
        self.plan = plan(spec, P)[p]
        self.n_params = part_sizes(spec, P)[p]
        self.stats = {"compute_seconds": 0.0, "halo_seconds": 0.0, "halo_bytes": 0, "gather_seconds": 0.0,
                      "gather_bytes": 0, "softmax_seconds": 0.0}
        L = len(spec.layers)
        self._out = [np.empty((B, lp.own[1] - lp.own[0]), F32) for lp in self.plan]
        self._dout = [np.empty_like(o) for o in self._out[:-1]] + [self._out[-1]]  # the logits take their gradient
        self._in: list = [None]
        self._din: list = [None]
        self._chan: list = [None]
        exs = exchanges(spec, P, p)
        for i in range(1, L):
            lp, prev = self.plan[i], self.plan[i - 1]
            if lp.need == prev.own and exs[i].empty:
                self._in.append(self._out[i - 1])
                self._din.append(self._dout[i - 1])
                self._chan.append(None)
            else:
                self._in.append(np.empty((B, lp.need[1] - lp.need[0]), F32))
                self._din.append(np.empty((B, lp.need[1] - lp.need[0]), F32))
                from dbnet.mp.exchange import Channel, layer_tag  # (mpi4py only when partitioned)

                kind = "gather" if isinstance(spec.layers[i], Dense) else "halo"
                self._chan.append(Channel(comm, exs[i], B, lp.need[0], prev.own[0], layer_tag(i), timeout,
                                          self.stats, kind))
        self._argmax = [np.empty((B, *(lp.rows, *layer.out_shape[1:])), np.int32)
                        if isinstance(layer, Pool) else None
                        for layer, lp in zip(spec.layers, self.plan)]
        self._row_loss = np.empty(B, np.float64)
        self._row_hit = np.empty(B, np.int32)
        self._red = np.empty((4, B), np.float64)
        self._redbuf = np.empty(2 * B, np.float64)
        self.timeout = timeout
        self._views_cache: dict = {}

    # -- parameters ----------------------------------------------------------------------
    def views(self, flat: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(W, b)`` of every layer (this partition's part) as views into ``flat``."""
        key = (flat.__array_interface__["data"][0], flat.shape)
        v = self._views_cache.get(key)
        if v is None:
            v = (param_views(self.spec, flat) if self.parts == 1
                 else local_views(self.spec, self.parts, self.part, flat))
            if len(self._views_cache) > 16:
                self._views_cache.clear()
            self._views_cache[key] = v
        return v

    def _check(self, params: np.ndarray, x: np.ndarray) -> int:
        n = x.shape[0]
        if n > self.max_batch:
            raise ValueError(f"batch of {n} rows exceeds this Network's max_batch={self.max_batch}")
        if x.shape[1:] != (self.spec.n_inputs,) or x.dtype != F32:
            raise ValueError(f"x must be ({n}, {self.spec.n_inputs}) float32, got {x.dtype} {x.shape}")
        if params.shape != (self.n_params,):
            raise ValueError(f"params must be a flat float32 vector ({self.n_params},), got {params.dtype} {params.shape}")
        return n

    # -- layers --------------------------------------------------------------------------
    def _image(self, a: np.ndarray, n: int, shape, rows: int) -> np.ndarray:
        return a[:n].reshape(n, rows, *shape[1:])

    def _input_band(self, i: int) -> tuple[int, int]:
        """(rows, first row) of image layer i's input as held here: the whole image for layer 0."""
        lp = self.plan[i]
        return (self.spec.input_shape[0], 0) if i == 0 else (lp.in_hi - lp.in_lo, lp.in_lo)

    def _layer_forward(self, i: int, inp: np.ndarray, n: int, w, b, rows=None) -> None:
        layer, lp = self.spec.layers[i], self.plan[i]
        out = self._out[i][:n]
        if isinstance(layer, Dense):
            dense_forward(inp, w, b, out, layer.activation)
            return
        x_rows, x_row0 = self._input_band(i)
        x = self._image(inp, n, layer.in_shape, x_rows)
        y = self._image(out, n, layer.out_shape, lp.rows)
        rows = rows or (lp.lo, lp.hi)
        if rows[1] <= rows[0]:
            return
        if isinstance(layer, Local):
            lc.lc_forward(x, w, b, y, layer.k, layer.stride, layer.activation, rows=rows, x_row0=x_row0,
                          y_row0=lp.lo)
        else:
            pool.pool_forward(x, y, self._argmax[i][:n], layer.k, layer.stride, layer.mode, rows=rows,
                              x_row0=x_row0, y_row0=lp.lo)

    def _layer_backward(self, i: int, inp: np.ndarray, n: int, w, dw, db) -> None:
        layer, lp = self.spec.layers[i], self.plan[i]
        out, dy = self._out[i][:n], self._dout[i][:n]
        dx = self._din[i][:n] if i else None
        if isinstance(layer, Dense):
            dense_backward(inp, w, out, dy, dw, db, dx, layer.activation)
            return
        if lp.rows == 0:
            if dx is not None:
                dx[...] = 0
            return
        x_rows, x_row0 = self._input_band(i)
        x = self._image(inp, n, layer.in_shape, x_rows)
        y = self._image(out, n, layer.out_shape, lp.rows)
        dyi = self._image(dy, n, layer.out_shape, lp.rows)
        dxi = None if dx is None else self._image(dx, n, layer.in_shape, x_rows)
        if isinstance(layer, Local):
            lc.lc_backward(x, w, y, dyi, dw, db, dxi, layer.k, layer.stride, layer.activation, x_row0=x_row0,
                           y_row0=lp.lo)
        elif dxi is not None:
            pool.pool_backward(dyi, self._argmax[i][:n], dxi, layer.k, layer.stride, layer.mode, x_row0=x_row0,
                               y_row0=lp.lo)

    def _interior(self, i: int) -> tuple[int, int]:
        """Output rows of image layer i computable from this partition's own input rows (no halo)."""
        layer, lp, prev = self.spec.layers[i], self.plan[i], self.plan[i - 1]
        s, k = layer.stride, layer.k
        lo = max(lp.lo, -(-prev.lo // s))
        hi = min(lp.hi, (prev.hi - k) // s + 1)
        return (lo, hi) if hi > lo else (lp.lo, lp.lo)

    def _input_of(self, i: int, x: np.ndarray, n: int) -> np.ndarray:
        return x if i == 0 else self._in[i][:n]

    # -- passes --------------------------------------------------------------------------
    def _waited(self) -> float:
        st = self.stats
        return st["halo_seconds"] + st["gather_seconds"] + st["softmax_seconds"]

    def forward(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        """This partition's logits for ``x`` (batch, n_inputs) float32: a view into the workspace."""
        n = self._check(params, x)
        t0, w0 = time.perf_counter(), self._waited()
        for i, (w, b) in enumerate(self.views(params)):
            chan = self._chan[i]
            if chan is None:
                self._layer_forward(i, self._input_of(i, x, n), n, w, b)
                continue
            lp, prev = self.plan[i], self.plan[i - 1]
            inp = self._in[i][:n]
            chan.start_forward(self._out[i - 1], n)
            lo, hi = max(lp.need[0], prev.own[0]), min(lp.need[1], prev.own[1])  # my own rows this layer reads
            if hi > lo:
                np.copyto(inp[:, lo - lp.need[0]: hi - lp.need[0]], self._out[i - 1][:n, lo - prev.own[0]: hi - prev.own[0]])
            if isinstance(self.spec.layers[i], Dense):
                chan.finish_forward(inp, n)
                self._layer_forward(i, inp, n, w, b)
            else:  # interior rows while the halo is in flight, then the rows that read it
                a, c = self._interior(i)
                self._layer_forward(i, inp, n, w, b, (a, c))
                chan.finish_forward(inp, n)
                self._layer_forward(i, inp, n, w, b, (lp.lo, a))
                self._layer_forward(i, inp, n, w, b, (c, lp.hi))
        self.stats["compute_seconds"] += time.perf_counter() - t0 - (self._waited() - w0)  # waits are not compute
        return self._out[-1][:n]

    def _softmax(self, z: np.ndarray, y: np.ndarray, dz) -> tuple[float, int]:
        n = z.shape[0]
        if self.parts == 1:
            return softmax_cross_entropy(z, y, dz, self._row_loss, self._row_hit)
        from mpi4py import MPI

        from dbnet.mp.exchange import wait_all

        t0 = time.perf_counter()
        red = self._red[:, :n]
        u0 = self.plan[-1].lo

        def reduce(rows: slice, op) -> None:  # an Iallreduce of red[rows] under the job's deadline
            buf = self._redbuf[: (rows.stop - rows.start) * n].reshape(rows.stop - rows.start, n)
            buf[...] = red[rows]
            wait_all([self.comm.Iallreduce(MPI.IN_PLACE, [buf, MPI.DOUBLE], op)], self.timeout,
                     "the split softmax's reduction across partitions")
            red[rows] = buf

        loss_kernels.split_max(z, red)
        reduce(slice(0, 1), MPI.MAX)
        loss_kernels.split_sums(z, y, u0, self.spec.n_classes, red)
        reduce(slice(1, 2), MPI.MIN)
        reduce(slice(2, 4), MPI.SUM)
        loss_kernels.split_grad(z, y, u0, z[:0] if dz is None else dz, red, self._row_loss, self._row_hit, 1.0 / n)
        self.stats["softmax_seconds"] += time.perf_counter() - t0
        return float(self._row_loss[:n].sum()), int(self._row_hit[:n].sum())

    def loss_and_grad(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, grad: np.ndarray) -> tuple[float, int]:
        """Gradient of the mean cross-entropy over the batch, written into ``grad``.

        params, grad: (n_params,) float32 (this partition's).  x: (batch, n_inputs) float32.
        y: (batch,) int32.  Returns ``(loss summed over the batch, number of correct predictions)``
        for the parameters *before* this step (the same on every partition).
        """
        n = x.shape[0]
        logits = self.forward(params, x)
        loss, hits = self._softmax(logits, y, logits)  # logits now hold dLoss/dlogits
        t0, w0 = time.perf_counter(), self._waited()
        pv, gv = self.views(params), self.views(grad)
        for i in range(len(self.spec.layers) - 1, -1, -1):
            w, _ = pv[i]
            dw, db = gv[i]
            self._layer_backward(i, self._input_of(i, x, n), n, w, dw, db)
            chan = self._chan[i]
            if chan is None or i == 0:
                continue
            lp, prev = self.plan[i], self.plan[i - 1]
            din, dout = self._din[i][:n], self._dout[i - 1][:n]
            chan.start_backward(din, n)
            dout[...] = 0
            lo, hi = max(lp.need[0], prev.own[0]), min(lp.need[1], prev.own[1])
            if hi > lo:
                np.copyto(dout[:, lo - prev.own[0]: hi - prev.own[0]], din[:, lo - lp.need[0]: hi - lp.need[0]])
            chan.finish_backward(dout, n)
        self.stats["compute_seconds"] += time.perf_counter() - t0 - (self._waited() - w0)
        return loss, hits

    def evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """``(summed loss, number correct)`` on one batch, without gradients."""
        logits = self.forward(params, x)
        return self._softmax(logits, y, None)
