"""Phantoms shared by the generator tests (drawn once per test session and worker)."""

import pytest

from ctmil.synthetic.phantoms import make_phantom


@pytest.fixture(scope="session")
def mild():
    return make_phantom(3, severe=False, involvement=0.1)


@pytest.fixture(scope="session")
def severe():
    return make_phantom(4, severe=True)
