"""The version of specnmf, apart from the package's ``__init__`` so that its
modules (saved-model headers) can read it without importing the package back."""

__version__ = "0.1.0"
