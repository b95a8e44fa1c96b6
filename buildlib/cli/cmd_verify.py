"""`doit verify`: re-check every engine dir and store entry against its manifest (every byte read)."""

from __future__ import annotations

from ..core.errors import UserError
from ..report.verify import verify_all
from ..store.open import guarded
from .command import EngineCommand, exit_on_user_error
from .session import loaded_planner

opt_store = {"name": "store", "long": "store", "type": str, "default": "",
             "help": "the store to verify (a path or s3://bucket/prefix); default: the configured one, if any"}
opt_no_store = {"name": "no_store", "long": "no-store", "type": bool, "default": False,
                "help": "verify the local engine dirs only"}


class VerifyCmd(EngineCommand):
    """Integrity, not staleness: `doit plan` says whether an engine is what models.yaml asks for."""

    name = "verify"
    needs_tasks = False
    doc_purpose = "re-check every engine dir and store entry against its manifest: altered, missing, unexpected"
    doc_usage = "[--store URL | --no-store]"
    doc_description = ("Reads and hashes every file (the plan trusts the stat cache for unchanged stats).\n"
                       "Exit 1 when anything is altered, missing, unexpected, or a manifest's fields do not\n"
                       "hash to its key; a restore never uses such an entry. With a trust policy (store: trust),\n"
                       "every entry no trusted key signed, every signature that does not match its files, and\n"
                       "every validation record a trusted key did not sign is listed too.")
    cmd_options = (opt_store, opt_no_store)

    def _execute(self, store: str, no_store: bool, pos_args: list[str] | None = None) -> int:
        return exit_on_user_error(lambda: self._run(store, no_store, pos_args or []))

    def _run(self, store_url: str, no_store: bool, pos_args: list[str]) -> int:
        if pos_args:
            raise UserError(f"doit verify takes no positional arguments (got {' '.join(pos_args)})")
        planner = loaded_planner()
        store = None if no_store else (guarded(store_url, planner.spec.project) if store_url else planner.store)
        got = verify_all(planner, store)
        for p in got.problems:
            self.outstream.write(p + "\n")
        where = f" and {got.entries} entr{'y' if got.entries == 1 else 'ies'} of {store.url}" if store is not None \
            else ""
        self.outstream.write(f"verified {got.dirs} engine dir(s){where}: "
                             + (f"{len(got.problems)} problem(s)\n" if got.problems else "all intact\n"))
        return 1 if got.problems else 0
