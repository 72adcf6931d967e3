"""Shared fixtures for the tests of the KHEOPS stand-in (`sandbox/`).

The stand-in is always exercised as a real server in a subprocess, over HTTP, so these tests
need neither pytest-django nor the main app's settings (they pass with `-p no:django` too).
Nothing here imports the stand-in's settings (they would clash with the main app's).

Fixtures
--------
``sandbox_factory`` (session)
    A callable ``start(extra_env: dict[str, str] | None = None) -> SandboxServer`` that starts
    one more stand-in on a free loopback port, with a fresh temporary sqlite database (migrated
    and seeded by ``sandbox_seed``). All servers it started are stopped at the end of the
    session. Use it for a stand-in with other settings, e.g.
    ``start({"SANDBOX_ORTHANC_URL": orthanc_url})``.
``sandbox_server`` (session)
    The default stand-in (``sandbox_factory()`` with no extra env).
``sandbox`` (function)
    ``sandbox_server`` with faults and clock reset before and after the test.
``provider_key`` (session)
    A 2048-bit RSA private key (cryptography object) for fake providers.
``fake_provider`` (function)
    A correct code-flow report provider (threaded ``http.server``, session-scoped underneath),
    its knobs reset for each test: see ``FakeProvider``.
``registered_provider`` (function)
    ``fake_provider`` registered in the demo album by alice; the value is its client_id.

``SandboxServer`` offers ``url()``, ``api()``, ``state()``, ``user_token()``,
``set_faults()``, ``set_clock()``, ``reset()``, ``manage()`` and the seeded ids
(``demo_album_id``, ``other_album_id``, ``demo_study_uids``, ``other_study_uid``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack import free_port
from tests.sandbox.sandbox_harness import FakeProvider, SandboxServer, server_env


@pytest.fixture(scope="session")
def sandbox_factory() -> Iterator[Callable[..., SandboxServer]]:
    started: list[SandboxServer] = []
    workdirs: list[Path] = []

    def start(extra_env: dict[str, str] | None = None) -> SandboxServer:
        workdir = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
        workdirs.append(workdir)
        root_url = f"http://127.0.0.1:{free_port()}"
        env = server_env(workdir, root_url, **(extra_env or {}))
        server = SandboxServer(root_url=root_url, env=env, workdir=workdir)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
    for workdir in workdirs:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def sandbox_server(sandbox_factory: Callable[..., SandboxServer]) -> SandboxServer:
    return sandbox_factory()


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxServer]:
    sandbox_server.reset()
    yield sandbox_server
    sandbox_server.reset()


# --- the fake report provider ---------------------------------------------------------------


@pytest.fixture(scope="session")
def provider_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def fake_provider_server(provider_key: rsa.RSAPrivateKey) -> Iterator[FakeProvider]:
    provider = FakeProvider(provider_key)
    yield provider
    provider.close()


@pytest.fixture
def fake_provider(fake_provider_server: FakeProvider) -> Iterator[FakeProvider]:
    fake_provider_server.reset()
    yield fake_provider_server
    fake_provider_server.reset()


@pytest.fixture
def registered_provider(sandbox: SandboxServer, fake_provider: FakeProvider) -> str:
    response = sandbox.register_provider(fake_provider.config_url)
    assert response.status_code == 201, response.text
    return response.json()["client_id"]
