"""The parent's side of a kill loop: let a started child work a random while, then SIGKILL it."""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import time


def kill_child_at_random(
    child: subprocess.Popen[str], rng: random.Random, delay_range: tuple[float, float], what: str
) -> None:
    """Wait for the child's ``ready`` line, let it run ``rng.uniform(*delay_range)`` seconds, then
    SIGKILL it and reap it; fails (naming ``what``) if it did not start or ended by itself.

    The child is reaped and its stdout closed whatever happens, so a failed kill leaves no process.
    """
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", f"{what}: the child did not start; see stderr"
        time.sleep(rng.uniform(*delay_range))
        with contextlib.suppress(ProcessLookupError):  # it may have ended by itself: the wait tells
            child.send_signal(signal.SIGKILL)
        code = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        assert child.stdout is not None
        child.stdout.close()
    assert code == -signal.SIGKILL, f"{what}: the child ended by itself ({code}); see stderr"
