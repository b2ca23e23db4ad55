"""Host-side batching of tokenised data into fixed-shape numpy batches.

Order of one epoch, the same on every process, a function of (seed, epoch) alone:
  1. permute the rows; 2. sort by length inside windows of `bucket_window` batches (so a batch holds
  rows of similar length and padding waste is small); 3. cut into global batches; 4. permute the batch
  order. T of a batch is its longest sequence rounded up to `pad_to_multiple` (128s on TPU) and capped at
  `max_length`, so jit sees few distinct shapes. A last, partial batch is filled with copies of a real
  row at weight 0 (or dropped with `drop_remainder`). Process p of P yields rows [p*b, (p+1)*b) of each
  global batch, b = global batch // P, padded to the global batch's T. `epoch(e, start_step=s)` resumes
  at step s without touching the batches before it.

Batch keys (shape suffixes: B batch rows on this process, T tokens, K list size):
  PairBatcher:       chosen_ids_BxT, chosen_mask_BxT, rejected_ids_BxT, rejected_mask_BxT (int32, chosen
                     and rejected share T), margin_B, weight_B (float32), chosen_len_B, rejected_len_B
                     (int32 response token counts).
  ListBatcher:       ids_BxKxT, mask_BxKxT (int32), ranks_BxK (int32, 0 = best), valid_BxK (int32),
                     weight_B (float32). An empty slot (valid 0) repeats the list's first response.
  RegressionBatcher: ids_BxT, mask_BxT (int32), target_B, weight_B (float32).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from jaxrlhf.data.tokenize import Encoded, ListData, PairData, RatedData

PADDING_SIDES = ("right", "left")


def pad_rows(enc: Encoded, rows, width: int, pad_id: int, side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """(ids_BxT, mask_BxT) int32 of sequences `rows` of `enc`, padded to `width` on `side`."""
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for j, i in enumerate(rows):
        seq = enc.sequence(i)
        sl = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[j, sl] = seq
        mask[j, sl] = 1
    return ids, mask


TPU_LANES = 128


def backend_multiple(multiple: int) -> int:
    """`pad_to_multiple` as the backend wants it: on TPU rounded up to a multiple of its 128 vector lanes (a
    length of 144 is padded to 256 inside every matmul there anyway, and fewer distinct lengths mean fewer
    compiles); unchanged elsewhere."""
    import jax

    m = max(1, int(multiple))
    return -(-m // TPU_LANES) * TPU_LANES if jax.default_backend() == "tpu" else m


class Batcher:
    """Order, resumption and per-process slicing; subclasses turn row indices into arrays."""

    def __init__(self, lengths: np.ndarray, max_length: int, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, bucket_window: int = 64, pad_to_multiple: int = 32,
                 padding_side: str = "right", drop_remainder: bool = False,
                 process_index: int = 0, process_count: int = 1):
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
        if batch_size <= 0 or batch_size % process_count:
            raise ValueError(f"global batch_size={batch_size} must be a positive multiple of "
                             f"process_count={process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        self.lengths = np.asarray(lengths, np.int64)  # sort key: the longest sequence of a row
        self.max_length = int(max_length)
        self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), bool(shuffle)
        self.bucket_window, self.pad_to_multiple = int(bucket_window), backend_multiple(pad_to_multiple)
        self.padding_side, self.drop_remainder = padding_side, bool(drop_remainder)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.local_batch_size = self.batch_size // self.process_count
        self._cached_epoch, self._cached_plan = None, None
        if len(self) == 0:
            raise ValueError(f"{len(self.lengths)} rows make no batch of {batch_size}")

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = len(self.lengths), self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def plan(self, epoch: int) -> np.ndarray:
        """Global row indices of every batch of `epoch`, [num_batches, batch_size]; -1 = filler."""
        n, b = len(self.lengths), self.batch_size
        rng = np.random.default_rng([self.seed, int(epoch)])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.drop_remainder:
            order = order[: len(self) * b]
        if self.bucket_window > 0:
            window = self.bucket_window * b
            for start in range(0, len(order), window):
                chunk = order[start:start + window]
                order[start:start + window] = chunk[np.argsort(self.lengths[chunk], kind="stable")]
        order = np.concatenate([order, np.full(len(self) * b - len(order), -1, order.dtype)])
        batches = order.reshape(len(self), b)
        if self.shuffle:
            batches = batches[rng.permutation(len(batches))]
        return batches

    def _width(self, rows: np.ndarray) -> int:
        longest = int(self.lengths[rows[rows >= 0]].max())
        m = self.pad_to_multiple
        return min(self.max_length, -(-longest // m) * m)

    @property
    def steps_per_epoch(self) -> int:
        return len(self)

    def _plan_cached(self, epoch: int) -> np.ndarray:
        if self._cached_epoch != epoch:
            self._cached_plan, self._cached_epoch = self.plan(epoch), epoch
        return self._cached_plan

    def batch(self, epoch: int, step: int) -> dict[str, np.ndarray]:
        """This process's share of global batch `step` of `epoch` (random access)."""
        plan = self._plan_cached(int(epoch))
        if not 0 <= step < len(plan):
            raise IndexError(f"step {step} not in [0, {len(plan)})")
        rows = plan[step]
        lo = self.process_index * self.local_batch_size
        local = rows[lo:lo + self.local_batch_size]
        weight = (local >= 0).astype(np.float32)
        return self._make(np.where(local >= 0, local, rows[0]), weight, self._width(rows))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Yields this process's batches of `epoch` from step `start_step` on."""
        for step in range(int(start_step), len(self)):
            yield self.batch(epoch, step)

    def from_step(self, global_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Endless batches starting at a global step (epoch = step // len, step % len within it)."""
        epoch, step = divmod(int(global_step), len(self))
        while True:
            yield from self.epoch(epoch, step)
            epoch, step = epoch + 1, 0

    def padding_efficiency(self, epoch: int = 0) -> float:
        """Real tokens / padded tokens over the global batches of `epoch` (filler rows are waste)."""
        real = total = 0
        for rows in self.plan(epoch):
            r, t = self._real_and_total(rows[rows >= 0], len(rows), self._width(rows))
            real, total = real + r, total + t
        return real / total

    def _real_and_total(self, rows: np.ndarray, batch: int, width: int) -> tuple[int, int]:
        raise NotImplementedError

    def _make(self, rows: np.ndarray, weight: np.ndarray, width: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _fill(self, enc: Encoded, rows: np.ndarray, width: int, pad_id: int):
        return pad_rows(enc, rows, width, pad_id, self.padding_side)


class PairBatcher(Batcher):
    """Batches of comparisons; see the module doc for keys and order."""

    def __init__(self, data: PairData, batch_size: int, **kwargs):
        self.data = data
        lengths = np.maximum(data.chosen.lengths, data.rejected.lengths)
        super().__init__(lengths, data.max_length, batch_size, **kwargs)

    def _real_and_total(self, rows, batch, width):
        real = self.data.chosen.lengths[rows].sum() + self.data.rejected.lengths[rows].sum()
        return int(real), 2 * batch * width

    def _make(self, rows, weight, width):
        d = self.data
        chosen_ids, chosen_mask = self._fill(d.chosen, rows, width, d.pad_id)
        rejected_ids, rejected_mask = self._fill(d.rejected, rows, width, d.pad_id)
        return {
            "chosen_ids_BxT": chosen_ids,
            "chosen_mask_BxT": chosen_mask,
            "rejected_ids_BxT": rejected_ids,
            "rejected_mask_BxT": rejected_mask,
            "margin_B": d.margin[rows].astype(np.float32),
            "weight_B": weight,
            "chosen_len_B": d.chosen.response_len[rows].astype(np.int32),
            "rejected_len_B": d.rejected.response_len[rows].astype(np.int32),
        }


class ListBatcher(Batcher):
    """Batches of ranked lists padded to the data's largest list size K."""

    def __init__(self, data: ListData, batch_size: int, **kwargs):
        self.data = data
        lengths = np.maximum.reduceat(data.seqs.lengths, data.list_offsets[:-1])
        super().__init__(lengths, data.max_length, batch_size, **kwargs)

    def _slots(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B, K] response indices into seqs (empty slots repeat the first) and validity."""
        start, size = self.data.list_offsets[rows], np.diff(self.data.list_offsets)[rows]
        k = np.arange(self.data.max_k)[None, :]
        valid = k < size[:, None]
        return np.where(valid, start[:, None] + k, start[:, None]), valid

    def _real_and_total(self, rows, batch, width):
        seq, valid = self._slots(rows)
        return int(self.data.seqs.lengths[seq[valid]].sum()), batch * self.data.max_k * width

    def _make(self, rows, weight, width):
        d = self.data
        seq, valid = self._slots(rows)
        ids, mask = self._fill(d.seqs, seq.reshape(-1), width, d.pad_id)
        shape = (len(rows), d.max_k, width)
        return {
            "ids_BxKxT": ids.reshape(shape),
            "mask_BxKxT": mask.reshape(shape),
            "ranks_BxK": np.where(valid, d.ranks[seq], d.max_k).astype(np.int32),
            "valid_BxK": valid.astype(np.int32),
            "weight_B": weight,
            "len_BxK": d.seqs.response_len[seq].astype(np.int32),
        }


class RegressionBatcher(Batcher):
    """Batches of single sequences with a float target."""

    def __init__(self, data: RatedData, batch_size: int, **kwargs):
        self.data = data
        super().__init__(data.seqs.lengths, data.max_length, batch_size, **kwargs)

    def _real_and_total(self, rows, batch, width):
        return int(self.data.seqs.lengths[rows].sum()), batch * width

    def _make(self, rows, weight, width):
        ids, mask = self._fill(self.data.seqs, rows, width, self.data.pad_id)
        return {"ids_BxT": ids, "mask_BxT": mask,
                "target_B": self.data.target[rows].astype(np.float32), "weight_B": weight,
                "len_B": self.data.seqs.response_len[rows].astype(np.int32)}
