"""The bundled demo: deterministic paediatric cohorts for three hospitals, and `tessera demo`."""
