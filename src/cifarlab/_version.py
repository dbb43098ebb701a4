"""The package version, in a module of its own so that any layer can read it without importing the
package facade (`cifarlab/__init__.py`), which would import the whole library back."""
__version__ = "0.1.0"
