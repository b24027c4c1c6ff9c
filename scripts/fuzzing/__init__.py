"""The pieces of scripts/fuzz.py (the entry point): the live server and bookkeeping (`server`), hostile values
per JSON type (`values`), phase 1's hostile cases (`hostile`) and phase 2, schemathesis (`schema`)."""
