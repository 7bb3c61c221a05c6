"""The Ray Serve application serving RxT models (see ``serve/app.py`` and docs/serving.md)."""
