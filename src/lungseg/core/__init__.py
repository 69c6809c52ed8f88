"""Shared by every stage: errors, settings, logging, atomic outputs, rule entry points."""
