"""Shift detection: the detectors and their registry, the Holm verdict, and how often a detector
alarms (power and its experiment design)."""
