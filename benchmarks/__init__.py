"""Side-by-side benchmarks of xattr against Captum and the plain-torch floor (python -m benchmarks.run)."""
