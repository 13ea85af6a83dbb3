"""One rank failing ends the whole job, with the error shown, instead of hanging its peers.

A rank that raises would otherwise unwind through `destroy_process_group` and atexit handlers while its
peers sit in the next collective until the timeout. `fail_fast` prints the traceback (prefixed with the
rank), records it for torchrun's failure summary, flushes, and leaves with `os._exit(1)`. Then:
- under torchrun, the agent sees a worker exit non-zero and stops the others at once;
- without torchrun, gloo peers fail their pending collective on the closed socket, NCCL peers
  are stopped by the watchdog after `parallel.timeout_s`;
- a rank that hangs without raising is also caught by `parallel.timeout_s`.
A one-process run (no group) re-raises normally, so the CLI's one-line errors keep working.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator

from .env import Dist

__all__ = ["fail_fast"]


@contextlib.contextmanager
def fail_fast(d: Dist, *, user_errors: dict[type[BaseException], int] | None = None) -> Iterator[None]:
    """user_errors: exception types a user acts on from the message alone (config, data, non-finite
    loss) and their exit codes: one line instead of a traceback, as the CLI prints them."""
    try:
        yield
    except SystemExit as e:
        if not d.has_group or d.world == 1 or e.code in (0, None):
            raise
        _die(d, e, code=e.code if isinstance(e.code, int) else 1, brief=True)
    except BaseException as e:  # KeyboardInterrupt must end the group too
        if not d.has_group or d.world == 1:
            raise
        code = next((c for t, c in (user_errors or {}).items() if isinstance(e, t)), None)
        _die(d, e, code=code or 1, brief=code is not None)


def _die(d: Dist, e: BaseException, *, code: int, brief: bool = False) -> None:
    if brief:
        sys.stderr.write(f"[rank {d.rank}/{d.world}] soar-fast: error: {e}\n")
    else:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        sys.stderr.write(f"[rank {d.rank}/{d.world}] failed, ending the job: {type(e).__name__}: {e}\n{tb}")
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        with contextlib.suppress(Exception):
            from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

            ErrorHandler().record_exception(e)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    # Not sys.exit: unwinding would run destroy_process_group/atexit, which can block on peers.
    os._exit(code)
