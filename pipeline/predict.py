"""Model forward passes over datasets: batches of same-size images in, per-image logits at original size out.

Used by validation, out-of-fold prediction, pseudo-labelling and test inference, so all of them treat sizes the
same way: with the ``pad`` policy the whole image goes through the model (which pads to its stride and crops
back); with ``resize`` it is resized to the config's input size and the logits are resized back (bilinear).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pipeline.data.dataset import normalize
from pipeline.paths import CPUINFO


class SizedModel(torch.nn.Module):
    """Applies a config's size policy around a model: ``resize`` interpolates the (B, 3, H, W) input to the config's
    input size and the logits back to (H, W); ``pad`` passes the image as it is (the model pads to its stride)."""

    def __init__(self, model: torch.nn.Module, input_size: tuple[int, int] | None) -> None:
        super().__init__()
        self.model, self.input_size = model, input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is None or tuple(x.shape[-2:]) == tuple(self.input_size):
            return self.model(x)
        size = x.shape[-2:]
        y = self.model(F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def collate_by_shape(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Collate items into one stacked group per image shape (order kept within a group)."""
    groups: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for it in items:
        groups.setdefault(tuple(it["image"].shape), []).append(it)
    out = []
    for group in groups.values():
        batch: dict[str, Any] = {
            "image": torch.stack([g["image"] for g in group]),
            "index": torch.tensor([g["index"] for g in group]),
        }
        if "mask" in group[0]:
            batch["mask"] = torch.stack([g["mask"] for g in group])
        out.append(batch)
    return out


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of the CPUs with native bf16 arithmetic


def cpu_flags_have_bf16(cpuinfo: str) -> bool:
    r"""Whether a ``/proc/cpuinfo`` text lists native bf16 (AVX512-BF16 or AMX-BF16) on its ``flags`` lines.

    >>> cpu_flags_have_bf16("model name : Intel Xeon\nflags : fpu sse2 avx2 avx512f avx512_bf16")
    True
    >>> cpu_flags_have_bf16("model name : AMD EPYC avx512_bf16\nflags : fpu sse2 avx2 fma")
    False
    """
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[-1].split()}
    return any(f in flags for f in BF16_FLAGS)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively. Without it PyTorch emulates bf16 and a training step is many times
    slower than fp32 (cnn_default at 96x128, batch 14, an AMD EPYC with AVX2 only: 37 s against 1.8 s), so
    ``recipe.cpu_bf16`` is honoured only where this is true; the first call says so once when it is not.

    Linux: the ``/proc/cpuinfo`` flags; elsewhere PyTorch's own check (``torch.cpu._is_avx512_bf16_supported``)."""
    if CPUINFO.is_file():
        native = cpu_flags_have_bf16(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    else:
        native = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    if not native:
        print(
            "recipe.cpu_bf16: this CPU has no native bf16 (avx512_bf16 / amx_bf16): fp32 instead, which is faster here",
            file=sys.stderr,
        )
    return native


def autocast(device: torch.device, amp: str, cpu_bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16/fp16 autocast on CUDA as configured; bf16 on CPU only when ``cpu_bf16`` and the CPU computes bf16
    natively (:func:`cpu_has_bf16`); else a no-op."""
    if device.type == "cuda" and amp != "none":
        return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
    if device.type == "cpu" and cpu_bf16 and cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def activate(logits: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """(B, C, H, W) logits -> probabilities: the softmax over C, or (``multilabel``) each class's own sigmoid."""
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)


@torch.no_grad()
def iter_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    device: torch.device,
    batch_size: int,
    sizes: Callable[[int], tuple[int, int]] | None = None,
    num_workers: int = 0,
    amp_ctx: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(indices (B,), logits (B, C, H, W) float32)`` at each image's original size.

    ``forward`` maps a normalised (B, 3, h, w) batch to (B, C, h, w) logits (a model, or a TTA wrapper).
    ``sizes(index)`` gives an image's original (H, W); logits of another size are resized back to it (bilinear).
    Truth masks are not passed through here: callers read them at original size from the dataset.
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_by_shape,
        pin_memory=device.type == "cuda",  # the copy to the device overlaps the previous batch (non_blocking)
    )
    for groups in loader:
        for batch in groups:
            x = normalize(batch["image"].to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with amp_ctx():
                logits = forward(x).float()
            idx = batch["index"]
            targets = [sizes(int(j)) for j in idx] if sizes is not None else [tuple(logits.shape[-2:])] * len(idx)
            if all(t == tuple(logits.shape[-2:]) for t in targets):
                yield idx, logits
                continue
            for i, t in enumerate(targets):  # resized policy: back to each image's own size
                one = F.interpolate(logits[i : i + 1], size=t, mode="bilinear", align_corners=False)
                yield idx[i : i + 1], one
