"""PACS addresses and DICOMweb credentials (ctmil.pacs.address): parsed or refused in one line, never from a URL."""

from __future__ import annotations

import json
import logging
import os
import random
import string

import pytest

from ctmil.pacs.address import Credentials, PacsAddress, dicomweb_credentials, parse_address


@pytest.mark.parametrize("kind, text, expected", [
    ("dicomweb", "https://pacs.example.org/dicom-web/", PacsAddress("dicomweb", url="https://pacs.example.org/dicom-web")),
    ("dicomweb", "http://127.0.0.1:8042/dicom-web", PacsAddress("dicomweb", url="http://127.0.0.1:8042/dicom-web")),
    ("dimse", "PACS@pacs.example.org:104", PacsAddress("dimse", ae_title="PACS", host="pacs.example.org", port=104)),
    ("dimse", "ORTHANC@127.0.0.1:4242", PacsAddress("dimse", ae_title="ORTHANC", host="127.0.0.1", port=4242)),
    ("dimse", "A B@[::1]:11112", None),
    ("dimse", "PACS@[::1]:11112", PacsAddress("dimse", ae_title="PACS", host="::1", port=11112)),
])
def test_addresses(kind, text, expected):
    if expected is None:
        with pytest.raises(ValueError, match="not a DIMSE address"):
            parse_address(kind, text)
    else:
        assert parse_address(kind, text) == expected


@pytest.mark.parametrize("kind, text, message", [
    ("dicomweb", "pacs.example.org/dicom-web", "not an http(s) DICOMweb URL"),
    ("dicomweb", "ftp://pacs/dicom-web", "not an http(s) DICOMweb URL"),
    ("dicomweb", "https://alice:hunter2@pacs/dicom-web", "must not carry a user or password"),
    ("dicomweb", "https://alice@pacs/dicom-web", "must not carry a user or password"),
    ("dicomweb", "https://pacs/dicom-web?access_token=hunter2", "without a query"),
    ("dicomweb", "https://pacs/dicom-web#hunter2", "without a query"),
    ("dimse", "pacs.example.org:104", "not a DIMSE address"),
    ("dimse", "PACS@host:0", "not a DIMSE address"),
    ("dimse", "PACS@host:70000", "not a DIMSE address"),
    ("dimse", "AN_AE_TITLE_TOO_LONG@host:104", "not a DIMSE address"),
    ("wado", "https://pacs", "unknown PACS protocol 'wado'"),
])
def test_bad_addresses_are_one_line_and_hide_passwords(kind, text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        parse_address(kind, text)
    assert "\n" not in str(err.value) and "hunter2" not in str(err.value)


def test_fuzzed_addresses_parse_or_fail_with_value_error():
    rng = random.Random(0)
    alphabet = string.printable + "@:[]/é\x00"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        for kind in ("dicomweb", "dimse"):
            try:
                parse_address(kind, text)
            except ValueError as err:
                assert "\n" not in str(err)  # one line: the address is shown as repr


@pytest.mark.parametrize("env, expected", [
    ({}, Credentials()),
    ({"CTMIL_DICOMWEB_TOKEN": "tok"}, Credentials(token="tok")),
    ({"CTMIL_DICOMWEB_USER": "u", "CTMIL_DICOMWEB_PASSWORD": "p"}, Credentials(user="u", password="p")),
    ({"CTMIL_DICOMWEB_TOKEN": "tok", "CTMIL_DICOMWEB_USER": "u"}, Credentials(token="tok")),  # the token first
])
def test_credentials_from_the_environment(env, expected):
    got = dicomweb_credentials(environ=env)
    assert (got.user, got.password, got.token) == (expected.user, expected.password, expected.token)
    assert "tok" not in repr(got) and "'p'" not in repr(got)


@pytest.mark.parametrize("content, message", [
    ({"user": "u", "password": "p"}, None),
    ({"token": "t"}, None),
    ({"password": "p"}, "has neither"),
    ("not json", "is not JSON"),
])
def test_credentials_file(tmp_path, caplog, content, message):
    path = tmp_path / "credentials.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    os.chmod(path, 0o600)
    if message:
        with pytest.raises(ValueError, match=message):
            dicomweb_credentials(path, environ={})
        return
    with caplog.at_level(logging.WARNING):
        got = dicomweb_credentials(path, environ={})
        assert (got.user, got.password, got.token) == (content.get("user", ""), content.get("password", ""), content.get("token", ""))
        assert not caplog.records
        os.chmod(path, 0o644)
        dicomweb_credentials(path, environ={})
        assert "chmod 600" in caplog.text
    assert dicomweb_credentials(environ={"CTMIL_DICOMWEB_CREDENTIALS": str(path)}).origin == f"the file {path}"


def test_a_file_named_on_the_command_line_comes_first(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"user": "from-file", "password": "p"}))
    os.chmod(path, 0o600)
    got = dicomweb_credentials(path, environ={"CTMIL_DICOMWEB_TOKEN": "tok", "CTMIL_DICOMWEB_USER": "env"})
    assert got.user == "from-file" and not got.token


@pytest.mark.parametrize("title, ok", [("CTMIL", True), ("A" * 16, True), ("A" * 17, False), ("", False), ("BAD\\AE", False),
                                       ("TAB\tAE", False), ("ÉCOLE", False)])
def test_ae_titles(title, ok):
    from ctmil.pacs.address import check_ae_title

    if ok:
        assert check_ae_title(title) == title
    else:
        with pytest.raises(ValueError, match="is not an AE title"):
            check_ae_title(title)


def test_missing_credentials_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read the credentials file"):
        dicomweb_credentials(tmp_path / "absent.json", environ={})
