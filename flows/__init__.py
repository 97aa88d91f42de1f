"""Example flows built on prefect-atomscale; each file also runs as a script."""
