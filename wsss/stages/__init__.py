"""Pipeline stages: thin ``run(inputs, outputs, params, threads)`` functions, one module each."""
