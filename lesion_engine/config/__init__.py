"""Configuration files: safe YAML loading and safe regular expressions."""
