"""The store as a run uses it: read-only or not, signing what it pushes or not, and with a trust policy or not.

Anyone who can write to a store can make an entry whose key recomputes and whose files match their xxh3 digests
(xxh3 is fast, not collision-resistant): self-consistency is not authenticity. So:

- Signed entries live per signer: `<store>/.signers/<identity>/<key>/` (buildlib.store.signing: an EC key is known
  by its public key's hash), each with `model.sig` over every file. A planted entry can sit in any namespace, but
  it cannot carry a trusted signature, and a trusted push replaces whatever stands in its own namespace without
  one: the first push of a key no longer decides what readers get.
- With a trust policy, a reader restores an entry only from a trusted signer's namespace and only when the
  signature verifies against that signer over exactly the files restored; everything else is refused with the
  entry and the reason (Refused), and the engine is built (or reported blocked) instead. Refit sources come
  through the same pull.
- Without a policy, behaviour is as before: the top level first, then any signer's entries, checked for
  self-consistency only (`doit plan` says the entries are not authenticated).
- A read-only run (push: false) never writes: no entry, no note, no removal of a corrupt entry.
- Validation records travel as small signed notes in the signer's namespace (`.validation/<key>/<gpu>.json` and
  its `.sig`); the entry itself stays immutable.

Optimization: a run with no signer and no policy checks and pulls exactly as the plain store does (one `has` on the
top level); signer namespaces are listed once per process, and only when the top level lacks a key.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..core.manifest import SIGNATURE, Manifest
from .base import Store, StoreCorrupt, entry_files
from .settings import StoreSettings
from .signing import UNSIGNED, Signer, Verifier, check_file, preload

SIGNERS = ".signers"
VALIDATIONS = ".validation"


class Refused(StoreCorrupt):
    """No entry of the key passed the trust policy; `reasons` has one line per entry refused."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def _clear(d: Path) -> None:
    for p in list(d.iterdir()):
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


class GuardedStore(Store):
    """A Store over another (`inner`), applying a run's StoreSettings (see the module's docstring)."""

    def __init__(self, inner: Store, settings: StoreSettings):
        self.inner = inner
        self.url = inner.url
        self.writable = settings.push
        self.signer = Signer(settings.sign) if settings.sign else None
        self.verifiers = [Verifier(t) for t in settings.trust]
        self._identities: list[str] | None = None

    # -- namespaces
    def scope(self, identity: str) -> Store:
        return self.inner.scoped(f"{SIGNERS}/{identity}")

    def _own(self) -> Store:
        """Where this run writes: its signer's namespace when it signs, else the top level."""
        return self.scope(self.signer.identity) if self.signer is not None else self.inner

    def identities(self) -> list[str]:
        """The signers whose entries the store holds (listed once)."""
        if self._identities is None:
            self._identities = self.inner.names(SIGNERS)
        return self._identities

    def scopes(self) -> Iterator[tuple[str, Store]]:
        """(identity, store) of the top level ("") and of every signer's namespace: for verify and gc."""
        yield "", self.inner
        for ident in self.identities():
            yield ident, self.scope(ident)

    def _readable(self) -> Iterator[tuple[Verifier | None, Store]]:
        """Where a reader may take an entry from: the trusted signers' namespaces under a policy, else anywhere."""
        if self.verifiers:
            for v in self.verifiers:
                yield v, self.scope(v.identity)
            return
        yield None, self.inner
        for ident in self.identities():
            yield None, self.scope(ident)

    # -- the protocol
    def has(self, key: str) -> bool:
        return any(s.has(key) for _, s in self._readable())

    def pull(self, key: str, dest: Path, pulled: Callable[[Path], None] | None = None) -> Manifest:
        """From the first namespace whose entry passes: under a policy, its signature must verify against that
        signer over exactly the files pulled (else it is refused, dest emptied, and the next one tried). Refused
        when a policy refused every entry of the key (the untrusted ones are named too); KeyError when none.
        `pulled(dest)` is called once the files are there, before the signature is checked (a caller's fsync
        overlaps the check)."""
        reasons: list[str] = []
        if self.verifiers:
            preload()  # overlapped with the pull below
        for v, s in self._readable():
            if not s.has(key):
                continue
            try:
                m = s.pull(key, dest)
            except StoreCorrupt as e:
                if v is None:
                    raise
                reasons.append(f"{s.url}/{key}: {e}")
                _clear(dest)
                continue
            if pulled is not None:
                pulled(dest)
            if v is None:
                return m
            why = v.check(dest, dest / SIGNATURE)
            if why is None:
                return m
            reasons.append(f"{s.url}/{key}: {why}")
            _clear(dest)
        if self.verifiers:
            trusted = {v.identity for v in self.verifiers}
            if self.inner.has(key):
                reasons.append(f"{self.url}/{key}: unsigned (no signature; the trust policy takes signed entries only)")
            reasons += [f"{self.scope(i).url}/{key}: signed by {i}, which the trust policy does not name"
                        for i in self.identities() if i not in trusted and self.scope(i).has(key)]
        if reasons:
            raise Refused(reasons)
        raise KeyError(key)

    def push(self, key: str, src: Path) -> bool:
        """Read-only: nothing (False). Signing: `src` is signed (src/model.sig) and pushed to the signer's namespace,
        replacing an entry there that the signer did not sign. Else: the plain push."""
        if not self.writable:
            return False
        if self.signer is None:
            return self.inner.push(key, src)
        sent = {rel for rel, _ in entry_files(src, key)}
        unsent = tuple(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file() and
                       str(p.relative_to(src)) not in sent and p.name not in UNSIGNED)
        self.signer.sign(src, ignore=unsent)  # exactly what is sent: a pull restores those, and only those
        scope = self.scope(self.signer.identity)
        if scope.has(key):
            if self._signed_by_me(scope, key):
                return False
            scope.remove(key)  # planted: the trusted push takes its place
        return scope.push(key, src)

    def _signed_by_me(self, scope: Store, key: str) -> bool:
        """Whether the entry in this run's own namespace verifies against this run's key (pulled to check; only an
        EC key can say so offline: any other signer replaces what stands there)."""
        key_file = dict(self.signer.spec).get("key") if self.signer is not None else None
        if key_file is None or "certificate" in dict(self.signer.spec):  # type: ignore[union-attr]
            return False
        with tempfile.TemporaryDirectory(prefix="buildlib-check-") as d:
            entry, pub = Path(d) / "entry", Path(d) / "self.pub"
            entry.mkdir()
            pub.write_bytes(_public_pem(Path(key_file)))
            try:
                scope.pull(key, entry)
            except (KeyError, StoreCorrupt):
                return False
            return Verifier((("key", str(pub)),)).check(entry, entry / SIGNATURE) is None

    def keys(self) -> Iterator[str]:
        seen: set[str] = set()
        for _, s in self._readable():
            for k in s.keys():  # noqa: SIM118 - Store.keys() lists published entries; a Store is no dict
                if k not in seen:
                    seen.add(k)
                    yield k

    def remove(self, key: str) -> None:
        """A corrupt entry goes from where this run would write its own (nothing, when read-only)."""
        if self.writable:
            self._own().remove(key)

    def entry_names(self, key: str) -> list[str]:
        return next((s.entry_names(key) for _, s in self._readable() if s.has(key)), [])

    def entry_size(self, key: str) -> int | None:
        return next((s.entry_size(key) for _, s in self._readable() if s.has(key)), None)

    def scoped(self, sub: str) -> Store:
        return self.inner.scoped(sub)

    def names(self, sub: str) -> list[str]:
        return self.inner.names(sub)

    def _get_note(self, name: str) -> bytes | None:
        return next((d for _, s in self._readable() if (d := s._get_note(name)) is not None), None)

    def _put_note(self, name: str, data: bytes) -> None:
        if self.writable:
            self._own()._put_note(name, data)

    # -- signed records (validation records, release channels)
    def put_record(self, name: str, data: bytes) -> bool:
        """Write a small record beside the entries, whole: into this run's signer's namespace with its signature
        (`name.sig`, written first) when the run signs, else at the top level. False (nothing written) when
        read-only."""
        if not self.writable:
            return False
        if self.signer is None:
            self.inner._put_note(name, data)
            return True
        scope = self.scope(self.signer.identity)
        with tempfile.TemporaryDirectory(prefix="buildlib-record-") as d:
            path = Path(d) / name.rpartition("/")[2]
            path.write_bytes(data)
            scope._put_note(f"{name}.sig", self.signer.sign(path).read_bytes())
            scope._put_note(name, data)
        return True

    def record_sources(self) -> list[tuple[Verifier | None, Store]]:
        """Where records may be read from, as for entries: the trusted signers' namespaces under a policy (each
        with its verifier), else the top level and every signer's (no verifier)."""
        return list(self._readable())

    def untrusted_sources(self) -> list[Store]:
        """Under a policy, the namespaces it does not name (the top level first): said when they alone hold one."""
        trusted = {v.identity for v in self.verifiers}
        return [self.inner, *(self.scope(i) for i in self.identities() if i not in trusted)] if self.verifiers else []

    @staticmethod
    def read_record(verifier: Verifier | None, scope: Store, name: str) -> tuple[bytes | None, str | None]:
        """(data, None) of a record that passes (`verifier` None: no policy, nothing to check); (data, why) of
        one refused; (None, None) when there is none."""
        data = scope._get_note(name)
        if data is None or verifier is None:
            return data, None
        sig = scope._get_note(f"{name}.sig")
        if sig is None:
            return data, "unsigned (no signature; the trust policy takes signed records only)"
        return data, check_file(verifier, data, name.rpartition("/")[2], sig)

    def push_validation(self, key: str, record: dict[str, Any]) -> bool:
        """Publish a signed validation record of entry `key` (writable, signing runs only); True if written."""
        if self.signer is None:
            return False
        name = _slug(str(record.get("gpu") or record.get("arch") or "host")) + ".json"
        return self.put_record(f"{VALIDATIONS}/{key}/{name}", json.dumps(record, sort_keys=True, indent=1).encode())

    def validations(self, key: str) -> list[tuple[dict[str, Any], str]]:
        """(record, signer name) of every validation record of `key` a trusted signer signed (a policy is needed:
        an unauthenticated record vouches for nothing)."""
        out = []
        for v in self.verifiers:
            scope = self.scope(v.identity)
            for name in scope._list_notes(f"{VALIDATIONS}/{key}"):
                if not name.endswith(".json"):
                    continue
                data, why = self.read_record(v, scope, f"{VALIDATIONS}/{key}/{name}")
                if data is None or why is not None:
                    continue
                try:
                    record = json.loads(data)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("key") == key:
                    out.append((record, v.name))
        return out


def _public_pem(private_key: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_key.read_bytes(), None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "host"
