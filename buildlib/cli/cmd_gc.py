"""`doit gc`: list (or --remove) engine dirs, checkpoints and store entries no models.yaml entry references."""

from __future__ import annotations

from ..core.errors import UserError
from ..report.gc import collect, human, remove, stop_at
from ..store.open import guarded
from .command import EngineCommand, exit_on_user_error
from .session import loaded_planner

opt_remove = {"name": "remove", "long": "remove", "type": bool, "default": False,
              "help": "delete what is listed (default: a dry run that only lists it)"}
opt_store = {"name": "store", "long": "store", "type": str, "default": "",
             "help": "also collect this store (a path or s3://bucket/prefix). Off by default: a shared store "
                     "serves other branches and checkouts, whose engines this models.yaml does not reference"}


class GcCmd(EngineCommand):
    """Garbage collection of what no current models.yaml entry references."""

    name = "gc"
    needs_tasks = False  # reads the plan, not doit tasks: the loader skips building them
    doc_purpose = "list (or --remove) engine dirs, checkpoints and store entries that models.yaml no longer uses"
    doc_usage = "[--remove] [--store URL]"
    doc_description = (
        "Unreferenced = an engine dir <engines>/<model>/<arch>/<tpN-ppM> that is no current engine\n"
        "(its model, arch or parallel config left models.yaml), a converted checkpoint in\n"
        "<work_dir>/checkpoints/<key> no current engine converts to, a generated checkpoint no model\n"
        "uses, and with --store URL a store entry whose key is no current engine's key. A stale engine\n"
        "that is still in models.yaml is not garbage: the next build replaces it.\n"
        "Dry run by default; --remove deletes (engine dirs under their build lock).")
    cmd_options = (opt_remove, opt_store)

    def _execute(self, remove: bool, store: str, pos_args: list[str] | None = None) -> int:
        return exit_on_user_error(lambda: self._run(remove, store, pos_args or []))

    def _run(self, do_remove: bool, store_url: str, pos_args: list[str]) -> int:
        if pos_args:
            raise UserError(f"doit gc takes no positional arguments (got {' '.join(pos_args)}); "
                            "use --remove to delete, --store URL to include a store")
        planner = loaded_planner()
        store = guarded(store_url, planner.spec.project) if store_url else None
        items = collect(planner, store)
        w = max((len(g.kind) for g in items), default=0)
        for g in items:
            if do_remove:
                remove(g, store, stop_at(planner, g))
            verb = "removed" if do_remove else "would remove"
            self.outstream.write(f"{verb} {g.kind:<{w}} {human(g.size):>10}  {g.where}  ({g.why})\n")
        total = sum(g.size or 0 for g in items)
        if not items:
            self.outstream.write("nothing to collect: every engine dir and checkpoint is referenced\n")
        elif do_remove:
            self.outstream.write(f"{len(items)} item(s) removed, {human(total)} freed\n")
        if do_remove:
            self.outstream.write(f"stat cache: {planner.cache.prune()} entries for files that no longer exist "
                                 "dropped\n")
        else:
            self.outstream.write(f"{len(items)} item(s), {human(total)} would be freed; "
                                 "run `doit gc --remove` to delete them\n")
        return 0
