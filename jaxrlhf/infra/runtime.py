"""Process-level plumbing shared by the entry points: errors, dtypes, progress bars."""

from __future__ import annotations

import contextlib
import os
import sys

import jax
import jax.numpy as jnp

from jaxrlhf.infra.host_memory import reexec_with_tuned_malloc

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str):
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def setup_runtime(config) -> None:
    """Multi-host initialisation from `config.distributed`, the JAXRLHF_* variables or a TPU pod's own
    environment (a no-op on one process). Must run before anything touches a JAX device."""
    from jaxrlhf.infra import multihost

    multihost.initialize(config.get("distributed") if hasattr(config, "get") else None)


def progress(total: int, initial: int = 0, desc: str = ""):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=jax.process_index() != 0,
                dynamic_ncols=True, mininterval=2.0)


def quiet_libraries() -> None:
    """No per-file progress bars from `datasets`; warnings only from `transformers`."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


def _close_progress_bars() -> None:
    from tqdm.auto import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


@contextlib.contextmanager
def cli_errors():
    """Bad input ends the program with one line on stderr and exit code 2, not a traceback.

    Set JAXRLHF_TRACEBACK=1 to see the traceback anyway.
    """
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # keeps JAX's backend probing off the console
    quiet_libraries()
    try:
        yield
    except (ValueError, OSError, KeyError) as e:
        if os.environ.get("JAXRLHF_TRACEBACK"):
            raise
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        # ml_collections spreads "cannot load the config file" over several lines: keep them all.
        message = " ".join(lines)[:400] if isinstance(e, OSError) else (lines[0] if lines else type(e).__name__)
        from jaxrlhf.infra.checkpoint import finish_pending_saves

        finish_pending_saves()
        _close_progress_bars()  # else the message lands inside a half-drawn bar line
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if os.environ.get("JAXRLHF_TRACEBACK"):
            raise
        _close_progress_bars()
        print("interrupted: quit at once (the last complete checkpoint is intact; rerun to resume from it)",
              file=sys.stderr, flush=True)
        # At once: no waiting on background writers, whose folders Orbax never takes for complete.
        os._exit(130)


def run_app(main) -> None:
    """`absl.app.run(main)`, but a bad flag or config override is one line on stderr and exit 2.

    ml_collections applies `--config.KEY=VALUE` overrides while absl parses flags, so a misspelt key
    surfaces there as a KeyError/AttributeError, before `main` (and `cli_errors`) run.
    """
    from absl import app, flags

    reexec_with_tuned_malloc()  # before any work: the new process starts over (trainers come through here too)
    try:
        remaining = flags.FLAGS(sys.argv)
    except (AttributeError, KeyError, ValueError, TypeError, flags.Error) as e:
        if os.environ.get("JAXRLHF_TRACEBACK"):
            raise
        print(f"error: bad command-line flag or config override: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    app.run(main, flags_parser=lambda _: remaining)  # parsed once: overrides cannot be defined twice


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if e.args else str(e)
    text = text.replace("\\n", "\n").replace("\\", "")
    return " ".join(part.strip(" '\"") for part in text.splitlines() if part.strip())


def run_trainer(train, default_config: str) -> None:
    """The entry point of a `--config=FILE` trainer: defines the flag, then runs `train(config)` under
    `cli_errors`. Defined here and only when run as a program, since trainers import each other's libraries
    and absl allows a flag name once per process."""
    from ml_collections import config_flags

    try:  # ml_collections already applies the command line's overrides while defining the flag
        holder = config_flags.DEFINE_config_file("config", default_config,
                                                 "Path to a config file (plain Python returning a ConfigDict).")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if os.environ.get("JAXRLHF_TRACEBACK"):
            raise
        print(f"error: bad command-line flag or config override: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)

    def main(argv):
        del argv
        with cli_errors():
            try:  # overrides are applied here, when the config is first read
                config = holder.value
            except (AttributeError, KeyError, TypeError) as e:
                raise ValueError(f"bad config override: {_one_line(e)}") from None
            train(config)

    run_app(main)
