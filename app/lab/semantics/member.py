"""One member (consumer) of one delivery mode, as a process of its own, so kill -9 is real.

    python -m app.lab.semantics.member --mode at-least-once --topic T --group G --run-id R ...

The lab starts it with its settings' environment (app.process_env.settings_env), kills it,
freezes it, starts it again (app/lab/semantics/members.py). Exit status: 0 stopped when asked,
3 fenced by a newer member, 2 any other error (its line says which).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack

from app.lab.semantics.member_runtime import ERROR_EXIT, FENCED_EXIT, Fenced, Member, MemberArgs
from app.lab.semantics.modes import MODES
from app.settings import Settings, get_settings


def parse(argv: Sequence[str] | None) -> MemberArgs:
    parser = argparse.ArgumentParser(prog="python -m app.lab.semantics.member")
    parser.add_argument("--mode", choices=list(MODES), required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--max-records", type=int, required=True)
    parser.add_argument("--out-topic", default="")
    parser.add_argument("--transactional-id", default="")
    return MemberArgs(**vars(parser.parse_args(argv)))


async def serve(settings: Settings, args: MemberArgs) -> int:
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        member = Member(settings, args, stack)
        loop.add_signal_handler(signal.SIGTERM, member.stop)
        loop.add_signal_handler(signal.SIGUSR1, member.arm)
        loop.add_signal_handler(signal.SIGUSR2, member.disarm)
        try:
            await MODES[args.mode].run(member)
        except Fenced as exc:
            member.say("fenced", reason=str(exc))
            return FENCED_EXIT
        except Exception as exc:  # any other failure: said, then the exit status
            member.say("error", error=repr(exc))
            return ERROR_EXIT
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # aiokafka's warnings (a broker away, a retried request) go to stderr, which the lab keeps.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return asyncio.run(serve(get_settings(), parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
