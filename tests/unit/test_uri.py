"""RFC 7512 URI parsing, printing and redaction (no token needed)."""

from __future__ import annotations

import pytest
from hsmsign.errors import ConfigError, HsmsignError
from hsmsign.uri import PATH_ATTRIBUTES, Pkcs11Uri, parse, pin_problems, redact
from hypothesis import given, settings
from hypothesis import strategies as st


def test_every_path_and_query_attribute_parses() -> None:
    text = (
        "pkcs11:token=acme%20prod;manufacturer=Nitrokey;serial=DENK0100123;model=PKCS%2315%20emulated;"
        "library-manufacturer=OpenSC%20Project;library-description=OpenSC%20smartcard%20framework;"
        "library-version=0.23;slot-description=Nitrokey%20HSM;slot-manufacturer=Nitrokey;slot-id=3;"
        "object=fw%3Bsigning;id=%01%ff;type=private"
        "?pin-source=file:/run/secrets/hsm-pin&module-name=opensc-pkcs11&module-path=/usr/lib/opensc-pkcs11.so"
    )
    uri = parse(text)
    assert uri.token == "acme prod"
    assert uri.manufacturer == "Nitrokey"
    assert uri.serial == "DENK0100123"
    assert uri.model == "PKCS#15 emulated"
    assert uri.library_manufacturer == "OpenSC Project"
    assert uri.library_description == "OpenSC smartcard framework"
    assert uri.library_version == "0.23"
    assert uri.slot_description == "Nitrokey HSM"
    assert uri.slot_manufacturer == "Nitrokey"
    assert uri.slot_id == 3
    assert uri.object == "fw;signing"
    assert uri.id == b"\x01\xff"
    assert uri.type == "private"
    assert uri.pin_source == "file:/run/secrets/hsm-pin"
    assert uri.module_name == "opensc-pkcs11"
    assert uri.module_path == "/usr/lib/opensc-pkcs11.so"
    # printing and parsing again gives the same URI (percent-encoding both ways)
    assert parse(uri.format(keep_secrets=True)) == uri


def test_pin_value_is_redacted_everywhere_it_is_printed() -> None:
    uri = parse("pkcs11:token=t;object=k?pin-value=s3cr3t-0000")
    assert uri.pin_value == "s3cr3t-0000"
    for shown in (str(uri), uri.redacted(), repr(uri), uri.identity()):
        assert "s3cr3t" not in shown
    assert "pin-value=REDACTED" in uri.redacted()
    assert "s3cr3t" not in redact("pkcs11:token=t;object=k?pin-value=s3cr3t-0000")
    # even a URI that does not parse is redacted for messages
    assert "s3cr3t" not in redact("pkcs11:token=t;broken?pin-value=s3cr3t-0000")


def test_identity_drops_how_to_reach_the_key_but_keeps_which_key() -> None:
    a = parse("pkcs11:token=t;object=k?pin-source=file:/a&module-path=/x.so")
    b = parse("pkcs11:token=t;object=k?pin-source=file:/b")
    c = parse("pkcs11:token=t;object=other")
    assert a.identity() == b.identity() == "pkcs11:token=t;object=k"
    assert c.identity() != a.identity()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("token=x", "must start with 'pkcs11:'"),
        ("pkcs11:token", "has no '='"),
        ("pkcs11:token=a;token=b", "appears twice"),
        ("pkcs11:object=%zz", "percent-encoding"),
        ("pkcs11:type=secret", "type=secret"),
        ("pkcs11:slot-id=abc", "slot-id"),
        ("pkcs11:slot-id=%C2%B2", "slot-id"),  # "²": str.isdigit() takes it, int() does not
        ("pkcs11:slot-id=%D9%A1", "slot-id"),  # an Arabic-Indic 1, which int() reads
        ("pkcs11:library-version=one", "library-version"),
        ("pkcs11:library-version=%D9%A1.2", "library-version"),  # \d would take an Arabic-Indic 1
        ("pkcs11:library-version=1%0A", "library-version"),  # "$" would take a newline after it
        ("pkcs11:pin-source=file:/x", "belongs after '?'"),
        ("pkcs11:token=t?object=k", "belongs before '?'"),
        ("pkcs11:token=t?module-path=relative.so", "absolute"),
        ("pkcs11:token=t#frag", "fragment"),
        ("pkcs11:token=%ff%fe", "UTF-8"),
    ],
)
def test_bad_uris_name_the_bad_part(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert needle in info.value.message
    assert info.value.exit_code == 2


def test_unknown_attributes_are_kept_and_vendor_attributes_ignored() -> None:
    uri = parse("pkcs11:token=t;label=k;x-vendor=1?x-q=2&frobnicate=3")
    assert ("path", "label", "k") in uri.unknown
    assert ("query", "frobnicate", "3") in uri.unknown
    assert ("path", "x-vendor", "1") in uri.vendor
    assert parse(uri.format()) == uri


def test_id_prints_as_percent_encoded_bytes() -> None:
    assert parse("pkcs11:id=%00%7F%80").format() == "pkcs11:id=%00%7f%80"


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    values=st.fixed_dictionaries(
        {},
        optional={
            name: _text
            for name in PATH_ATTRIBUTES
            if name not in ("id", "slot-id", "type", "library-version")
        },
    ),
    key_id=st.one_of(st.none(), st.binary(min_size=1, max_size=16)),
    pin_source=st.one_of(st.none(), _text.map(lambda t: "file:/" + t)),
)
def test_round_trip_any_values(values: dict[str, str], key_id: bytes | None, pin_source: str | None) -> None:
    """Every URI the parser accepts reads back as written. A value that spells a PIN attribute
    (an id of the bytes b"pinvalue", an object "pin-value=...") is refused on purpose, whatever
    attribute holds it (test_uri_pin.py::test_pin_like_attribute_refused_in_production_and_never_shown)."""
    uri = Pkcs11Uri(**{k.replace("-", "_"): v for k, v in values.items()}, id=key_id, pin_source=pin_source)
    text = uri.format()
    refused = [p for p in pin_problems(text) if p.refused_in_development]
    if refused:
        with pytest.raises(ConfigError, match="PIN"):
            parse(text)
        return
    assert parse(text) == uri


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_parser_only_raises_config_errors(text: str) -> None:
    try:
        uri = parse("pkcs11:" + text)
    except HsmsignError as exc:
        assert exc.exit_code == 2
    else:
        assert parse(uri.format(keep_secrets=True)) == uri


@pytest.mark.parametrize(
    "text", ["rsa:\u00b2", "rsa:\u0662\u0660\u0664\u0668", "aes:\u00b2", "aes:\u0662\u0665\u0666"]
)
def test_key_sizes_in_other_digits_than_ascii_are_refused(text: str) -> None:
    """``str.isdigit`` takes "²" (which ``int`` then fails on: it was an internal error) and
    Arabic-Indic digits (which ``int`` reads); a key size is ASCII digits only."""
    from hsmsign.keys import parse_key_type

    with pytest.raises(ConfigError, match="size"):
        parse_key_type(text)


_PERCENT_ALPHABET = st.sampled_from(
    list("%%%aZ09_.-~/:;&=?#+ \t\x00\x7féÄ€\U0001f600\udc80")
    + ["%2", "%zz", "%41", "%e2%82", "%ac", "%C3%A9", "%ff"]
)


@given(st.lists(_PERCENT_ALPHABET, max_size=12).map("".join), st.sampled_from(["", "/", ":;=&@", "é/"]))
@settings(max_examples=3000, deadline=None)
def test_percent_coding_is_urllibs(text: str, safe: str) -> None:
    """hsmsign.uri percent-encodes and decodes without importing urllib.parse, with its results."""
    import urllib.parse

    from hsmsign import uri

    def outcome(call: object, *args: object, **kwargs: object) -> object:
        try:
            return call(*args, **kwargs)  # type: ignore[operator]
        except (UnicodeError, ValueError) as exc:
            return type(exc)

    for errors in ("replace", "strict"):
        assert outcome(uri.unquote, text, errors=errors) == outcome(urllib.parse.unquote, text, errors=errors)
    assert outcome(uri.unquote_to_bytes, text) == outcome(urllib.parse.unquote_to_bytes, text)
    assert outcome(uri.quote, text, safe=safe) == outcome(urllib.parse.quote, text, safe=safe)


def test_a_uri_is_an_immutable_value() -> None:
    one = parse("pkcs11:token=a;object=k?pin-source=file:/p")
    same = parse("pkcs11:object=k;token=a?pin-source=file:/p")
    assert one == same and hash(one) == hash(same) and len({one, same}) == 1
    assert one != one.with_(object="other") and one.with_(object="k") == one
    assert one.with_(pin_source=None).pin_source is None and one.pin_source == "file:/p"
    assert one != "pkcs11:token=a;object=k?pin-source=file:/p"
    with pytest.raises(AttributeError, match="immutable"):
        one.token = "b"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del one.token
    with pytest.raises(TypeError, match="no attribute colour"):
        one.with_(colour="red")
    secret = parse("pkcs11:token=a;object=k?pin-value=1234")
    assert "1234" not in repr(secret) and "1234" not in str(secret)
    import copy
    import pickle

    for made in (copy.copy(one), copy.deepcopy(one), pickle.loads(pickle.dumps(one))):  # noqa: S301
        assert made == one and made.pin_source == "file:/p"
