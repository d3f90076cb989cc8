"""Command-line entry points. `tools/<name>.py` and the `pc3d-<name>` console scripts call `main()` here."""
