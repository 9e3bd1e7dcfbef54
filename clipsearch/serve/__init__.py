"""`clipsearch serve`: a private local web gallery over an index (docs/serve.md).

Starlette and uvicorn come with the `serve` extra (`pip install 'clipsearch[serve]'`); nothing else
in clipsearch imports this package.
"""

from clipsearch.serve.app import Gallery, create_app

__all__ = ["Gallery", "create_app"]
