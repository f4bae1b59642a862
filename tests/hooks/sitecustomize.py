"""Test hooks for the processes the distributed tests start (on PYTHONPATH, Python imports this at startup).

FeXT itself carries no test hooks; these wrap its functions from outside, in the processes started
under torchrun, when the tests ask for them:

- ``FEXT_TEST_FAIL_RANK=R``: rank R raises an error right before training's first epoch, and in
  encoding once its part is encoded.
- ``FEXT_TEST_DUMP_WEIGHTS=DIR``: at the end of training every rank writes its weights to
  ``DIR/rank<R>.safetensors``, to check that the ranks ended with the same model.
- ``FEXT_TEST_ENCODE_SLEEP=SECONDS``: encoding sleeps after every batch and records its progress
  after every batch, so a test can kill a `fext encode` midway at a known point.
"""

from __future__ import annotations

import os

FAIL_RANK = os.environ.get("FEXT_TEST_FAIL_RANK", "").strip()
DUMP_WEIGHTS = os.environ.get("FEXT_TEST_DUMP_WEIGHTS", "").strip()
ENCODE_SLEEP = float(os.environ.get("FEXT_TEST_ENCODE_SLEEP", "").strip() or 0)


def _install() -> None:
    from pathlib import Path

    import fext.encoding.resumable as resumable
    import fext.training.run as training_run
    from fext import distributed
    from fext.checkpoints import save_weights
    from fext.errors import FeXTError

    def fail_here() -> None:
        if distributed.active() and FAIL_RANK == str(distributed.rank()):
            raise FeXTError(f"Rank {distributed.rank()} failed on purpose (FEXT_TEST_FAIL_RANK={FAIL_RANK}).")

    fit, encode_missing = training_run.fit, resumable.encode_missing

    def fit_with_hooks(run, epochs, show_bar=True):
        fail_here()
        fit(run, epochs, show_bar)
        if DUMP_WEIGHTS:
            Path(DUMP_WEIGHTS).mkdir(parents=True, exist_ok=True)
            save_weights(run.model.state_dict(), Path(DUMP_WEIGHTS) / f"rank{distributed.rank()}.safetensors")

    def encode_then_fail(*args, **kwargs):
        encode_missing(*args, **kwargs)
        fail_here()

    training_run.fit, resumable.encode_missing = fit_with_hooks, encode_then_fail


def _install_encode_sleep() -> None:
    import time

    import fext.encoding.inference as inference
    import fext.encoding.resumable as resumable

    embed = inference.embed

    def slow_embed(*args, **kwargs):
        vectors = embed(*args, **kwargs)
        time.sleep(ENCODE_SLEEP)
        return vectors

    inference.embed, resumable.FLUSH_SECONDS = slow_embed, 0.0


if FAIL_RANK or DUMP_WEIGHTS:
    _install()
if ENCODE_SLEEP:
    _install_encode_sleep()
