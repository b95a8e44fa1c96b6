"""Signatures in the field's standard format: OpenSSF Model Signing (the `model-signing` library, `enginebuild[sign]`).

A signed store entry holds `model.sig` beside its files: a Sigstore bundle whose DSSE envelope carries an in-toto
statement listing every file of the entry with its SHA-256 (file serialization, the library's default, so the
library's own CLI verifies it unchanged: `model_signing verify key DIR --signature DIR/model.sig --public_key K`).
xxh3, what manifests use to find changes fast, is not collision-resistant; a signature over it would not bind the
bytes, so signing hashes every file again, with SHA-256. Files a host adds to an engine dir later (its validation
record and log) are left out of the signature by name (the statement records them as ignored paths).

Identities: an EC key is known by the SHA-256 of its public key (SubjectPublicKeyInfo, DER), 16 hex digits; a
certificate by its public key the same way; Sigstore keyless signing (ambient OIDC credentials in CI) by the
identity the trust policy names. Entries are kept per signer (`.signers/<identity>/` in the store,
buildlib.store.guarded), so an entry planted by anyone with write access never takes a trusted signer's place.

The library (and sigstore, cryptography) is imported only where something is signed or verified: never on a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.manifest import SIGNATURE

# Written into an engine dir by a host after the entry was made (its own validation): never signed, never restored.
UNSIGNED = ("validation.json", "validate.log", SIGNATURE)
SIGSTORE = "sigstore"


class SigningUnavailable(UserError):
    """A signature is configured but cannot be made or checked here (library missing, unreadable key)."""


def _library() -> Any:
    try:
        import model_signing
        from model_signing import hashing, signing, verifying  # noqa: F401 - the submodules used below
    except ImportError:
        raise SigningUnavailable("signed stores need the model-signing library: pip install 'enginebuild[sign]'") \
            from None
    return model_signing


def preload() -> None:
    """Import the library in the background (0.35 s on this VM: sigstore, cryptography, pydantic) while a restore
    streams the entry it will check; the verifier's own import then waits for it under the import lock."""
    def load() -> None:
        with contextlib.suppress(SigningUnavailable):
            _library()

    threading.Thread(target=load, name="buildlib-model-signing-import", daemon=True).start()


def key_identity(pem: Path, private: bool = False) -> str:
    """`key-<16 hex>`: the SHA-256 of the key's public half (DER SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization

    try:
        data = pem.read_bytes()
        key = serialization.load_pem_private_key(data, None).public_key() if private \
            else serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as e:
        raise SigningUnavailable(f"{pem}: not a readable {'private' if private else 'public'} key in PEM ({e})") \
            from None
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "key-" + hashlib.sha256(der).hexdigest()[:16]


def certificate_identity(pem: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
    except (OSError, ValueError) as e:
        raise SigningUnavailable(f"{pem}: not a readable certificate in PEM ({e})") from None
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "cert-" + hashlib.sha256(der).hexdigest()[:16]


def _hashing(lib: Any, ignore: tuple[str, ...] = ()) -> Any:
    return lib.hashing.Config().set_ignored_paths(paths=[*UNSIGNED, *ignore])


@dataclass(frozen=True)
class Signer:
    """How this run signs what it pushes (StoreSpec.sign)."""

    spec: tuple[tuple[str, str], ...]

    @property
    def identity(self) -> str:
        kinds = dict(self.spec)
        if SIGSTORE in kinds:
            return SIGSTORE
        if "certificate" in kinds:
            return certificate_identity(Path(kinds["certificate"]))
        return key_identity(Path(kinds["key"]), private=True)

    def _config(self, ignore: tuple[str, ...] = ()) -> Any:
        lib = _library()
        kinds = dict(self.spec)
        config = lib.signing.Config()
        if SIGSTORE in kinds:
            config.use_sigstore_signer(use_ambient_credentials=True)
        elif "certificate" in kinds:
            config.use_certificate_signer(private_key=kinds["key"], signing_certificate=kinds["certificate"],
                                          certificate_chain=[v for k, v in self.spec if k == "chain"])
        else:
            config.use_elliptic_key_signer(private_key=kinds["key"])
        return config.set_hashing_config(_hashing(lib, ignore))

    def sign(self, path: Path, signature: Path | None = None, ignore: tuple[str, ...] = ()) -> Path:
        """Sign a dir (every file but UNSIGNED and `ignore`: what is not sent) or a single file; the bundle is
        written atomically to `signature` (default: <dir>/model.sig, or <file>.sig)."""
        sig = signature or (path / SIGNATURE if path.is_dir() else path.with_name(path.name + ".sig"))
        tmp = sig.with_name(f".{sig.name}.{os.getpid()}.tmp")
        try:
            self._config(ignore).sign(path, tmp)
            os.replace(tmp, sig)
        except SigningUnavailable:
            raise
        except Exception as e:
            tmp.unlink(missing_ok=True)
            raise SigningUnavailable(f"cannot sign {path}: {e}") from None
        return sig


@dataclass(frozen=True)
class Verifier:
    """One entry of a trust policy (StoreSpec.trust): who it trusts, and how to check a signature against it."""

    spec: tuple[tuple[str, str], ...]

    @property
    def identity(self) -> str:
        kinds = dict(self.spec)
        if "sigstore_identity" in kinds:
            return SIGSTORE
        if "certificate_chain" in kinds:
            return "cert-chain-" + hashlib.sha256("\0".join(v for _, v in self.spec).encode()).hexdigest()[:16]
        return key_identity(Path(kinds["key"]))

    @property
    def name(self) -> str:
        """How a person knows the signer: the key file's name, or the Sigstore identity."""
        kinds = dict(self.spec)
        if "sigstore_identity" in kinds:
            return kinds["sigstore_identity"]
        return Path(self.spec[0][1]).stem

    def _config(self) -> Any:
        lib = _library()
        kinds = dict(self.spec)
        config = lib.verifying.Config()
        if "sigstore_identity" in kinds:
            config.use_sigstore_verifier(identity=kinds["sigstore_identity"], oidc_issuer=kinds["sigstore_issuer"])
        elif "certificate_chain" in kinds:
            config.use_certificate_verifier(certificate_chain=[v for _, v in self.spec])
        else:
            config.use_elliptic_key_verifier(public_key=kinds["key"])
        return config.set_hashing_config(_hashing(lib))

    def check(self, path: Path, signature: Path) -> str | None:
        """None when `signature` is this signer's over exactly the files of `path` (a dir, or one file); else why
        not, in a few words."""
        if not signature.is_file():
            return "unsigned (no signature)"
        try:
            self._config().verify(path, signature)
        except SigningUnavailable:
            raise
        except Exception as e:  # the library raises ValueError and the verifiers' own errors
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            if first.lower().startswith("key mismatch"):
                return f"signed by another key, not {self.name}"
            if "mismatch" in first.lower():
                return f"its signature does not match its files ({first[:160]})"
            return f"not signed by {self.name} ({first[:160]})"
        return None


def check_file(verifier: Verifier, data: bytes, name: str, signature: bytes) -> str | None:
    """Verifier.check for a small record held in memory (a validation record): written to a temp dir under its own
    name, since the signature's statement names the file."""
    d = Path(tempfile.mkdtemp(prefix="buildlib-record-"))
    try:
        (d / name).write_bytes(data)
        (d / f"{name}.sig").write_bytes(signature)
        return verifier.check(d / name, d / f"{name}.sig")
    finally:
        shutil.rmtree(d, ignore_errors=True)
