"""Ready-made experiments (IOI patching, parenthesis and IOI circuits): keyword arguments in, results out."""
