"""The Avro schemas, installed as the package `processor_schemas` (see pyproject.toml), so a
wheel carries them; processor/codec.py finds them with importlib.resources."""
