"""Sources: which versions of each model *should* be loaded."""
