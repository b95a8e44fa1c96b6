"""`doit release CHANNEL [ENGINE-GLOB ...]`: record which engines a channel serves; `--rollback MODEL` undoes one."""

from __future__ import annotations

import sys

from ..core.errors import UserError
from ..rollout.release import release, rollback
from ..store.channel import Release
from .command import EngineCommand, exit_on_user_error
from .session import loaded_planner

opt_check = {"name": "check", "long": "check", "type": bool, "default": False,
             "help": "exit 1, recording nothing, when an engine is left out (not in the store, not validated)"}
opt_rollback = {"name": "rollback", "long": "rollback", "type": str, "default": "",
                "help": "MODEL: restore the channel's release of MODEL before the one in force (a new record)"}
opt_regressed = {"name": "regressed", "long": "regressed", "type": bool, "default": False,
                 "help": "release engines the perf gate caught slower than the engines they replaced"}
opt_unvalidated = {"name": "unvalidated", "long": "unvalidated", "type": bool, "default": False,
                   "help": "release engines that nothing vouches passed validation (their models ask for it)"}


def _engines(r: Release) -> str:
    return ", ".join(e["engine"] for e in r.engines)


class ReleaseCmd(EngineCommand):
    """A release is a signed record in the store (buildlib.store.channel); serving nodes read it with
    `enginebuild fetch`, which needs no checkout."""

    name = "release"
    needs_tasks = False
    doc_purpose = "record in the store that CHANNEL (canary, prod, ...) serves the current engines"
    doc_usage = "CHANNEL [--check] [--unvalidated] [--regressed] [ENGINE-GLOB ...] | CHANNEL --rollback MODEL"
    doc_description = ("Per model, the engines whose current key is in the store (and validated, where the model\n"
                       "asks for it) become the channel's release; the rest are named and left out. The release\n"
                       "in force before is kept: `doit release prod --rollback MODEL` restores it. Signed where\n"
                       "the store signs (store: sign); nodes with a trust policy refuse unsigned releases.")
    cmd_options = (opt_check, opt_rollback, opt_unvalidated, opt_regressed)

    def _execute(self, check: bool, rollback: str, unvalidated: bool, regressed: bool,
                 pos_args: list[str] | None = None) -> int:
        return exit_on_user_error(lambda: self._run(check, rollback, unvalidated, regressed, pos_args or []))

    def _run(self, check: bool, rollback_model: str, unvalidated: bool, regressed: bool, pos: list[str]) -> int:
        # doit stops parsing options at the first positional argument; `doit release prod --rollback M` (the order
        # the help shows) leaves them among the positionals: take them from there.
        args: list[str] = []
        it = iter(pos)
        for a in it:
            if a in ("--check", "--unvalidated", "--regressed"):
                check, unvalidated = check or a == "--check", unvalidated or a == "--unvalidated"
                regressed = regressed or a == "--regressed"
            elif a == "--rollback" or a.startswith("--rollback="):
                rollback_model = a.partition("=")[2] if "=" in a else next(it, "")
                if not rollback_model:
                    raise UserError("--rollback needs a MODEL (`doit release prod --rollback llama-3-8b`)")
            elif a.startswith("-"):
                raise UserError(f"doit release: unknown option {a} (see `doit help release`)")
            else:
                args.append(a)
        if not args:
            raise UserError("doit release needs a CHANNEL (e.g. `doit release canary`)")
        channel, globs = args[0], args[1:]
        planner = loaded_planner()
        w = self.outstream.write
        if rollback_model:
            if globs:
                raise UserError("--rollback MODEL takes no engine globs")
            undone, rel, url = rollback(planner, channel, rollback_model)
            w(f"rolled back {channel} for {rollback_model}: {rel.id} serves {_engines(rel)} again "
              f"(as {undone.previous}); {undone.id} undone\nrecorded {url}\n")
            return 0
        got = release(planner, channel, globs, check, unvalidated, regressed)
        for engine, why in got.left_out:
            w(f"left out  {engine}: {why}\n")
        if check and got.left_out:
            w(f"release {channel}: nothing recorded (--check, {len(got.left_out)} engine(s) left out)\n")
            return 1
        for rel, _ in got.recorded:
            prev = f"; previous {rel.previous}" if rel.previous else ""
            w(f"released  {channel} {rel.model}: {_engines(rel)} ({rel.id}{prev})\n")
        for rel in got.unchanged:
            w(f"unchanged {channel} {rel.model}: {_engines(rel)} ({rel.id})\n")
        for engine, model in got.dropped:
            w(f"note      {channel} {model} no longer serves {engine}\n")
        store = planner.store
        if got.recorded and store is not None and store.signer is None:
            print(f"warning: releases in {store.url} are unsigned: nodes with a trust policy refuse them (sign with "
                  "`store: sign` or BUILDLIB_STORE_SIGN_KEY)", file=sys.stderr)
        if not got.recorded and not got.unchanged:
            raise UserError(f"nothing to release to {channel}: every selected engine was left out")
        return 0
