"""A read-only status server for a running engine: JSON for programs, a page for a person.

``engine.serve_status(port=...)`` starts it (it stops with the engine). ``inspect`` cannot
read a database an engine holds open, so this is how an operator looks inside a running
node. ``server`` owns the socket, the token and the refusals; ``views`` turns a request
path into a JSON answer through the engine's read calls only (reads never assign an index);
``page/`` is the HTML page, its script and style, all served from here (no external CDN).
"""

from .server import StatusServer

__all__ = ["StatusServer"]
