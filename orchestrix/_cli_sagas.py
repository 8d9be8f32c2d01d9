"""The ``orchestrix`` commands for sagas at rest: ``deadlines``, ``dead-letters``, ``sagas``.

They work without the user's saga classes: the store is opened with a serializer that decodes
the saga machinery's own events (deadlines, stuck and retried sagas, dead letters) into their
classes and every other event raw, and that can encode the operator's requests (retry, discard).
Requests are stored events; the saga runner owning the saga carries them out when it reads them.
Part of the command line (cli.py wires these in and handles errors and exit codes).
"""

from __future__ import annotations

import argparse
from typing import Any

from orchestrix._cli_format import dumps, timestamp
from orchestrix._cli_open import open_store
from orchestrix.core.execution.dead_letters import DeadLetter, DeadLetters
from orchestrix.core.execution.deadlines import pending_deadlines
from orchestrix.core.execution.saga import SAGA_EVENTS
from orchestrix.core.execution.stuck import StoredStuckSaga, request_saga_retry, stuck_sagas
from orchestrix.core.messaging.serializer import RawEvent, RawSerializer, Serializer

__all__: list[str] = []

SERIALIZER_SPEC = "orchestrix._cli_sagas:tool_serializer"
"""How the commands name their default serializer to the command line's store opener."""


class _SagaTools(RawSerializer):
    """Saga machinery events as classes (both ways), every other stored event raw (read only)."""

    def __init__(self) -> None:
        super().__init__()
        self._known = Serializer(types=SAGA_EVENTS)

    def encode(self, obj: object) -> tuple[str, bytes]:
        return self._known.encode(obj)

    def to_dict(self, obj: object) -> tuple[str, dict[str, Any]]:
        return self._known.to_dict(obj)

    def decode(self, type_name: str, data: bytes | str) -> Any:
        if type_name in self._known.type_names:
            return self._known.decode(type_name, data)
        return super().decode(type_name, data)

    def from_dict(self, type_name: str, data: dict[str, Any]) -> Any:
        if type_name in self._known.type_names:
            return self._known.from_dict(type_name, data)
        return RawEvent(type_name, data)


def tool_serializer() -> Serializer:
    """The serializer the saga commands open a store with (unless ``--serializer`` names one)."""
    return _SagaTools()


def add_commands(commands: Any, store: argparse.ArgumentParser) -> None:
    """Add ``deadlines``, ``dead-letters`` and ``sagas`` to the command line's subcommands."""
    deadlines = commands.add_parser(
        "deadlines",
        help="list the pending deadlines of sagas",
        description="List saga deadlines that are scheduled and have neither fired nor been cancelled, "
        "soonest first.",
    )
    which = deadlines.add_subparsers(title="actions", metavar="ACTION", required=True)
    listing = which.add_parser("list", parents=[store], help="list pending deadlines")
    listing.set_defaults(run=_deadlines_list)

    letters = commands.add_parser(
        "dead-letters",
        help="list, retry or discard parked messages",
        description="Messages a saga step could not take (a permanent error, or retries exhausted) "
        "are parked in the store. Retry and discard are stored as requests that the runner owning "
        "the saga carries out.",
    )
    action = letters.add_subparsers(title="actions", metavar="ACTION", required=True)
    listed = action.add_parser("list", parents=[store], help="list parked messages")
    listed.add_argument("--all", action="store_true", help="also list retried and discarded ones")
    listed.set_defaults(run=_letters_list)
    retry = action.add_parser("retry", parents=[store], help="ask for a parked message to be tried again")
    retry.add_argument("id", metavar="ID", help="the dead letter's id (see list)")
    retry.set_defaults(run=_letters_retry)
    discard = action.add_parser("discard", parents=[store], help="give up on a parked message")
    discard.add_argument("id", metavar="ID", help="the dead letter's id (see list)")
    discard.add_argument("--reason", default="discarded by an operator", help="why (kept in the record)")
    discard.set_defaults(run=_letters_discard)

    sagas = commands.add_parser(
        "sagas",
        help="list stuck sagas, or ask for one to be retried",
        description="orchestrix sagas STORE --stuck lists stuck sagas; orchestrix sagas retry STORE ID "
        "stores a retry request for the saga whose stream is ID (the owning runner carries it out).",
        usage="orchestrix sagas [-h] STORE --stuck [--json] | orchestrix sagas retry STORE ID [--json]",
    )
    sagas.add_argument("words", nargs="+", metavar="[retry] STORE [ID]", help=argparse.SUPPRESS)
    for option in store._actions:
        if option.option_strings and option.dest != "help":
            sagas._add_action(option)
    sagas.add_argument("--stuck", action="store_true", help="list the stuck sagas")
    sagas.set_defaults(run=_sagas)


# -- the commands ------------------------------------------------------------------------------


def _opened(args: argparse.Namespace, *, writable: bool = False) -> Any:
    if args.serializer is None:
        args.serializer = SERIALIZER_SPEC
    return open_store(args, writable=writable)


def _print(value: Any) -> None:
    print(dumps(value), flush=True)


def _deadlines_list(args: argparse.Namespace) -> int:
    with _opened(args) as opened:
        found = pending_deadlines(opened.store)
    if args.json:
        _print(
            {
                "deadlines": [
                    {
                        "saga_type": d.saga_type,
                        "saga_id": d.saga_id,
                        "stream": d.stream,
                        "name": d.name,
                        "due_at": timestamp(d.due_at),
                        "scheduled_version": d.scheduled_version,
                    }
                    for d in found
                ]
            }
        )
        return 0
    print(f"{len(found)} pending deadline{'' if len(found) == 1 else 's'}")
    for d in found:
        print(f"  {timestamp(d.due_at)}  {d.stream}  {d.name}")
    return 0


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "status": letter.status,
        "saga_type": letter.saga_type,
        "saga_id": letter.saga_id,
        "saga_stream": letter.saga_stream,
        "event_type": letter.event_type,
        "stream": letter.stream,
        "position": letter.position,
        "event_id": letter.event_id,
        "error_type": letter.error_type,
        "error": letter.error,
        "attempts": letter.attempts,
        "first_failed_at": timestamp(letter.first_failed_at),
        "last_failed_at": timestamp(letter.last_failed_at),
        "detail": letter.detail,
        "kind": letter.kind,
        "projection": letter.projection,
    }


def _owner(letter: DeadLetter) -> str:
    return f"projection {letter.projection}" if letter.kind == "projection" else letter.saga_stream


def _letter_line(letter: DeadLetter) -> str:
    return (
        f"  {letter.id}  {letter.status}  {_owner(letter)}  {letter.event_type}@{letter.position}  "
        f"{letter.attempts} attempt{'' if letter.attempts == 1 else 's'}  {letter.error_type}: {letter.error}"
    )


def _letters_list(args: argparse.Namespace) -> int:
    with _opened(args) as opened:
        found = DeadLetters(opened.store).list(include_closed=args.all)
    if args.json:
        _print({"dead_letters": [_letter_json(letter) for letter in found]})
        return 0
    print(f"{len(found)} dead letter{'' if len(found) == 1 else 's'}")
    for letter in found:
        print(_letter_line(letter))
    return 0


def _letters_retry(args: argparse.Namespace) -> int:
    with _opened(args, writable=True) as opened:
        letter = DeadLetters(opened.store).retry(args.id)
    return _requested(args, letter, "retry")


def _letters_discard(args: argparse.Namespace) -> int:
    with _opened(args, writable=True) as opened:
        letter = DeadLetters(opened.store).discard(args.id, args.reason)
    return _requested(args, letter, "discard")


def _requested(args: argparse.Namespace, letter: DeadLetter, what: str) -> int:
    if args.json:
        _print(_letter_json(letter))
    else:
        owner = f"the runner owning {_owner(letter)} carries it out"
        print(f"{what} of dead letter {letter.id} requested; {owner}")
    return 0


def _stuck_json(saga: StoredStuckSaga) -> dict[str, Any]:
    return {
        "stream": saga.stream,
        "saga_type": saga.saga_type,
        "saga_id": saga.saga_id,
        "reason": saga.reason,
        "event_type": saga.event_type,
        "position": saga.position,
        "since": timestamp(saga.since),
        "retry_requested": saga.retry_requested,
    }


def _sagas(args: argparse.Namespace) -> int:
    from orchestrix._cli_format import UsageError

    words = list(args.words)
    if words[0] == "retry" and len(words) == 3:
        args.store, stream = words[1], words[2]
        with _opened(args, writable=True) as opened:  # the request is stored for the runner
            saga = request_saga_retry(opened.store, stream)
        if args.json:
            _print(_stuck_json(saga))
        else:
            print(f"retry of {saga.stream} requested; the runner owning it carries it out")
        return 0
    if len(words) != 1 or not args.stuck:
        raise UsageError("use: orchestrix sagas STORE --stuck, or orchestrix sagas retry STORE ID")
    args.store = words[0]
    with _opened(args) as opened:
        found = stuck_sagas(opened.store)
    if args.json:
        _print({"stuck": [_stuck_json(saga) for saga in found]})
        return 0
    print(f"{len(found)} stuck saga{'' if len(found) == 1 else 's'}")
    for saga in found:
        asked = "  (retry requested)" if saga.retry_requested else ""
        print(f"  {saga.stream}  since {timestamp(saga.since)}  {saga.reason}{asked}")
    return 0
