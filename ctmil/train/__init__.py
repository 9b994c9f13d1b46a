"""Training: step functions, engines, losses, handlers (one per file) and distributed wrappers."""
