"""Playbooks: one YAML file that describes a whole migration (setup, images, data, run)."""
