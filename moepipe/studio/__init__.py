"""The avatar studio: a web page and a small JSON/PNG API that draw avatars from the champion model.

`moepipe studio` (server.py: `run_studio`) opens the model (state.py: `ModelHolder`, which follows
the registry alias while it runs), and serves app.py's FastAPI app: the page in static/ (HTML, CSS
and plain JavaScript, no build step, nothing fetched from elsewhere) and the picture endpoints,
which draw through moepipe.generate (drawing.py).
"""
