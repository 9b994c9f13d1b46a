"""Talking to a PACS: addresses and credentials (:mod:`~ctmil.pacs.address`), DICOMweb and DIMSE clients
(:mod:`~ctmil.pacs.clients`), and pulling studies / pushing results with a table of what happened
(:mod:`~ctmil.pacs.transfer`). ``ctmil infer --from/--push`` uses them (docs/pacs.md)."""

from ctmil.pacs.address import Credentials, PacsAddress, PacsError, dicomweb_credentials, parse_address
from ctmil.pacs.clients import DicomWebPacs, DimsePacs, Pacs, connect
from ctmil.pacs.transfer import Transfer, pull_studies, push_files, write_transfer_table

__all__ = ["Credentials", "DicomWebPacs", "DimsePacs", "Pacs", "PacsAddress", "PacsError", "Transfer", "connect",
           "dicomweb_credentials", "parse_address", "pull_studies", "push_files", "write_transfer_table"]
