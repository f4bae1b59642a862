"""Device and precision selection from the configuration's ``device`` section."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from fext.errors import FeXTError

log = logging.getLogger(__name__)


def select_device(device: str, device_id: int = 0) -> torch.device:
    """The torch device for the configuration's DEVICE ("auto", "GPU", "CPU") and DEVICE_ID.

    "auto" and "GPU" use ``cuda:device_id`` when PyTorch sees a CUDA GPU, else the CPU: "auto" says
    which in one log line, "GPU" warns, since a GPU was asked for. Apple's MPS is not used: FeXT's
    training and memory-lean stages are tested on CUDA and CPUs only. A command may select its device
    several times; the line is said once per run (the first time).
    """
    if device == "CPU" or not torch.cuda.is_available():
        chosen = torch.device("cpu")
    else:
        count = torch.cuda.device_count()
        if device_id >= count:
            _say_once(logging.WARNING, f"device.DEVICE_ID={device_id} but only {count} GPU(s) are visible; using cuda:0")
            device_id = 0
        chosen = torch.device("cuda", device_id)
    _say_once(*_device_line(device, chosen))
    return chosen


def _device_line(device: str, chosen: torch.device) -> tuple[int, str]:
    """The log level and line that names the device a run uses, and why."""
    if chosen.type == "cuda":
        return logging.INFO, f"Device: {chosen} ({torch.cuda.get_device_name(chosen)}; device.DEVICE \"{device}\")"
    if device == "GPU":
        return logging.WARNING, ('device.DEVICE is "GPU" but PyTorch sees no GPU: running on the CPU '
                                 '(set device.DEVICE to "auto" to use a GPU when there is one, or "CPU")')
    reason = "no GPU found; " if device == "auto" else ""
    return logging.INFO, f'Device: cpu ({reason}device.DEVICE "{device}")'


_said: set[str] = set()


def _say_once(level: int, message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.log(level, message)


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
