"""Process-level plumbing shared by the entry points: multi-host start, compilation cache, errors, progress
bars."""

from __future__ import annotations

import contextlib
import os
import sys

import jax

from jaxrlhf.infra.host_memory import reexec_with_tuned_malloc


def setup_runtime(config) -> None:
    """Multi-host initialisation from `config.distributed`, the JAXRLHF_* variables or a TPU pod's own
    environment (a no-op on one process), and the persistent compilation cache from
    `config.compilation_cache_dir`. Must run before anything touches a JAX device or compiles."""
    from jaxrlhf.infra import multihost

    get = config.get if hasattr(config, "get") else lambda key: None
    setup_compilation_cache(get("compilation_cache_dir"))
    multihost.initialize(get("distributed"))


# Programs that compile faster than this are not written to the persistent cache: reading an entry back
# costs about as much, and the many small helper programs would only fill the folder. The step functions
# that matter compile for seconds on CPU and tens of seconds on an accelerator.
CACHE_MIN_COMPILE_TIME_S = 1.0


def setup_compilation_cache(path: str | None) -> str | None:
    """Points JAX's persistent compilation cache at `path` (`~` expanded; created, private to the user, if
    missing), so a rerun or a resumed run loads its compiled programs from disk instead of compiling them
    again. "" switches the cache off; None (a config without the key) leaves JAX's own settings alone.

    A folder that cannot be created or written is a warning, and the run goes on without the cache. An
    explicit $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS wins over CACHE_MIN_COMPILE_TIME_S. Returns the
    folder in use, or None. Takes effect only before the process's first compilation."""
    if path is None:
        return None
    if not path:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    folder = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"{folder} is not writable")
    except OSError as e:
        import warnings

        warnings.warn(f"compilation cache off: cannot use compilation_cache_dir={path!r} ({e})", stacklevel=2)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_TIME_S)
    return folder


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
