"""Starting the whole system on one machine, for the tests, the benchmarks and the demo.

One place for what each of them needs: free loopback ports, environments cleaned of the
caller's settings, server processes started in a process group of their own, waited for
(bounded, with the log's end when they fail) and stopped gracefully; Orthanc loaded with the
sample studies; the KHEOPS stand-in (sandbox/) migrated, seeded, served and registering our
app; our app's environment and management commands.

    from devstack import StandIn, stand_in_env, start_orthanc, ...

Used by tests/stack.py and tests/sandbox/ (our app in the test process, the stand-in beside
it), bench/ (everything a separate process, as in production) and scripts/demo.py (`make
run`). Importing it imports no Django settings. The checkout is on the virtualenv's import
path (the Makefile's `deps`), so scripts import it from any directory.
"""

from devstack.parts import (
    APP_ASGI,
    STAND_IN_READY_PATH,
    StandIn,
    app_env,
    manage_app,
    meta_refresh_url,
    stand_in_env,
    start_orthanc,
    trust_stand_in,
)
from devstack.processes import (
    COMMAND_TIMEOUT_SECONDS,
    HTTP_TIMEOUT_SECONDS,
    REPO,
    LoopbackSession,
    ServerProcess,
    StackError,
    clean_env,
    free_port,
    gunicorn_command,
    run_python,
    tail,
    uvicorn_command,
)

__all__ = [
    "APP_ASGI",
    "COMMAND_TIMEOUT_SECONDS",
    "HTTP_TIMEOUT_SECONDS",
    "REPO",
    "STAND_IN_READY_PATH",
    "LoopbackSession",
    "ServerProcess",
    "StackError",
    "StandIn",
    "app_env",
    "clean_env",
    "free_port",
    "gunicorn_command",
    "manage_app",
    "meta_refresh_url",
    "run_python",
    "stand_in_env",
    "start_orthanc",
    "tail",
    "trust_stand_in",
    "uvicorn_command",
]
