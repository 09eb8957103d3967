"""Shared pytest fixtures.

``fake_binance``: a started :class:`fake_exchange.FakeBinance` (local Binance spot REST
fake on 127.0.0.1, random port); ``fake_binance.base_url`` is the ``api_url`` to give to
``create_ccxt_exchange`` / ``CcxtPollingSource``. Stopped after the test.

Real market data: every test that reads ../shared/data declares it through
:mod:`real_data` (``needs(...)`` marker or ``require(...)``), loaded here as a plugin: a
missing file skips the test in a fresh clone and FAILS it in CI (``CI=true``).
"""

from __future__ import annotations

import socket
from typing import AsyncIterator

import pytest

from fake_exchange import FakeBinance

pytest_plugins = ["real_data"]


@pytest.fixture
async def fake_binance() -> AsyncIterator[FakeBinance]:
    server = FakeBinance()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def closed_port_url() -> str:
    """``http://127.0.0.1:PORT`` where nothing listens (port bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
