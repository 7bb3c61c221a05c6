import os
import sys

import pytest


def pytest_configure(config):
    # Deprecations raised inside Ray's own modules (its Serve config models use pydantic v1-style
    # Field extras): not ours to fix, and 18 of them in the summary hide a warning about our code.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:ray\\..*")


def pytest_sessionfinish(session, exitstatus):
    """Stop what a test may have left running in this process, while the interpreter is whole:
    a Ray connection, a torch.distributed group, inductor's compile-worker pool."""
    session.config.stash[_SESSION] = session
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    async_compile = sys.modules.get("torch._inductor.async_compile")
    if async_compile is not None:
        async_compile.shutdown_compile_workers()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests, restored afterwards for the other modules."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def compiled_debug():
    """A ``debug`` model (:func:`tests.model.conftest.debug_rxt`) and its compiled decoder, shared
    by every test that decodes compiled: a cold compile of its graphs takes about a minute here,
    a second decoder of the same model would trace them all again."""
    from rxt_dist.inference import CompiledDecoder
    from tests.model.conftest import debug_rxt

    model = debug_rxt()
    return model, CompiledDecoder(model)


_SESSION = pytest.StashKey[pytest.Session]()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Exit with the suite's verdict without tearing the interpreter down.

    One CI run printed "615 passed" and then died of SIGSEGV while Python finalised the modules
    of the native libraries loaded in this process (Ray's core worker, torch, gloo, inductor); the
    verdict was lost to a crash after every test had ended. The jobs the tests start in their own
    processes still exit normally and their exit codes are checked, so a crash at the exit of a
    real job still fails a test. ``RXT_TEST_FULL_EXIT=1`` keeps the normal exit (to chase the crash;
    ``make test`` runs with PYTHONFAULTHANDLER=1, so a crash prints where it happened).
    """
    session = config.stash.get(_SESSION, None)
    if session is None or os.environ.get("RXT_TEST_FULL_EXIT") == "1":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(session.exitstatus))
