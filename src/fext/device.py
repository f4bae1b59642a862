"""Device and precision selection from the configuration's ``device`` section."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from fext.errors import FeXTError

log = logging.getLogger(__name__)


def select_device(device: str, device_id: int = 0) -> torch.device:
    """Return ``cuda:device_id`` for "GPU" when CUDA is available, else the CPU.

    Asking for a GPU on a machine without one falls back to the CPU with one log line.
    """
    if device == "GPU":
        if torch.cuda.is_available():
            if device_id >= torch.cuda.device_count():
                log.warning(
                    "device.DEVICE_ID=%d but only %d GPU(s) are visible; using cuda:0",
                    device_id, torch.cuda.device_count(),
                )
                device_id = 0
            return torch.device("cuda", device_id)
        log.info("No GPU available: running on the CPU (set device.DEVICE to \"CPU\" to silence this)")
    return torch.device("cpu")


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The mixed-precision dtype for ``device``: bf16 where supported, else fp16."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``device`` when ``enabled`` (MIXED_PRECISION), else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=autocast_dtype(device))


def needs_grad_scaler(device: torch.device, enabled: bool) -> bool:
    """fp16 autocast needs loss scaling; bf16 does not."""
    return enabled and autocast_dtype(device) == torch.float16


def rng_state(device: torch.device) -> torch.Tensor:
    """The state of the generator that dropout on ``device`` draws from (the CPU's or the GPU's)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


@contextlib.contextmanager
def replay_rng(device: torch.device, state: torch.Tensor) -> Iterator[None]:
    """Inside the block ``device``'s generator draws again from ``state`` (an earlier :func:`rng_state`);
    after it, it goes on from where it was before the block."""
    setter = (lambda s: torch.cuda.set_rng_state(s, device)) if device.type == "cuda" else torch.set_rng_state
    resume = rng_state(device)
    setter(state)
    try:
        yield
    finally:
        setter(resume)


@contextlib.contextmanager
def explain_compile_failure() -> Iterator[None]:
    """Turn a torch.compile backend failure (``model.JIT_COMPILE``) into one FeXTError that says what to change.

    Inductor needs a working C++ compiler on CPUs (Triton on GPUs); without one it fails on first use.
    """
    try:
        yield
    except Exception as e:
        from torch._dynamo.exc import BackendCompilerFailed  # imported here: a second to import
        from torch._inductor.exc import InductorError

        if not isinstance(e, (BackendCompilerFailed, InductorError)):
            raise
        raise FeXTError(
            f"torch.compile failed ({str(e).strip().splitlines()[0]}); "
            'set model.JIT_COMPILE to false or model.JIT_BACKEND to "aot_eager"'
        ) from None
