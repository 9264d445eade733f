"""Plumbing every layer uses: the params schema, atomic file I/O, worker processes, md5 lineage,
figures, and the stage scripts' entry-point wrapper (`core.stage`)."""
