"""How the web service runs under gunicorn (``cirelay serve``, ``cirelay up`` and the image).

- :mod:`app.serving.gunicorn_conf`: the configuration module (``--config
  python:app.serving.gunicorn_conf``) and its server hooks;
- :mod:`app.serving.balanced_worker`: the default worker class, gthread spreading client
  connections evenly over the workers.

Not to be confused with :mod:`app.worker`, the ``cirelay worker`` delivery process.
"""
