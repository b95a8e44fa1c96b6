"""`doit verify`: re-check every engine dir and store entry against its manifest (every byte read)."""

from __future__ import annotations

from .command import EngineCommand
from .errors import UserError
from .plugin import exit_on_user_error
from .store import open_store
from .tasks import loaded_planner
from .verify import verify_dir, verify_entry

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
                       "hash to its key; a restore never uses such an entry.")
    cmd_options = (opt_store, opt_no_store)

    def _execute(self, store: str, no_store: bool, pos_args: list[str] | None = None) -> int:
        return exit_on_user_error(lambda: self._run(store, no_store, pos_args or []))

    def _run(self, store_url: str, no_store: bool, pos_args: list[str]) -> int:
        if pos_args:
            raise UserError(f"doit verify takes no positional arguments (got {' '.join(pos_args)})")
        planner = loaded_planner()
        project = planner.spec.project
        problems: list[str] = []
        checked = 0
        for e in planner.engines():
            d = e.dir(project)
            if (d / "manifest.json").exists():
                checked += 1
                problems += verify_dir(d)
        store = None if no_store else (open_store(store_url, project.work_dir) if store_url else planner.store)
        entries = 0
        if store is not None:
            for key in store.keys():  # noqa: SIM118 - Store.keys() lists published entries; a Store is no dict
                entries += 1
                problems += verify_entry(store, key, project.work_dir)
        for p in problems:
            self.outstream.write(p + "\n")
        where = f" and {entries} entr{'y' if entries == 1 else 'ies'} of {store.url}" if store is not None else ""
        self.outstream.write(f"verified {checked} engine dir(s){where}: "
                             + (f"{len(problems)} problem(s)\n" if problems else "all intact\n"))
        return 1 if problems else 0
