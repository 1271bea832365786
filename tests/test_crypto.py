import re
import stat

import pytest
from cryptography.fernet import Fernet

from riceball_proxy import crypto
from riceball_proxy.db import providers
from riceball_proxy.settings import Settings, SettingsError


def test_api_keys_carry_256_random_bits_and_are_stored_as_sha256():
    key = crypto.generate_api_key()
    assert re.fullmatch(r"sk-[A-Za-z0-9_-]{43}", key)  # 43 url-safe base64 characters = 256 bits
    assert crypto.generate_api_key() != key
    assert len(crypto.hash_api_key(key)) == 32
    assert crypto.display_prefix(key) == key[:11]


def test_secret_box_round_trip_and_rotation():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = crypto.SecretBox([old]).encrypt("sk-upstream-secret")
    assert b"sk-upstream-secret" not in token
    rotated = crypto.SecretBox([new, old])
    assert rotated.decrypt(token) == "sk-upstream-secret"
    with pytest.raises(ValueError, match="cannot be decrypted"):
        crypto.SecretBox([new]).decrypt(token)


def test_a_malformed_secret_key_is_a_settings_error(tmp_path):
    with pytest.raises(SettingsError, match="RICEBALL_SECRET_KEY"):
        crypto.load_secret_box(Settings(data_dir=tmp_path, secret_key="not-a-key"))


def test_the_secret_key_file_is_generated_once_with_mode_0600(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    token = crypto.load_secret_box(settings).encrypt("x")
    key_file = tmp_path / "data" / crypto.SECRET_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert crypto.load_secret_box(settings).decrypt(token) == "x"  # the same key, read back
    assert [p.name for p in key_file.parent.iterdir()] == [crypto.SECRET_KEY_FILE]


def test_a_key_file_others_can_read_is_refused(tmp_path):
    settings = Settings(data_dir=tmp_path)
    crypto.load_secret_box(settings)
    (tmp_path / crypto.SECRET_KEY_FILE).chmod(0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        crypto.load_secret_box(settings)


def test_passwords_are_argon2_hashes():
    hashed = crypto.hash_password("correct horse")
    assert hashed.startswith("$argon2id$")
    assert crypto.verify_password(hashed, "correct horse")
    assert not crypto.verify_password(hashed, "wrong horse")
    assert not crypto.verify_password("not a hash", "correct horse")


async def test_no_plaintext_provider_key_is_in_the_database(db, secret_key):
    box = crypto.SecretBox([secret_key])
    upstream_key = "sk-live-" + "Q" * 40
    created = await providers.create(
        db, name="openai", type="openai", base_url="https://api.openai.com/v1", api_key_encrypted=box.encrypt(upstream_key)
    )
    dump = await db.fetchval(
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM providers) t"
    )
    raw = await db.fetchval("SELECT api_key_encrypted FROM providers WHERE id = $1", created.id)
    assert upstream_key not in dump
    assert upstream_key.encode() not in raw
    assert box.decrypt((await providers.get(db, created.id)).api_key_encrypted) == upstream_key
    assert upstream_key not in repr(created)


def test_derived_keys_differ_by_purpose_and_are_stable():
    key = Fernet.generate_key().decode()
    box = crypto.SecretBox([key])
    assert box.derive("a") == crypto.SecretBox([key]).derive("a")
    assert box.derive("a") != box.derive("b")
    assert len(box.derive("a")) == 32
    assert box.derive("a") != crypto.SecretBox([Fernet.generate_key().decode()]).derive("a")
