"""The tests' name for mvit_cli.random_weights (one implementation, shared with `mvit bench`)."""

from mvit_cli.random_weights import randomize_, structured_images  # noqa: F401
