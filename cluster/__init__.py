"""Datapunk's runtime: settings, Ray/Serve bootstrap, CLI, errors, logging, security, adapters."""

__version__ = "0.1.0"
