"""Configuration and application state of the service."""
