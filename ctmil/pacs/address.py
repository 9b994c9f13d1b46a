"""Where a PACS is and how to log in: ``dicomweb URL`` or ``dimse AE@host:port``, and DICOMweb credentials from the
environment or a file, never from the command line.

Credentials, the first that is given:

1. a credentials file named on the command line (``--credentials FILE``): JSON with ``"token"``, or ``"user"`` and
   ``"password"``. It should be readable by its owner only; ctmil warns when others can read it;
2. ``CTMIL_DICOMWEB_TOKEN``: a bearer token;
3. ``CTMIL_DICOMWEB_USER`` and ``CTMIL_DICOMWEB_PASSWORD``: HTTP basic authentication;
4. ``CTMIL_DICOMWEB_CREDENTIALS`` naming a credentials file.

The same credentials serve ``--from`` and ``--push``. A URL with a user, a password or a query in it is refused (it
would land in shell history, process lists and error messages). No credential is ever logged or written to an output.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["KINDS", "Credentials", "PacsAddress", "PacsError", "check_ae_title", "dicomweb_credentials", "parse_address"]

logger = logging.getLogger(__name__)

KINDS = ("dicomweb", "dimse")
_AE = re.compile(r"^(?P<ae>[^@\\\s]{1,16})@(?P<host>[^:@\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


class PacsError(Exception):
    """A PACS cannot be reached, refuses a request or answers wrongly; the message is one line, without secrets."""


@dataclass(frozen=True)
class Credentials:
    """DICOMweb credentials: a bearer ``token``, or ``user`` and ``password``. Their text is never shown."""

    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    origin: str = ""  # where they came from, for messages: "CTMIL_DICOMWEB_TOKEN", "a file", ...

    def __bool__(self) -> bool:
        return bool(self.token or self.user)


@dataclass(frozen=True)
class PacsAddress:
    """A PACS: ``kind`` ``"dicomweb"`` with ``url``, or ``"dimse"`` with ``ae_title``, ``host`` and ``port``."""

    kind: str
    url: str = ""
    ae_title: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return self.url if self.kind == "dicomweb" else f"{self.ae_title}@{self.host}:{self.port}"


def parse_address(kind: str, text: str) -> PacsAddress:
    """``("dicomweb", "https://pacs/dicom-web")`` or ``("dimse", "PACS@host:104")`` → :class:`PacsAddress`.

    Raises:
        ValueError: an unknown kind or a malformed address (one line, without any password the URL held).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown PACS protocol {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "dicomweb":
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{_no_userinfo(text)!r} is not an http(s) DICOMweb URL (e.g. https://pacs.example.org/dicom-web)")
        if parts.username or parts.password:
            raise ValueError("a DICOMweb URL must not carry a user or password: put them in CTMIL_DICOMWEB_USER and "
                             "CTMIL_DICOMWEB_PASSWORD, CTMIL_DICOMWEB_TOKEN or a --credentials file")
        if parts.query or parts.fragment:
            raise ValueError("a DICOMweb URL must be the service's root, without a query (a token in it would be shown "
                             "in messages): put a token in CTMIL_DICOMWEB_TOKEN or a --credentials file")
        return PacsAddress("dicomweb", url=text.rstrip("/"))
    match = _AE.match(text)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{text!r} is not a DIMSE address AE@host:port (e.g. PACS@10.1.2.3:104)")
    return PacsAddress("dimse", ae_title=match["ae"], host=match["host"].strip("[]"), port=int(match["port"]))


def check_ae_title(title: str) -> str:
    """``title`` when it is a valid calling AE title (1 to 16 characters, no backslash or control character)."""
    if not 0 < len(title.strip()) <= 16 or "\\" in title or any(ord(c) < 32 or ord(c) > 126 for c in title):
        raise ValueError(f"{title!r} is not an AE title (1 to 16 printable ASCII characters, no backslash)")
    return title.strip()


def _no_userinfo(text: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", text)


def dicomweb_credentials(path: "str | os.PathLike[str] | None" = None, environ: "dict[str, str] | None" = None) -> Credentials:
    """The DICOMweb credentials to use (see the module docstring); empty :class:`Credentials` when none are set.

    Raises:
        ValueError: a credentials file that cannot be read, is not JSON, or has neither a token nor a user.
    """
    env = os.environ if environ is None else environ
    if path:
        return _credentials_file(Path(path))
    if env.get("CTMIL_DICOMWEB_TOKEN"):
        return Credentials(token=env["CTMIL_DICOMWEB_TOKEN"], origin="CTMIL_DICOMWEB_TOKEN")
    if env.get("CTMIL_DICOMWEB_USER"):
        return Credentials(user=env["CTMIL_DICOMWEB_USER"], password=env.get("CTMIL_DICOMWEB_PASSWORD", ""),
                           origin="CTMIL_DICOMWEB_USER")
    if env.get("CTMIL_DICOMWEB_CREDENTIALS"):
        return _credentials_file(Path(env["CTMIL_DICOMWEB_CREDENTIALS"]))
    return Credentials()


def _credentials_file(path: Path) -> Credentials:
    try:
        record = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"cannot read the credentials file {path}: {err.strerror or type(err).__name__}") from None
    except ValueError:
        raise ValueError(f"the credentials file {path} is not JSON ({{\"user\": ..., \"password\": ...}} or {{\"token\": ...}})") from None
    if not isinstance(record, dict) or not (record.get("token") or record.get("user")):
        raise ValueError(f"the credentials file {path} has neither \"token\" nor \"user\"")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("the credentials file %s can be read by other users: chmod 600 it", path)
    return Credentials(user=str(record.get("user") or ""), password=str(record.get("password") or ""),
                       token=str(record.get("token") or ""), origin=f"the file {path}")
