"""`mvit serve`: the classifier behind an HTTP API and a small web page, with dynamic batching.

- app.py: the Starlette app built from a `Classifier` loader: routes, request limits, errors as JSON.
- uploads.py: reading a request body within its limits; raw image bodies and multipart uploads.
- batcher.py: images of concurrent requests gathered into model batches (size or time bound).
- metrics.py: the Prometheus text of /metrics.
- page.py + page.html: the self-contained page at /.

Needs the optional extra (`pip install 'mvit-cli[serve]'`). Nothing is imported here, so that importing a
submodule does not pull the others.
"""
