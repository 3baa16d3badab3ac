"""Our own model implementations, one subpackage per family."""
