def pytest_configure(config):
    # Deprecations raised inside Ray's own modules (its Serve config models use pydantic v1-style
    # Field extras): not ours to fix, and 18 of them in the summary hide a warning about our code.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:ray\\..*")
