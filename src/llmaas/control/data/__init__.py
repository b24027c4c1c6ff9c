"""Tenants' data: encrypted files, dataset parsing and validation, stored completions."""
