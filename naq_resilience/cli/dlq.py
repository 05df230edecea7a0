"""`naq dlq list|count|show|replay|reschedule|archive|discard|purge`: dead letters for
operators. Tables for people, `--json` for scripts; commands that remove letters, and
replays by filter, ask first unless `--yes` (and refuse without a terminal to ask on).
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from naq_resilience.cli._common import (
    Progress,
    confirm,
    exits,
    parse_duration,
    parse_time,
    run_client,
    table,
    to_json,
    utc,
)

if TYPE_CHECKING:
    from naq_resilience.jetstream.client import Client
    from naq_resilience.jetstream.deadletters import DeadLetterFilter
    from naq_resilience.models import DeadLetter

__all__ = ["add_dlq_command"]

Parser = argparse.ArgumentParser


def _common(parser: Parser) -> None:
    parser.add_argument("--nats-url", default=None, help="the NATS server (default: $NAQ_NATS_URL)")


def _filters(parser: Parser) -> None:
    from naq_resilience.jetstream.deadletters import CLASSIFICATIONS

    group = parser.add_argument_group("filters (every one given must match)")
    group.add_argument(
        "--dlq",
        default=None,
        metavar="NAME",
        help="a dead-letter queue (emails.dead, failed_jobs) or a queue (emails: its emails.dead)",
    )
    group.add_argument("--queue", default=None, help="the queue the job failed on")
    group.add_argument(
        "--function", default=None, help="module:qualname, or a glob such as 'billing.jobs:*'"
    )
    group.add_argument(
        "--error-type",
        default=None,
        metavar="TYPE",
        help="the last error's type: builtins:ValueError, or ValueError in any module",
    )
    group.add_argument(
        "--classification", default=None, choices=CLASSIFICATIONS,
        help="why the letter is dead: the last attempt's classification, or why it has none",
    )  # fmt: skip
    group.add_argument(
        "--since", type=parse_time, default=None, metavar="WHEN", help="dead since: 2h, 7d, or ISO"
    )
    group.add_argument(
        "--until", type=parse_time, default=None, metavar="WHEN", help="dead until: 2h, 7d, or ISO"
    )
    group.add_argument(
        "--text", default=None, help="in the reason or any error message (ignoring case)"
    )
    replayed = group.add_mutually_exclusive_group()
    replayed.add_argument(
        "--replayed", dest="replayed", action="store_const", const=True, default=None,
        help="only letters replayed before",
    )  # fmt: skip
    replayed.add_argument(
        "--not-replayed", dest="replayed", action="store_const", const=False,
        help="only letters never replayed",
    )  # fmt: skip


def _filter_of(args: argparse.Namespace) -> DeadLetterFilter:
    from naq_resilience.jetstream.deadletters import DeadLetterFilter

    return DeadLetterFilter(
        dead_letter_queue=args.dlq, queue=args.queue, function=args.function,
        error_type=args.error_type, classification=args.classification, since=args.since,
        until=args.until, text=args.text, replayed=args.replayed,
    )  # fmt: skip


def _has_filter(args: argparse.Namespace) -> bool:
    from naq_resilience.jetstream.deadletters import DeadLetterFilter

    return _filter_of(args) != DeadLetterFilter()


def add_dlq_command(commands: argparse._SubParsersAction[Parser]) -> None:
    parser = commands.add_parser(
        "dlq",
        help="list, show, replay, archive or remove dead letters",
        description=(
            "Dead letters are jobs that will not be tried again (docs/wire-format.md, "
            "DeadLetter). Filters pick letters by queue, function, error, time and text."
        ),
    )
    actions = parser.add_subparsers(title="actions", dest="action", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", help="a page of letters, oldest first")
    _filters(listing)
    listing.add_argument("--limit", type=int, default=50, help="letters a page (%(default)s)")
    listing.add_argument(
        "--after", type=int, default=0, metavar="CURSOR",
        help="the cursor a previous page printed, for the next page (default: the first page)",
    )  # fmt: skip
    listing.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    _common(listing)
    listing.set_defaults(handler=_list)

    count = actions.add_parser("count", help="how many letters the filters name")
    _filters(count)
    count.add_argument("--json", action="store_true", help="a JSON object, for scripts")
    _common(count)
    count.set_defaults(handler=_count)

    show = actions.add_parser("show", help="one letter with its whole failure history")
    show.add_argument("id", metavar="ID", help="the letter's id (its job's id, or seq-<n>)")
    show.add_argument("--json", action="store_true", help="the letter as JSON")
    _common(show)
    show.set_defaults(handler=_show)

    replay = actions.add_parser(
        "replay",
        help="run letters' jobs again (by id, or every letter the filters name)",
        description=(
            "Each replayed job links to its letter (replay_of) and the letter is marked "
            "replayed once the job is stored. A letter replayed before needs --force."
        ),
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="letters to replay")
    _filters(replay)
    _replay_options(replay)
    replay.add_argument(
        "--rate", type=float, default=1000.0,
        help="at most this many letters a second, replaying by filter (%(default)s)",
    )  # fmt: skip
    replay.add_argument("--yes", action="store_true", help="replay by filter without asking")
    replay.add_argument("--json", action="store_true", help="what was replayed, as JSON")
    _common(replay)
    replay.set_defaults(handler=_replay)

    later = actions.add_parser(
        "reschedule", help="replay one letter later, on a schedule the server keeps"
    )
    later.add_argument("id", metavar="ID", help="the letter's id")
    when = later.add_mutually_exclusive_group(required=True)
    when.add_argument("--in", dest="delay", type=parse_duration, help="after this long: 1h, 30m")
    when.add_argument("--at", type=parse_time, help="at this ISO time (UTC unless it says)")
    _replay_options(later)
    _common(later)
    later.set_defaults(handler=_reschedule)

    archive = actions.add_parser("archive", help="write letters to a JSON Lines file")
    archive.add_argument("--out", required=True, help="the file, appended to")
    _filters(archive)
    archive.add_argument(
        "--delete", action="store_true", help="then remove the letters written (asks first)"
    )
    archive.add_argument("--yes", action="store_true", help="--delete without asking")
    _common(archive)
    archive.set_defaults(handler=_archive)

    discard = actions.add_parser("discard", help="remove letters by id or by filter")
    discard.add_argument("ids", nargs="*", metavar="ID", help="letters to remove")
    _filters(discard)
    discard.add_argument("--yes", action="store_true", help="without asking")
    _common(discard)
    discard.set_defaults(handler=_discard)

    purge = actions.add_parser("purge", help="remove every letter of one dead-letter queue")
    purge.add_argument(
        "dlq", metavar="NAME", help="the dead-letter queue (or a queue, for its NAME.dead)"
    )
    purge.add_argument("--yes", action="store_true", help="without asking")
    _common(purge)
    purge.set_defaults(handler=_purge)


def _replay_options(parser: Parser) -> None:
    parser.add_argument(
        "--to-queue", dest="queue_name", default=None, metavar="QUEUE",
        help="run on this queue (default: the letter's own)",
    )  # fmt: skip
    parser.add_argument(
        "--max-retries", type=int, default=None, help="retries for the new job (default: as before)"
    )
    parser.add_argument("--force", action="store_true", help="replay letters replayed before")


# --------------------------------------------------------------------------- running


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _letter_rows(letters: list[DeadLetter]) -> list[tuple[str, ...]]:
    from naq_resilience.jetstream.deadletters import error_type, letter_classification

    rows: list[tuple[str, ...]] = [
        ("ID", "DEAD AT (UTC)", "DLQ", "FUNCTION", "ERROR", "CLASS", "REPLAYED", "REASON")
    ]
    for letter in letters:
        rows.append((
            letter.id, utc(letter.dead_at, ""), letter.dead_letter_queue,
            letter.job.function if letter.job else "-",
            (error_type(letter) or "-").rpartition(":")[2], letter_classification(letter),
            str(len(letter.replays)) if letter.replays else "-", _short(letter.reason, 60),
        ))  # fmt: skip
    return rows


# --------------------------------------------------------------------------- the actions


@exits
def _list(args: argparse.Namespace) -> int:
    flt = _filter_of(args)
    page = run_client(
        "list",
        lambda c: c.list_dead_letters(flt, limit=args.limit, after=args.after),
        args.nats_url,
    )
    if args.json:
        print(to_json({
            "letters": page.letters, "sequences": page.sequences, "next_after": page.next_after,
        }))  # fmt: skip
        return 0
    if not page.letters:
        print("no dead letters" + (" match" if _has_filter(args) else ""))
        return 0
    print(table(_letter_rows(page.letters)))
    if page.next_after is not None:
        print(f"\nmore: naq dlq list ... --after {page.next_after}")
    return 0


@exits
def _count(args: argparse.Namespace) -> int:
    flt = _filter_of(args)
    total = run_client("dlq count", lambda c: c.count_dead_letters(flt), args.nats_url)
    if args.json:
        print(to_json({"count": total}))
    else:
        print(total)
    return 0


@exits
def _show(args: argparse.Namespace) -> int:
    async def read(client: Client) -> tuple[DeadLetter, list[Any]]:
        letter = await client.get_dead_letter(args.id)
        return letter, await client.get_failure_history(letter)

    found = run_client("dlq show", read, args.nats_url)
    letter, history = found
    if args.json:
        import msgspec

        data = msgspec.to_builtins(letter)
        data["failures"] = msgspec.to_builtins(history)
        print(to_json(data))
        return 0
    print(_describe(letter, history))
    return 0


def _describe(letter: DeadLetter, history: list[Any]) -> str:
    from naq_resilience.jetstream.deadletters import analyze_failure, letter_classification

    job = letter.job
    lines = [
        f"dead letter {letter.id}",
        f"  reason:          {letter.reason}",
        f"  dead at:         {utc(letter.dead_at)}",
        f"  queue:           {letter.queue}",
        f"  dead-letter queue: {letter.dead_letter_queue}",
        f"  classification:  {letter_classification(letter)} (analyze_failure: "
        f"{analyze_failure(letter)})",
    ]
    if job is not None:
        lines += [
            f"  function:        {job.function}",
            f"  args:            {_short(to_json(job.args), 200)}",
            f"  kwargs:          {_short(to_json(job.kwargs), 200)}",
            f"  enqueued at:     {utc(job.enqueued_at)}",
        ]
        if job.replay_of:
            lines.append(f"  replay of:       {job.replay_of}")
    elif letter.raw is not None:
        lines.append(f"  raw message:     {_short(repr(letter.raw), 200)}")
    if letter.original_subject:
        lines.append(f"  job message at:  {letter.original_subject}")
    for note in letter.cut:
        lines.append(f"  note:            {note}")
    for replay in letter.replays:
        later = f", runs at {utc(replay.scheduled_for)}" if replay.scheduled_for else ""
        lines.append(
            f"  replayed:        {utc(replay.replayed_at)} as job {replay.job_id} on "
            f"{replay.queue}{later}"
        )
    lines.append(f"failures ({len(history)}):")
    for failure in history:
        lines.append(
            f"  attempt {failure.attempt} of {failure.max_attempts} at {utc(failure.failed_at)} "
            f"on {failure.worker_id or '?'}: {failure.error_type}: {failure.message}"
            f" [{failure.classification}, {failure.outcome}]"
        )
        if failure.traceback:
            lines += ["    " + line for line in failure.traceback.rstrip().splitlines()]
    return "\n".join(lines)


def _replay_options_of(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.max_retries is not None:
        options["max_retries"] = args.max_retries
    return options


@exits
def _replay(args: argparse.Namespace) -> int:
    options = _replay_options_of(args)
    if args.ids and _has_filter(args):
        print("naq dlq replay: give letter ids or filters, not both", file=sys.stderr)
        return 2
    if args.ids:

        async def some(client: Client) -> list[tuple[str, str]]:
            done = []
            for letter_id in args.ids:
                job = await client.replay_dead_letter(
                    letter_id, queue_name=args.queue_name, force=args.force, **options
                )
                done.append((letter_id, job.job_id))
            return done

        replayed = run_client("dlq replay", some, args.nats_url)
        skipped: list[tuple[str, str]] = []
    else:
        flt = _filter_of(args)
        total = run_client("dlq replay", lambda c: c.count_dead_letters(flt), args.nats_url)
        if total == 0:
            print("no dead letters match: nothing to replay")
            return 0
        what = "every dead letter" if not _has_filter(args) else "the dead letters that match"
        if not confirm(f"Replay {what} ({total})?", args.yes):
            return 1
        report = run_client(
            "dlq replay",
            lambda c: c.replay_dead_letters(
                flt,
                rate=args.rate,
                force=args.force,
                queue_name=args.queue_name,
                options=options,
                progress=Progress("replaying"),
            ),
            args.nats_url,
        )
        replayed, skipped = report.replayed, report.skipped
    if args.json:
        print(to_json({
            "replayed": [{"letter": a, "job": b} for a, b in replayed],
            "skipped": [{"letter": a, "why": b} for a, b in skipped],
        }))  # fmt: skip
        return 0
    for letter_id, job_id in replayed:
        print(f"replayed {letter_id} as job {job_id}")
    for letter_id, why in skipped:
        print(f"skipped {letter_id}: {why}", file=sys.stderr)
    print(f"{len(replayed)} replayed, {len(skipped)} skipped")
    return 0


@exits
def _reschedule(args: argparse.Namespace) -> int:
    options = _replay_options_of(args)
    at = args.at
    if isinstance(at, timedelta):
        print("naq dlq reschedule: --at takes a time; for a delay use --in", file=sys.stderr)
        return 2
    job = run_client(
        "dlq reschedule",
        lambda c: c.reschedule_dead_letter(
            args.id,
            delay=args.delay,
            at=at,
            queue_name=args.queue_name,
            force=args.force,
            **options,
        ),
        args.nats_url,
    )
    print(f"rescheduled {args.id} as job {job.job_id} (`naq schedule list` shows it)")
    return 0


@exits
def _archive(args: argparse.Namespace) -> int:
    flt = _filter_of(args)
    if args.delete:
        total = run_client("dlq archive", lambda c: c.count_dead_letters(flt), args.nats_url)
        if total == 0:
            print("no dead letters match: nothing to archive")
            return 0
        if not confirm(f"Archive {total} dead letters to {args.out}, then delete them?", args.yes):
            return 1
    written = run_client(
        "dlq archive",
        lambda c: c.archive_dead_letters(
            args.out, flt, delete=args.delete, progress=Progress("archiving")
        ),
        args.nats_url,
    )
    removed = ", and removed them" if args.delete else ""
    print(f"archived {written} dead letters to {args.out}{removed}")
    return 0


@exits
def _discard(args: argparse.Namespace) -> int:
    if args.ids and _has_filter(args):
        print("naq dlq discard: give letter ids or filters, not both", file=sys.stderr)
        return 2
    if not args.ids and not _has_filter(args):
        print(
            "naq dlq discard: name the letters (ids, or filters such as --dlq or --error-type); "
            "to empty a dead-letter queue use `naq dlq purge NAME`",
            file=sys.stderr,
        )
        return 2
    flt = _filter_of(args)
    if args.ids:
        question = f"Discard {len(args.ids)} dead letters ({', '.join(args.ids[:5])}...)?"
    else:
        total = run_client("dlq discard", lambda c: c.count_dead_letters(flt), args.nats_url)
        if total == 0:
            print("no dead letters match: nothing to discard")
            return 0
        question = f"Discard the {total} dead letters that match?"
    if not confirm(question, args.yes):
        return 1
    removed = run_client(
        "dlq discard",
        lambda c: c.discard_dead_letters(args.ids or None, None if args.ids else flt),
        args.nats_url,
    )
    print(f"discarded {removed} dead letters")
    return 0


@exits
def _purge(args: argparse.Namespace) -> int:
    from naq_resilience.jetstream.deadletters import DeadLetterFilter

    flt = DeadLetterFilter(dead_letter_queue=args.dlq)
    total = run_client("dlq purge", lambda c: c.count_dead_letters(flt), args.nats_url)
    if total == 0:
        print(f"no dead letters in {args.dlq}: nothing to purge")
        return 0
    if not confirm(f"Remove all {total} dead letters of {args.dlq}?", args.yes):
        return 1
    removed = run_client("dlq purge", lambda c: c.purge_dead_letters(args.dlq), args.nats_url)
    print(f"purged {removed} dead letters from {args.dlq}")
    return 0
