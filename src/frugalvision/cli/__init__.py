"""Command-line interface (``frugalvision ...``). The library never imports this package."""
