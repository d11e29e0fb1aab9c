"""The small shared core of koen-align: losses, pooling, data streams, alignment metrics.

Nothing here reads command-line arguments or builds an Accelerator; the scripts own that.
"""
