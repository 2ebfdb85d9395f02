"""The coordinator's logic, one module per domain; routes only translate HTTP to these."""
