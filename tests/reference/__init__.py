"""Independent NumPy float64 references for the deepseek_c tests (no library imports here)."""
