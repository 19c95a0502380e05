"""kas/dev.yml and kas/ci.yml against kas's own JSON schema; pinned commits; no secrets."""

from __future__ import annotations

import json
import os
import re

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KAS_FILES = ["kas/dev.yml", "kas/ci.yml"]

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")


def kas_schema() -> dict:
    kas = pytest.importorskip("kas")
    path = os.path.join(os.path.dirname(kas.__file__), "schema-kas.json")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def load(name: str) -> dict:
    with open(os.path.join(ROOT, name), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.mark.parametrize("name", KAS_FILES)
def test_valid_against_kas_schema(name: str) -> None:
    jsonschema.validate(load(name), kas_schema())


def test_schema_rejects_a_broken_file() -> None:
    broken = load("kas/dev.yml")
    broken["repos"]["bitbake"]["commit"] = 42
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, kas_schema())


def test_remote_layers_are_pinned_to_commits() -> None:
    repos = load("kas/dev.yml")["repos"]
    remote = {name: r for name, r in repos.items() if r and r.get("url")}
    assert {"bitbake", "openembedded-core", "meta-openembedded", "meta-swupdate"} <= set(remote)
    for name, repo in remote.items():
        assert re.fullmatch(r"[0-9a-f]{40}", repo.get("commit", "")), name


def test_modes_and_no_secrets() -> None:
    dev = "\n".join(load("kas/dev.yml")["local_conf_header"].values())
    ci = load("kas/ci.yml")
    ci_conf = "\n".join(ci["local_conf_header"].values())
    assert 'HSMSIGN_MODE = "development"' in dev
    assert 'HSMSIGN_MODE = "production"' in ci_conf and 'INHERIT += "hsmsign"' in ci_conf
    assert "pin-source=file:${HSM_PIN_FILE}" in ci_conf
    for name in KAS_FILES:
        with open(os.path.join(ROOT, name), encoding="utf-8") as fh:
            text = fh.read()
        assert "pin-value" not in text and "PRIVATE KEY" not in text
        assert not re.search(r"^\s*HSM_PIN\s*:", text, re.M), "a PIN in kas env: lands in the datastore"
