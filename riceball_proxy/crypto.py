"""Encryption at rest for provider API keys, and hashing of gateway API keys.

Provider keys are encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under ``RICEBALL_SECRET_KEY``.
That variable may hold several comma-separated keys: the first encrypts, all decrypt, so a key can
be rotated without losing what the old one protects. With no variable, a key is generated once into
``$RICEBALL_DATA_DIR/secret.key`` with mode 0600.
"""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from riceball_proxy.settings import Settings, SettingsError

SECRET_KEY_FILE = "secret.key"
#: Every gateway key starts with this; 32 random bytes follow (256 bits).
API_KEY_PREFIX = "sk-"
#: How many characters of a key are kept in clear to recognise it in lists.
DISPLAY_PREFIX_LENGTH = 11


class SecretBox:
    """Encrypts and decrypts short secrets (provider API keys) with the gateway's secret key."""

    def __init__(self, keys: list[str]):
        try:
            self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
            self._primary = base64.urlsafe_b64decode(keys[0].encode())
        except (ValueError, TypeError, IndexError):
            raise SettingsError(
                "RICEBALL_SECRET_KEY must be Fernet keys (32 url-safe base64 bytes), comma-separated"
            ) from None

    def derive(self, purpose: str, length: int = 32) -> bytes:
        """A key for another use (session cookies, setup tokens), derived from the primary key with HKDF."""
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose.encode()).derive(self._primary)

    def encrypt(self, plaintext: str) -> bytes:
        """Return an authenticated ciphertext of ``plaintext``."""
        return self._fernet.encrypt(plaintext.encode())

    def rotate(self, token: bytes) -> bytes:
        """``token`` encrypted anew under the primary key (it may have been under any of the keys)."""
        try:
            return self._fernet.rotate(bytes(token))
        except InvalidToken:
            raise ValueError("the secret cannot be decrypted with RICEBALL_SECRET_KEY") from None

    def decrypt(self, token: bytes) -> str:
        """Return the plaintext of ``token``; raises ValueError when no key opens it."""
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken:
            raise ValueError("the secret cannot be decrypted with RICEBALL_SECRET_KEY") from None


def load_secret_box(settings: Settings) -> SecretBox:
    """The SecretBox for these settings, generating the key file on first use."""
    if settings.secret_key:
        return SecretBox([key.strip() for key in settings.secret_key.split(",") if key.strip()])
    return SecretBox([_read_or_create_key_file(Path(settings.data_dir) / SECRET_KEY_FILE)])


def _read_or_create_key_file(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # created 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
            try:
                # link() refuses to replace an existing file: of two processes, the first key wins.
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    if path.stat().st_mode & 0o077:
        raise SettingsError(f"{path} must be readable by its owner only (chmod 600)")
    return path.read_text().strip()


def generate_api_key() -> str:
    """A new gateway API key: ``sk-`` followed by 256 random bits, url-safe base64."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    """The SHA-256 digest under which a key is stored and looked up."""
    return hashlib.sha256(key.encode()).digest()


def display_prefix(key: str) -> str:
    """The start of a key that lists show so that people can tell their keys apart."""
    return key[:DISPLAY_PREFIX_LENGTH]


_password_hasher = None


def _hasher():
    global _password_hasher
    if _password_hasher is None:
        from argon2 import PasswordHasher

        _password_hasher = PasswordHasher()  # argon2id with the library's current parameters
    return _password_hasher


#: The shortest password an admin may choose (the panel and the CLI alike).
MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    """An argon2id hash of an admin password, salt and parameters included."""
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``."""
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
