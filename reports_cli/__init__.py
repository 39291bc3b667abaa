"""`reports`: a command-line client for the report generation API (development/client code, never deployed)."""

__version__ = "0.1.0"
