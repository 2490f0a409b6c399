"""Command-line layer: parses options, calls the library, renders results. No model or data logic here."""
