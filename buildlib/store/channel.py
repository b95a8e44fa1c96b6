"""Release channels in the store: which engines a channel (`canary`, `prod`, any name) serves, per model.

    <store>/[.signers/<identity>/].channels/<channel>/<model>/<id>.json   one release (and its <id>.json.sig)

A release is one immutable record, never rewritten: ids are UTC timestamps with a random tail, so they sort by time
and two releases at once never write the same name. The channel serves what its newest record says; a rollback is a
new record holding the engines of the one before (`rollback_of` names the release it undoes), so history is kept
and every change is an append. With no pointer to update, a reader never sees a half-written state.

Trust (buildlib.store.guarded): a signing run signs each record (OpenSSF Model Signing, as entries are) into its
signer's namespace. A reader with a trust policy takes records only from trusted signers, and refuses, rather than
skips, a newest record that does not verify or that names another channel, model or id than its place: a planted or
edited record stops the reader with the reason instead of silently serving something older. What a writer to the
store can still do is delete the newest records, so that an older trusted one is in force again: nodes keep the
newest id they applied and refuse to go back (buildlib.rollout.fetch).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from ..core.errors import UserError
from ..core.model import NAME_RE
from .base import Store
from .guarded import GuardedStore
from .signing import Verifier

CHANNELS = ".channels"
FORMAT = 1


class ChannelError(UserError):
    """A channel's record cannot be used: refused by the trust policy, malformed, or absent where one is needed."""


@dataclass(frozen=True)
class Release:
    """One record: `engines` are dicts of engine (id), arch, gpu_name, tp, pp, gpus, backend, key, size, signer,
    validated (list of {gpu, driver, by, at})."""

    channel: str
    model: str
    id: str
    released: str
    by: dict[str, Any]
    previous: str | None
    engines: tuple[dict[str, Any], ...]
    rollback_of: str | None = None
    signer: str | None = None  # who signed it, as the reader's policy names them (None: not authenticated)
    where: str = ""  # the record's URL

    def to_json(self) -> bytes:
        body = {"format": FORMAT, "channel": self.channel, "model": self.model, "id": self.id,
                "released": self.released, "by": self.by, "previous": self.previous, "rollback_of": self.rollback_of,
                "engines": list(self.engines)}
        return json.dumps(body, sort_keys=True, indent=1).encode()

    @property
    def keys(self) -> set[str]:
        return {e["key"] for e in self.engines}


def check_name(what: str, name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UserError(f"{what} {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or digit)")
    return name


def new_id() -> str:
    """`20261206T012345.678901Z-1a2b3c`: sorts by time; the tail keeps two releases in one microsecond apart."""
    t = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z-{os.urandom(3).hex()}"


def _prefix(channel: str, model: str) -> str:
    return f"{CHANNELS}/{check_name('channel', channel)}/{check_name('model', model)}"


def _parse(data: bytes, where: str, channel: str, model: str, rid: str) -> tuple[Release | None, str | None]:
    """The record at `where`, or why it is not a record of this place (channel, model and id are checked against
    where it lies: a signed record copied elsewhere is refused)."""
    try:
        d = json.loads(data)
        engines = tuple(d["engines"])
        if d.get("format") != FORMAT or not all(isinstance(e, dict) and isinstance(e.get("key"), str) for e in engines):
            return None, f"not a release record of format {FORMAT}"
        r = Release(d["channel"], d["model"], d["id"], str(d["released"]), dict(d.get("by") or {}),
                    d.get("previous"), engines, d.get("rollback_of"), where=where)
    except (ValueError, KeyError, TypeError) as e:
        return None, f"not a release record ({type(e).__name__}: {e})"
    if (r.channel, r.model, r.id) != (channel, model, rid):
        return None, f"it is release {r.id} of {r.model} in channel {r.channel}, copied here"
    return r, None


def _ids(scope: Store, prefix: str) -> list[str]:
    return [n[:-5] for n in scope._list_notes(prefix) if n.endswith(".json")]


def history(store: GuardedStore, channel: str, model: str) -> list[tuple[str, Verifier | None, Store]]:
    """Every release id of (channel, model) where a reader may take records from, newest first."""
    prefix = _prefix(channel, model)
    found = [(rid, v, scope) for v, scope in store.record_sources() for rid in _ids(scope, prefix)]
    return sorted(found, key=lambda t: t[0], reverse=True)


def _load(store: GuardedStore, channel: str, model: str, rid: str, v: Verifier | None, scope: Store) -> Release:
    name = f"{_prefix(channel, model)}/{rid}.json"
    where = f"{scope.url}/{name}"
    data, why = store.read_record(v, scope, name)
    if data is None:
        raise ChannelError(f"release record {where} vanished while read; run again")
    release, bad = _parse(data, where, channel, model, rid) if why is None else (None, why)
    if release is None:
        raise ChannelError(f"refused release record {where}: {bad}")
    return Release(**{**release.__dict__, "signer": v.name if v is not None else None})


def in_force(store: GuardedStore, channel: str, model: str,
             with_previous: bool = False) -> tuple[Release | None, Release | None]:
    """The release in force (the newest record), checked, and with `with_previous` the one it replaced (what a
    rollback restores; None if no readable namespace holds it), from one listing of the history. (None, None) when
    the channel never served the model. Under a policy, a channel whose records are all outside the trusted
    namespaces is refused (ChannelError) with where they are."""
    found = history(store, channel, model)
    if found:
        now = _load(store, channel, model, *found[0])
        prev = next((_load(store, channel, model, *f) for f in found if f[0] == now.previous), None) \
            if with_previous and now.previous else None
        return now, prev
    prefix = _prefix(channel, model)
    untrusted = [f"{s.url}/{prefix}/{rid}.json" for s in store.untrusted_sources() for rid in _ids(s, prefix)]
    if untrusted:
        raise ChannelError(f"refused channel {channel} of {model}: its only records are not signed by a key the "
                           f"trust policy names ({max(untrusted)})")
    return None, None


def current(store: GuardedStore, channel: str, model: str) -> Release | None:
    """The release in force (see in_force)."""
    return in_force(store, channel, model)[0]


def record(store: GuardedStore, release: Release) -> str:
    """Append a release to the store (signed when the run signs); its URL."""
    name = f"{_prefix(release.channel, release.model)}/{release.id}.json"
    if not store.put_record(name, release.to_json()):
        raise ChannelError(f"store {store.url} is read-only for this run (push: false or BUILDLIB_STORE_PUSH=0): "
                           "release where pushes are allowed")
    return f"{store.url}/{name}"


def channels(store: GuardedStore) -> dict[str, list[str]]:
    """channel -> the models it serves, from every namespace a reader may take records from (names only)."""
    out: dict[str, set[str]] = {}
    for _, scope in store.record_sources():
        for ch in scope.names(CHANNELS):
            out.setdefault(ch, set()).update(scope.names(f"{CHANNELS}/{ch}"))
    return {ch: sorted(models) for ch, models in sorted(out.items())}


def served(store: GuardedStore, with_previous: bool = False) -> dict[str, list[str]]:
    """engine key -> the channels whose release in force serves it (`with_previous`: or the release a rollback
    would restore; what `doit gc` keeps). A record that cannot be read serves nothing here."""
    out: dict[str, set[str]] = {}
    for ch, models in channels(store).items():
        for model in models:
            try:
                rel, prev = in_force(store, ch, model, with_previous)
            except ChannelError:
                continue
            for r in (rel, prev):
                for k in r.keys if r is not None else ():
                    out.setdefault(k, set()).add(ch)
    return {k: sorted(chs) for k, chs in out.items()}
