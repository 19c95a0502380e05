"""SOURCE_DATE_EPOCH is read in one place: FIT timestamps, CMS signing times and cpio mtimes agree."""

from __future__ import annotations

import io

import pytest
from hsmsign.errors import ConfigError
from hsmsign.formats import cpio
from hsmsign.formats.cms import signing_time
from hsmsign.formats.fit.model import source_date
from hsmsign.settings import source_date_epoch


def test_unset_or_empty_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert source_date_epoch() is None
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "")
    assert source_date_epoch() is None


def test_every_user_sees_the_same_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert source_date_epoch() == 1700000000
    assert source_date() == 1700000000
    assert int(signing_time().timestamp()) == 1700000000
    out = io.BytesIO()
    cpio.write(out, [("sw-description", b"x")], crc=False)
    # newc header: magic(6) ino mode uid gid nlink mtime, 8 hex digits each
    assert int(out.getvalue()[6 + 5 * 8 : 6 + 6 * 8], 16) == 1700000000


@pytest.mark.parametrize(
    "bad", ["yesterday", "-5", "1.5", "0x10", "1e9", "99999999999999999999", "\u0661\u0662", "12\u00b2"]
)
def test_a_bad_value_is_one_clear_error_everywhere(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", bad)
    for reader in (source_date_epoch, source_date, signing_time):
        with pytest.raises(ConfigError, match="SOURCE_DATE_EPOCH"):
            reader()
    with pytest.raises(ConfigError, match="SOURCE_DATE_EPOCH"):
        cpio.write(io.BytesIO(), [("sw-description", b"x")], crc=False)
