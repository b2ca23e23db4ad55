"""What the steps cost: tokens/s, model FLOP/s and MFU, peak device memory, and a profiler trace of
chosen steps (`train.profile_steps`).

Model FLOPs follow the 6N convention, per token of the padded batch (what the hardware computes):
2N for the forward pass and 2N for the gradient through the activations for every parameter, plus 2N
for the weight gradient of the trainable ones (so LoRA counts ~4N). Attention's T^2 term is left out;
the MFU is the conservative one. MFU needs a device's peak, known for the accelerators in PEAK_FLOPS
(dense bf16/fp16); elsewhere (CPU) only FLOP/s is logged.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

# device_kind substring -> dense 16-bit peak FLOP/s per device (vendor figures, no sparsity).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "T4": 65e12, "V100": 125e12,
              "TPU v6": 918e12, "TPU v5p": 459e12, "TPU v5": 197e12, "TPU v4": 275e12}


def peak_flops(device=None) -> float | None:
    kind = (device or jax.local_devices()[0]).device_kind
    return next((peak for name, peak in PEAK_FLOPS.items() if name in kind), None)


def batch_tokens(batch: dict) -> int:
    """Token positions a step computes: the sizes of the batch's id arrays (chosen and rejected, lists)."""
    return sum(int(x.size) for key, x in batch.items() if "ids" in key and hasattr(x, "size"))


def peak_memory_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


@dataclasses.dataclass(frozen=True)
class StepCost:
    flops_per_token: float

    @classmethod
    def of(cls, trainable_params: int, frozen_params: int) -> StepCost:
        return cls(6.0 * trainable_params + 4.0 * frozen_params)

    def metrics(self, tokens: int, seconds: float) -> dict:
        """From the global tokens of a window: tokens_per_s, model_tflops_per_s per device, mfu where the
        device's peak is known, and this process's peak device memory where the backend reports it."""
        if seconds <= 0 or tokens <= 0:
            return {}
        flops = self.flops_per_token * tokens / seconds / jax.device_count()
        out = {"tokens_per_s": tokens / seconds, "model_tflops_per_s": flops / 1e12}
        peak = peak_flops()
        if peak:
            out["mfu"] = flops / peak
        memory = peak_memory_bytes()
        if memory is not None:
            out["peak_memory_gib"] = memory / 2**30
        return out


class Profiler:
    """`train.profile_steps="A:B"`: a `jax.profiler` trace of steps A..B (1-based, inclusive) into
    `workdir/profile` (open it in TensorBoard's profile plugin or xprof); "" is off."""

    def __init__(self, spec: str, workdir: Path):
        self.first = self.last = 0
        self.folder = Path(workdir) / "profile"
        self.active = False
        if spec:
            try:
                first, last = (int(x) for x in str(spec).split(":"))
            except ValueError:
                raise ValueError(f"train.profile_steps={spec!r}: give FIRST:LAST steps, e.g. 10:12") from None
            if not 1 <= first <= last:
                raise ValueError(f"train.profile_steps={spec!r}: need 1 <= FIRST <= LAST")
            self.first, self.last = first, last

    def before(self, step: int) -> None:
        """Called before step `step` (1-based) runs."""
        if self.first and step == self.first and jax.process_index() == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.folder))
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(state)  # the traced steps' device work inside the trace
            jax.profiler.stop_trace()
            self.active = False
            print(f"profile of steps {self.first}-{self.last} written to {self.folder}")

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
